package status

import (
	"time"
)

// maxHours is how many clock hours of coverage the tracker keeps for the
// status report (wire allows 48).
const maxHours = 24

// Hour is the coverage of the frames spooled in one clock hour.
type Hour struct {
	Start         time.Time
	Frames        int
	Sum, Min, Max float64
}

// hours accumulates coverage by clock hour (UTC), the last maxHours hours
// that had frames.
type hours []Hour

func (h *hours) add(at time.Time, coverage float64) {
	start := at.UTC().Truncate(time.Hour)
	if n := len(*h); n > 0 && (*h)[n-1].Start.Equal(start) {
		last := &(*h)[n-1]
		last.Frames++
		last.Sum += coverage
		last.Min, last.Max = min(last.Min, coverage), max(last.Max, coverage)
		return
	}
	*h = append(*h, Hour{Start: start, Frames: 1, Sum: coverage, Min: coverage, Max: coverage})
	if len(*h) > maxHours {
		*h = (*h)[len(*h)-maxHours:]
	}
}

// Report is what the tracker knows for the agent's status report.
type Report struct {
	Started      time.Time
	LastCapture  time.Time
	CaptureFails int
	LastCapErr   string
	// Spooled counts frames spooled since start; Published those the
	// broker confirmed.
	Spooled, Published uint64
	// LastCoverage is the last spooled frame's coverage; HasCoverage says
	// whether there was one.
	LastCoverage float64
	HasCoverage  bool
	// Hours are the last clock hours with frames, oldest first.
	Hours []Hour
}

// Report returns a snapshot for the status report.
func (s *Tracker) Report() Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := Report{
		Started: s.started, LastCapture: s.lastCapture, CaptureFails: s.captureFails, LastCapErr: s.lastCapErr,
		Spooled: s.spooled, Published: s.publishedTot, Hours: append([]Hour(nil), s.hours...),
	}
	if len(s.recent) > 0 {
		r.LastCoverage, r.HasCoverage = s.recent[len(s.recent)-1].Coverage, true
	}
	return r
}
