package spool

import (
	"fmt"
	"maps"
	"os"
	"syscall"
	"time"
)

// Stats is a snapshot of a spool. Its JSON form is what
// `forest-agent spool stats --json` prints.
type Stats struct {
	// Frames is the number of stored records, in flight or not, excluding
	// quarantined ones.
	Frames int `json:"frames"`
	// Bytes is the accounted size of stored and quarantined records, the
	// quantity bounded by Options.MaxBytes.
	Bytes int64 `json:"bytes"`
	// InFlight is the number of records handed out by Next and neither
	// acknowledged nor released.
	InFlight int `json:"in_flight"`
	// OldestCreated is the Created time of the oldest stored record, zero
	// when empty.
	OldestCreated time.Time `json:"oldest_created,omitzero"`
	// OldestAge is the age of the oldest stored record.
	OldestAge time.Duration `json:"oldest_age_ns"`
	// Evictions counts evicted records by reason (ReasonMaxBytes,
	// ReasonMinFree, ReasonMaxAge) over the life of the spool file.
	Evictions map[string]uint64 `json:"evictions"`
	// Rejected counts Puts refused with ErrFull since Open.
	Rejected uint64 `json:"rejected"`
	// Quarantined is the number of records in quarantine now.
	Quarantined int `json:"quarantined"`
	// QuarantinedTotal counts records quarantined since Open.
	QuarantinedTotal uint64 `json:"quarantined_total"`
	// QuarantinedBy counts records quarantined by reason code over the
	// life of the spool file: QuarantineDamaged, and the codes given to
	// Quarantine.
	QuarantinedBy map[string]uint64 `json:"quarantined_by"`
	// CorruptRenames is the number of damaged database files renamed aside
	// in the spool directory (DBName+".corrupt-*").
	CorruptRenames int `json:"corrupt_renames"`
	// FileBytes is the disk space allocated to the database file (its
	// blocks; bbolt extends the file sparsely ahead of use).
	FileBytes int64 `json:"file_bytes"`
	// Compactions counts compactions since Open.
	Compactions uint64 `json:"compactions"`
	// CompactionsPostponed counts compactions put off since Open because
	// the file system had no room for a copy of the live data above the
	// MinFreeBytes reserve.
	CompactionsPostponed uint64 `json:"compactions_postponed"`
	// PutCommits counts group commits of Puts since Open; with concurrent
	// producers it is lower than the number of Puts.
	PutCommits uint64 `json:"put_commits"`
	// LastID is the highest id ever assigned.
	LastID uint64 `json:"last_id"`
}

// Stats returns a snapshot of the spool.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	s := Stats{
		Frames:               len(q.ents),
		Bytes:                q.bytes,
		InFlight:             len(q.inflight),
		Evictions:            maps.Clone(q.evictions),
		QuarantinedBy:        maps.Clone(q.quarBy),
		Rejected:             q.rejected,
		Quarantined:          len(q.quar),
		QuarantinedTotal:     q.quarTotal,
		CorruptRenames:       q.corrupt,
		CompactionsPostponed: q.compactSkips,
		Compactions:          q.compactions,
		PutCommits:           q.commits,
		LastID:               q.nextID,
	}
	oldest := oldestCreated(q.ents)
	q.mu.Unlock()
	if oldest != 0 {
		s.OldestCreated = time.Unix(0, oldest)
		s.OldestAge = q.now().Sub(s.OldestCreated)
	}
	s.FileBytes = allocated(q.path)
	return s
}

// allocated returns the bytes of disk allocated to the file at path.
func allocated(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

func oldestCreated(ents []entry) int64 {
	var oldest int64
	for i, e := range ents {
		if i == 0 || e.created < oldest {
			oldest = e.created
		}
	}
	return oldest
}

// Inspect returns the Stats of the spool in dir without modifying it, for
// `forest-agent spool stats`. It fails with ErrInUse when a daemon holds
// the spool. In-flight and since-Open counters are zero.
func Inspect(dir string) (Stats, error) {
	path := spoolPath(dir)
	if _, err := os.Stat(path); err != nil {
		return Stats{}, fmt.Errorf("inspect spool %s: %w", dir, err)
	}
	if err := preflight(path, defaultOpenTimeout); err != nil {
		return Stats{}, fmt.Errorf("inspect spool %s: %w", dir, err)
	}
	db, err := openBolt(path, true, defaultOpenTimeout)
	if err != nil {
		return Stats{}, fmt.Errorf("inspect spool %s: %w", dir, err)
	}
	defer db.Close()
	st, err := loadDB(db, false, time.Now())
	if err != nil {
		return Stats{}, fmt.Errorf("inspect spool %s: %w", dir, err)
	}
	s := Stats{
		Frames:         len(st.entries),
		Evictions:      st.evictions,
		QuarantinedBy:  st.quarBy,
		Quarantined:    len(st.quar),
		CorruptRenames: countCorrupt(path),
		LastID:         st.nextID,
	}
	for _, e := range st.entries {
		s.Bytes += e.size
	}
	for _, n := range st.quar {
		s.Bytes += n
	}
	if o := oldestCreated(st.entries); o != 0 {
		s.OldestCreated = time.Unix(0, o)
		s.OldestAge = time.Since(s.OldestCreated)
	}
	s.FileBytes = allocated(path)
	return s, nil
}
