package spool

import (
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

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
	return db.View(func(tx *bolt.Tx) error { return listQuarantine(tx, rep) })
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
		return db.View(func(tx *bolt.Tx) error {
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

func listQuarantine(tx *bolt.Tx, rep *Report) error {
	qb := tx.Bucket(bktQuar)
	if qb == nil {
		return nil
	}
	return qb.ForEach(func(k, v []byte) error {
		if id, ok := keyID(k); ok {
			rep.Quarantine = append(rep.Quarantine, decodeQuarantine(id, v))
		}
		return nil
	})
}

const (
	corruptSuffix = ".corrupt-"
	compactSuffix = ".compact"
	oldSuffix     = ".old" // the file a compaction replaced, until removed
	freshSuffix   = ".fresh"
	allocSize     = 32 << 20
)

// Problem is one defect found in a spool.
type Problem struct {
	// ID is the record concerned, 0 for file-level problems.
	ID uint64 `json:"id,omitempty"`
	// Bucket is where the defect is: data, idx, state or file.
	Bucket string `json:"bucket"`
	// Reason describes the defect.
	Reason string `json:"reason"`
	// Action is what repair does (or did): quarantine, rebuild_index,
	// drop_key, rename_aside.
	Action string `json:"action"`
}

// Repair actions reported in Problem.Action.
const (
	ActionQuarantine   = "quarantine"
	ActionRebuildIndex = "rebuild_index"
	ActionDropKey      = "drop_key"
	ActionRenameAside  = "rename_aside"
)
