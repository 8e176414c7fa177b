package spool

import (
	"errors"

	"fmt"
	bolt "go.etcd.io/bbolt"
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
	// CorruptRenames is the number of damaged database files renamed aside
	// in the spool directory (DBName+".corrupt-*").
	CorruptRenames int `json:"corrupt_renames"`
	// FileBytes is the disk space allocated to the database file (its
	// blocks; bbolt extends the file sparsely ahead of use).
	FileBytes int64 `json:"file_bytes"`
	// Compactions counts compactions since Open.
	Compactions uint64 `json:"compactions"`
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
		Frames:           len(q.ents),
		Bytes:            q.bytes,
		InFlight:         len(q.inflight),
		Evictions:        maps.Clone(q.evictions),
		Rejected:         q.rejected,
		Quarantined:      len(q.quar),
		QuarantinedTotal: q.quarTotal,
		CorruptRenames:   q.corrupt,
		Compactions:      q.compactions,
		PutCommits:       q.commits,
		LastID:           q.nextID,
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

// Report is the result of Check, printed by `forest-agent spool check`.
type Report struct {
	// Dir is the spool directory checked.
	Dir string `json:"dir"`
	// OK is true when no problem was found.
	OK bool `json:"ok"`
	// Records is the number of sound records.
	Records int `json:"records"`
	// Bytes is the accounted size of sound and quarantined records.
	Bytes int64 `json:"bytes"`
	// Quarantined is the number of records in quarantine before repair.
	Quarantined int `json:"quarantined"`
	// Quarantine lists the quarantined records after the check (and repair).
	Quarantine []QuarantineEntry `json:"quarantine,omitempty"`
	// Problems lists every defect found, with the repair action.
	Problems []Problem `json:"problems,omitempty"`
	// Repaired is true when repair ran and applied the actions.
	Repaired bool `json:"repaired"`
	// RenamedTo names the file a structurally damaged database was renamed
	// to during repair.
	RenamedTo string `json:"renamed_to,omitempty"`
	// Salvaged counts records copied out of a renamed file during repair.
	Salvaged int `json:"salvaged,omitempty"`
}

func spoolPath(dir string) string { return dir + string(os.PathSeparator) + DBName }

// Check verifies every record of the spool in dir (structure, index and both
// checksums of every value) without modifying it. With repair set it then
// applies the actions listed in the report: damaged records are moved to
// quarantine, index entries rebuilt from sound data, and a file whose
// structure bbolt rejects is renamed aside with sound records salvaged into
// a fresh file. It fails with ErrInUse when a daemon holds the spool.
func Check(dir string, repair bool) (Report, error) {
	rep := Report{Dir: dir}
	path := spoolPath(dir)
	if _, err := os.Stat(path); err != nil {
		return rep, fmt.Errorf("check spool %s: %w", dir, err)
	}
	if err := checkReadOnly(path, &rep); err != nil {
		return rep, fmt.Errorf("check spool %s: %w", dir, err)
	}
	rep.OK = len(rep.Problems) == 0
	if !repair || rep.OK {
		return rep, nil
	}
	q, err := Open(dir, Options{CompactFreeBytes: -1})
	if err != nil {
		return rep, fmt.Errorf("repair spool %s: %w", dir, err)
	}
	var bad []badRecord
	q.mu.Lock()
	ids := make([]uint64, len(q.ents))
	for i, e := range q.ents {
		ids[i] = e.id
	}
	q.mu.Unlock()
	for len(ids) > 0 {
		n := min(len(ids), 64)
		_, b, rerr := q.read(ids[:n])
		if rerr != nil {
			err = rerr
			break
		}
		bad = append(bad, b...)
		ids = ids[n:]
	}
	if err == nil && len(bad) > 0 {
		err = q.quarantine(bad)
	}
	rep.RenamedTo = q.renamedTo
	rep.Salvaged = q.salvaged
	if cerr := q.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return rep, fmt.Errorf("repair spool %s: %w", dir, err)
	}
	rep.Repaired = true
	if err := checkQuarantine(path, &rep); err != nil {
		return rep, fmt.Errorf("check spool %s after repair: %w", dir, err)
	}
	return rep, nil
}

func checkQuarantine(path string, rep *Report) error {
	db, err := openBolt(path, true, defaultOpenTimeout)
	if err != nil {
		return err
	}
	defer db.Close()
	rep.Quarantine = nil
	return db.View(func(tx bboltTx) error { return listQuarantine(tx, rep) })
}

func checkReadOnly(path string, rep *Report) error {
	err := preflight(path, defaultOpenTimeout)
	var db *bolt.DB
	if err == nil {
		db, err = openBolt(path, true, defaultOpenTimeout)
	}
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			rep.Problems = append(rep.Problems, Problem{Bucket: "file", Reason: reasonOf(err), Action: ActionRenameAside})
			return nil
		}
		return err
	}
	defer db.Close()
	st, err := loadDB(db, false, time.Now())
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			rep.Problems = append(rep.Problems, Problem{Bucket: "file", Reason: reasonOf(err), Action: ActionRenameAside})
			return nil
		}
		return err
	}
	rep.Problems = append(rep.Problems, st.problems...)
	rep.Quarantined = len(st.quar)
	for _, n := range st.quar {
		rep.Bytes += n
	}
	// Verify the payload checksum of every indexed record.
	err = guard("check", func() error {
		return db.View(func(tx bboltTx) error {
			data := tx.Bucket(bktData)
			for _, e := range st.entries {
				v := dataGet(data, idKey(e.id))
				if err := verifyRecord(e.id, v); err != nil {
					rep.Problems = append(rep.Problems, Problem{ID: e.id, Bucket: "data", Reason: reasonOf(err), Action: ActionQuarantine})
					continue
				}
				rep.Records++
				rep.Bytes += e.size
			}
			return listQuarantine(tx, rep)
		})
	})
	if errors.Is(err, ErrCorrupt) {
		rep.Problems = append(rep.Problems, Problem{Bucket: "file", Reason: reasonOf(err), Action: ActionRenameAside})
		return nil
	}
	return err
}
