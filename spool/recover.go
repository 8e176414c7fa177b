package spool

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// openAndLoad opens the bbolt file, checks and loads it, and replaces a
// corrupt file. Replacement builds the new file under DBName+".fresh"
// (salvaged records, raised id floor, all synced), then renames the corrupt
// file aside and the new one into place, syncing the directory after each.
// Crash states: before the first rename the corrupt file is still in place
// and the next Open starts over; between the renames DBName is missing and
// the next Open installs the complete ".fresh" file; after the second
// rename the new file is in place.
func (q *Queue) openAndLoad() (*loadResult, error) {
	fresh := q.path + freshSuffix
	if _, err := os.Lstat(q.path); errors.Is(err, os.ErrNotExist) {
		if _, ferr := os.Lstat(fresh); ferr == nil {
			if err := os.Rename(fresh, q.path); err != nil {
				return nil, fmt.Errorf("install replacement of corrupt spool: %w", err)
			}
			if err := syncDir(q.dir); err != nil {
				return nil, err
			}
			q.log.Warn("spool installed the replacement of a corrupt file after an interrupted recovery", "path", q.path)
		}
	}
	err := preflight(q.path, q.opts.OpenTimeout)
	var db *bolt.DB
	if err == nil {
		db, err = openBolt(q.path, false, q.opts.OpenTimeout)
	}
	var st *loadResult
	if err == nil {
		st, err = loadDB(db, true, q.now())
		if err != nil {
			_ = db.Close()
		}
	}
	if err == nil {
		_ = os.Remove(fresh) // left by a recovery that crashed before renaming
		dropMapped(db)
		q.db = db
		q.logProblems(st.problems)
		return st, nil
	}
	if !errors.Is(err, ErrCorrupt) {
		return nil, err
	}
	sal, rerr := q.replaceCorrupt(fresh)
	if rerr != nil {
		return nil, errors.Join(err, rerr)
	}
	q.corrupt++
	q.log.Error("spool database corrupt: renamed aside and started fresh",
		"error", err, "renamed_to", q.renamedTo, "salvaged_records", sal.records, "salvage_error", errString(sal.err))
	db, err = openBolt(q.path, false, q.opts.OpenTimeout)
	if err != nil {
		return nil, fmt.Errorf("open replacement of corrupt spool: %w", err)
	}
	st, err = loadDB(db, true, q.now())
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("load replacement of corrupt spool: %w", err)
	}
	dropMapped(db)
	q.db = db
	q.logProblems(st.problems)
	return st, nil
}

// replaceCorrupt builds the replacement of the corrupt file at q.path in
// fresh and installs it (see openAndLoad).
func (q *Queue) replaceCorrupt(fresh string) (salvageResult, error) {
	_ = os.Remove(fresh)
	fdb, err := openBolt(fresh, false, q.opts.OpenTimeout)
	if err != nil {
		return salvageResult{}, fmt.Errorf("create replacement: %w", err)
	}
	var sal salvageResult
	if _, err = loadDB(fdb, true, q.now()); err == nil {
		sal = salvage(q.path, fdb)
		var st *loadResult
		if st, err = loadDB(fdb, true, q.now()); err == nil {
			err = raiseIDFloor(fdb, st, q.now())
		}
	}
	if cerr := fdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return sal, fmt.Errorf("build replacement: %w", err)
	}
	aside, err := renameAside(q.path, q.now())
	if err != nil {
		return sal, err
	}
	q.salvaged, q.renamedTo = sal.records, aside
	if err := os.Rename(fresh, q.path); err != nil {
		return sal, fmt.Errorf("install replacement: %w", err)
	}
	return sal, syncDir(q.dir)
}

// raiseIDFloor makes ids of a spool restarted after corruption continue
// above any id the lost file may have handed out (its last id may be
// unreadable): the next id becomes at least the current time in
// microseconds, far above any counter a spool reaches by Puts alone.
func raiseIDFloor(db *bolt.DB, st *loadResult, now time.Time) error {
	floor := uint64(now.UnixMicro())
	if st.nextID >= floor {
		return nil
	}
	st.nextID = floor
	return db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bktState).Put(keyNextID, u64Bytes(floor))
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// maxLoggedProblems bounds the per-record lines of one repair; the rest are
// summed up in one line.
const maxLoggedProblems = 10

func (q *Queue) logProblems(ps []Problem) {
	for i, p := range ps {
		if i < maxLoggedProblems {
			q.log.Error("spool record damaged", "id", p.ID, "bucket", p.Bucket, "reason", p.Reason, "action", p.Action)
		}
		if p.Action == ActionQuarantine {
			q.quarTotal++
		}
	}
	if len(ps) > maxLoggedProblems {
		q.log.Error("spool records damaged, not logged one by one", "more", len(ps)-maxLoggedProblems, "total", len(ps))
	}
}

func (q *Queue) applyLoad(st *loadResult) {
	q.ents = st.entries
	q.quar = st.quar
	q.nextID = st.nextID
	q.evictions = st.evictions
	q.quarBy = st.quarBy
	for _, e := range q.ents {
		q.bytes += e.size
	}
	for _, n := range q.quar {
		q.bytes += n
	}
}

type loadResult struct {
	entries   []entry
	quar      map[uint64]int64
	nextID    uint64
	evictions map[string]uint64
	quarBy    map[string]uint64
	problems  []Problem
	fresh     bool
}

type fixup struct {
	id     uint64
	key    []byte
	action string
	reason string
	raw    []byte
	idx    idxEntry
}

// loadDB checks the structure of db (bbolt's consistency check), reconciles
// the index with the data, and returns the in-memory state. With fix set it
// creates missing buckets and applies repairs in one transaction; otherwise
// it only reports. Structural damage returns a *CorruptError.
func loadDB(db *bolt.DB, fix bool, now time.Time) (*loadResult, error) {
	res := &loadResult{quar: make(map[uint64]int64), evictions: make(map[string]uint64), quarBy: make(map[string]uint64)}
	if fix {
		err := guard("init", func() error {
			return db.Update(func(tx *bolt.Tx) error {
				for _, name := range [][]byte{bktData, bktIdx, bktQuar, bktState} {
					if _, err := tx.CreateBucketIfNotExists(name); err != nil {
						return err
					}
				}
				st := tx.Bucket(bktState)
				if st.Get(keyFormat) == nil {
					res.fresh = true
					return st.Put(keyFormat, []byte{formatVersion})
				}
				return nil
			})
		})
		if err != nil {
			return nil, classify(err)
		}
	}
	var fixes []fixup
	err := guard("load", func() error {
		return db.View(func(tx *bolt.Tx) error {
			var cerrs []string
			for cerr := range tx.Check() {
				cerrs = append(cerrs, cerr.Error())
				if len(cerrs) >= 10 {
					break
				}
			}
			if len(cerrs) > 0 {
				return &CorruptError{Bucket: "file", Reason: "bbolt check: " + fmt.Sprint(cerrs)}
			}
			st, data, idx, qb := tx.Bucket(bktState), tx.Bucket(bktData), tx.Bucket(bktIdx), tx.Bucket(bktQuar)
			if st == nil || data == nil || idx == nil || qb == nil {
				if !fix && st == nil && data == nil && idx == nil && qb == nil {
					return nil // never initialised
				}
				return &CorruptError{Bucket: "file", Reason: "missing buckets"}
			}
			if v := st.Get(keyFormat); !bytes.Equal(v, []byte{formatVersion}) {
				return &CorruptError{Bucket: "state", Reason: fmt.Sprintf("unsupported format version %v", v)}
			}
			res.nextID = getU64(st.Get(keyNextID))
			err := st.ForEach(func(k, v []byte) error {
				if r, ok := bytes.CutPrefix(k, []byte(evictKeyPrefix)); ok {
					res.evictions[string(r)] = getU64(v)
				}
				if r, ok := bytes.CutPrefix(k, []byte(quarKeyPrefix)); ok {
					res.quarBy[string(r)] = getU64(v)
				}
				return nil
			})
			if err != nil {
				return err
			}
			err = qb.ForEach(func(k, v []byte) error {
				id, ok := keyID(k)
				if !ok {
					fixes = append(fixes, fixup{key: slices.Clone(k), action: ActionDropKey, reason: "quarantine key is not an id"})
					return nil
				}
				res.quar[id] = int64(len(v)) + keyLen
				res.nextID = max(res.nextID, id)
				return nil
			})
			if err != nil {
				return err
			}
			fixes = append(fixes, reconcile(data, idx, res)...)
			return nil
		})
	})
	if err != nil {
		return nil, classify(err)
	}
	for _, f := range fixes {
		res.problems = append(res.problems, Problem{ID: f.id, Bucket: bucketOf(f), Reason: f.reason, Action: f.action})
	}
	if !fix || len(fixes) == 0 {
		return res, nil
	}
	err = guard("repair", func() error {
		return db.Update(func(tx *bolt.Tx) error {
			data, idx, qb := tx.Bucket(bktData), tx.Bucket(bktIdx), tx.Bucket(bktQuar)
			var damaged uint64
			for _, f := range fixes {
				switch f.action {
				case ActionDropKey:
					if err := dataDelete(data, f.key); err != nil {
						return err
					}
					for _, b := range []*bolt.Bucket{idx, qb} {
						if err := b.Delete(f.key); err != nil {
							return err
						}
					}
				case ActionRebuildIndex:
					if err := idx.Put(idKey(f.id), encodeIdx(f.idx)); err != nil {
						return err
					}
				case ActionQuarantine:
					k := idKey(f.id)
					v := encodeQuarantine(f.reason, now, f.raw)
					if err := qb.Put(k, v); err != nil {
						return err
					}
					res.quar[f.id] = int64(len(v)) + keyLen
					damaged++
					if err := dataDelete(data, k); err != nil {
						return err
					}
					if err := idx.Delete(k); err != nil {
						return err
					}
				}
			}
			if damaged > 0 {
				totals, err := addCounters(tx.Bucket(bktState), quarKeyPrefix, map[string]uint64{QuarantineDamaged: damaged})
				if err != nil {
					return err
				}
				maps.Copy(res.quarBy, totals)
			}
			return tx.Bucket(bktState).Put(keyNextID, u64Bytes(res.nextID))
		})
	})
	if err != nil {
		return nil, classify(err)
	}
	return res, nil
}

func bucketOf(f fixup) string {
	switch f.action {
	case ActionRebuildIndex:
		return "idx"
	case ActionDropKey:
		return "file"
	}
	if f.raw == nil {
		return "idx"
	}
	return "data"
}

// classify keeps *CorruptError and ErrInUse as they are and marks any other
// bbolt failure while reading the structure as corruption.
func classify(err error) error {
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return err
	}
	return &CorruptError{Bucket: "file", Reason: err.Error()}
}

// reconcile walks the index and data buckets in key order and returns the
// fixes that make them agree. It fills res.entries.
func reconcile(data, idx *bolt.Bucket, res *loadResult) []fixup {
	var fixes []fixup
	dc, ic := data.Cursor(), idx.Cursor()
	dk, dv := dc.First()
	dv = dataValue(data, dk, dv)
	ik, iv := ic.First()
	for dk != nil || ik != nil {
		var cmp int
		switch {
		case dk == nil:
			cmp = 1
		case ik == nil:
			cmp = -1
		default:
			cmp = bytes.Compare(dk, ik)
		}
		switch {
		case cmp < 0: // data without index
			id, ok := keyID(dk)
			if !ok {
				fixes = append(fixes, fixup{key: slices.Clone(dk), action: ActionDropKey, reason: "data key is not an id"})
			} else if ie, err := headerIdx(id, dv); err != nil {
				fixes = append(fixes, fixup{id: id, action: ActionQuarantine, reason: reasonOf(err), raw: slices.Clone(dv)})
			} else {
				fixes = append(fixes, fixup{id: id, action: ActionRebuildIndex, reason: "index entry missing", idx: ie})
				res.add(id, ie)
			}
			dk, dv = dc.Next()
			dv = dataValue(data, dk, dv)
		case cmp > 0: // index without data
			id, ok := keyID(ik)
			if !ok {
				fixes = append(fixes, fixup{key: slices.Clone(ik), action: ActionDropKey, reason: "index key is not an id"})
			} else {
				fixes = append(fixes, fixup{id: id, action: ActionQuarantine, reason: "data missing for index entry"})
				res.nextID = max(res.nextID, id)
			}
			ik, iv = ic.Next()
		default:
			id, ok := keyID(dk)
			if !ok {
				fixes = append(fixes, fixup{key: slices.Clone(dk), action: ActionDropKey, reason: "key is not an id"})
			} else if ie, err := decodeIdx(id, iv); err != nil || int(ie.dataLen) != len(dv) {
				// Rebuild the index from the data header if that is sound.
				hie, herr := headerIdx(id, dv)
				if herr != nil {
					fixes = append(fixes, fixup{id: id, action: ActionQuarantine, reason: reasonOf(herr), raw: slices.Clone(dv)})
				} else {
					reason := "index length disagrees with data"
					if err != nil {
						reason = reasonOf(err)
					}
					ie = hie
					fixes = append(fixes, fixup{id: id, action: ActionRebuildIndex, reason: reason, idx: ie})
					res.add(id, ie)
				}
			} else {
				res.add(id, ie)
			}
			dk, dv = dc.Next()
			dv = dataValue(data, dk, dv)
			ik, iv = ic.Next()
		}
	}
	return fixes
}

func (r *loadResult) add(id uint64, ie idxEntry) {
	r.entries = append(r.entries, entry{id: id, prio: ie.priority, created: ie.created, size: int64(ie.dataLen) + entryOverhead,
		unsynced: ie.flags&flagClockUnsynced != 0})
	r.nextID = max(r.nextID, id)
}

func reasonOf(err error) string {
	var ce *CorruptError
	if errors.As(err, &ce) {
		return ce.Reason
	}
	return err.Error()
}
