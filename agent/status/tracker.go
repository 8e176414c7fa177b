// Package status is what forest-agent shows of itself: the progress
// tracker behind /readyz and the status page, the Prometheus metrics, and
// the HTTP handler that serves them. It reads the spool and the uplink
// through functions the agent passes in; it changes neither.
//
// Tracker and Metrics are safe for concurrent use.
package status

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Frame is one recent frame on the status page.
type Frame struct {
	ID       string
	Name     string
	Seq      uint64
	SpoolID  uint64
	Coverage float64
	Captured time.Time
	Spooled  time.Time
	Width    int
	Height   int
	Bytes    int64
	Thumb    []byte // JPEG of the mask overlay
}

// Point is one frame's coverage over time.
type Point struct {
	At       time.Time
	Coverage float64
}

const (
	recentFrames   = 12
	historyPoints  = 240
	failuresToFail = 3
)

// Tracker is what the agent knows about its own progress: recent frames,
// capture health and drain progress. It feeds the status page and
// /readyz. Safe for concurrent use.
type Tracker struct {
	mu      sync.Mutex
	started time.Time
	recent  []Frame
	history []Point
	hours   hours  // coverage by clock hour, for the status report
	spooled uint64 // frames since start

	capturing    bool
	lastCapture  time.Time
	captureFails int
	lastCapErr   string

	lastAck       time.Time
	lastPublished int
	publishedTot  uint64
	lastPubErr    string
}

// NewTracker returns an empty Tracker started now.
func NewTracker() *Tracker { return &Tracker{started: time.Now()} }

// Frame records a spooled frame.
func (s *Tracker) Frame(f Frame) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recent = append(s.recent, f)
	if len(s.recent) > recentFrames {
		s.recent = s.recent[len(s.recent)-recentFrames:]
	}
	s.hours.add(f.Spooled, f.Coverage)
	s.spooled++
	s.history = append(s.history, Point{At: f.Spooled, Coverage: f.Coverage})
	if len(s.history) > historyPoints {
		s.history = s.history[len(s.history)-historyPoints:]
	}
}

// Thumb returns the thumbnail JPEG of a recent frame by frame id, nil if
// it is no longer recent.
func (s *Tracker) Thumb(id string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.recent {
		if f.ID == id {
			return f.Thumb
		}
	}
	return nil
}

// Snapshot returns the recent frames, newest first, the coverage history
// and the frames published since start.
func (s *Tracker) Snapshot() ([]Frame, []Point, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	frames := make([]Frame, len(s.recent))
	for i, f := range s.recent {
		frames[len(frames)-1-i] = f
	}
	return frames, slices.Clone(s.history), s.publishedTot
}

// SetCapturing records whether capture runs.
func (s *Tracker) SetCapturing(on bool) {
	s.mu.Lock()
	s.capturing = on
	s.mu.Unlock()
}

// CaptureOK records a capture that produced an image.
func (s *Tracker) CaptureOK() {
	s.mu.Lock()
	s.lastCapture, s.captureFails, s.lastCapErr = time.Now(), 0, ""
	s.mu.Unlock()
}

// CaptureFailed records a capture that produced no usable image.
func (s *Tracker) CaptureFailed(err error) {
	s.mu.Lock()
	s.captureFails++
	s.lastCapErr = err.Error()
	s.mu.Unlock()
}

// Acked records n frames confirmed by the broker and removed.
func (s *Tracker) Acked(n int) {
	s.mu.Lock()
	s.lastAck, s.lastPublished = time.Now(), n
	s.publishedTot += uint64(n)
	s.mu.Unlock()
}

// PublishFailed records why frames were not confirmed.
func (s *Tracker) PublishFailed(err error) {
	s.mu.Lock()
	s.lastPubErr = err.Error()
	s.mu.Unlock()
}

// Link is the uplink's state as the status page and readiness see it.
type Link struct {
	Offline   bool
	State     string // down, connecting, connected, blocked
	Since     time.Time
	LastError string
	Connected bool
}

// Readiness decides /readyz: capture must be working, and either the link
// is down and known (frames wait in the spool), or the drain is advancing.
// stall is how long a connected link may go without a confirm while frames
// wait before the drain counts as stuck.
func (s *Tracker) Readiness(link Link, frames, inflight int, stall time.Duration) (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !s.capturing:
		return false, "capture not running"
	case s.captureFails >= failuresToFail:
		return false, fmt.Sprintf("capture failing: %d consecutive errors, last: %s", s.captureFails, s.lastCapErr)
	}
	capture := "capture ok"
	if s.captureFails > 0 {
		capture = fmt.Sprintf("capture ok (%d recent error(s))", s.captureFails)
	}
	switch {
	case link.Offline:
		return true, fmt.Sprintf("%s; offline (no broker configured): %d frame(s) kept in the spool", capture, frames)
	case !link.Connected:
		why := ""
		if link.LastError != "" {
			why = ": " + link.LastError
		}
		return true, fmt.Sprintf("%s; link %s since %s%s; %d frame(s) wait in the spool", capture, link.State,
			link.Since.UTC().Format(time.RFC3339), why, frames)
	case frames == 0:
		return true, capture + "; link connected; spool empty"
	}
	since := s.lastAck
	if since.Before(link.Since) {
		since = link.Since
	}
	if since.IsZero() {
		since = s.started
	}
	if d := time.Since(since); d > stall {
		msg := fmt.Sprintf("drain stalled: link connected but no frame confirmed for %s with %d frame(s) spooled (%d in flight)",
			d.Round(time.Second), frames, inflight)
		if s.lastPubErr != "" {
			msg += "; last publish error: " + s.lastPubErr
		}
		return false, msg
	}
	return true, fmt.Sprintf("%s; link connected; draining, %d frame(s) spooled", capture, frames)
}
