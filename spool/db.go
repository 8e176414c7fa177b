package spool

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

const (
	corruptSuffix = ".corrupt-"
	compactSuffix = ".compact"
	oldSuffix     = ".old" // the file a compaction replaced, until removed
	freshSuffix   = ".fresh"
	allocSize     = 32 << 20
)

func boltOptions(readOnly bool, timeout time.Duration) *bolt.Options {
	return &bolt.Options{
		Timeout: timeout,
		// The freelist is rebuilt from the page tree at open, so a damaged
		// freelist cannot exist and every commit writes one page less.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		ReadOnly:       readOnly,
	}
}

// openBolt opens a bbolt file. It returns ErrInUse when the lock is held
// and a *CorruptError when bbolt rejects or panics on the file.
func openBolt(path string, readOnly bool, timeout time.Duration) (db *bolt.DB, err error) {
	err = guard("open", func() error {
		var oerr error
		db, oerr = bolt.Open(path, 0o600, boltOptions(readOnly, timeout))
		return oerr
	})
	if err == nil {
		db.AllocSize = allocSize
		return db, nil
	}
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: file lock on %s not acquired within %s", ErrInUse, path, timeout)
	}
	if errors.Is(err, ErrCorrupt) {
		return nil, err
	}
	var errno syscall.Errno
	var perr *os.PathError
	if errors.As(err, &errno) || errors.As(err, &perr) {
		// The file system refused (permission, read-only, no space, I/O):
		// renaming the file aside would not help.
		return nil, err
	}
	return nil, &CorruptError{Bucket: "file", Reason: err.Error()}
}

// dataPut stores a record value under k in its own sub-bucket.
func dataPut(data *bolt.Bucket, k, v []byte) error {
	sb, err := data.CreateBucket(k)
	if err != nil {
		return err
	}
	return sb.Put(valKey, v)
}

// dataGet returns the record value stored under k, nil when absent.
func dataGet(data *bolt.Bucket, k []byte) []byte {
	if sb := data.Bucket(k); sb != nil {
		return sb.Get(valKey)
	}
	return data.Get(k)
}

// dataValue resolves a data cursor position: v is nil for a sub-bucket.
func dataValue(data *bolt.Bucket, k, v []byte) []byte {
	if v != nil {
		return v
	}
	return dataGet(data, k)
}

// dataDelete removes the record stored under k; absent keys are ignored.
func dataDelete(data *bolt.Bucket, k []byte) error {
	err := data.DeleteBucket(k)
	switch {
	case errors.Is(err, berrors.ErrBucketNotFound):
		return nil
	case errors.Is(err, berrors.ErrIncompatibleValue):
		return data.Delete(k)
	}
	return err
}

// preflight opens an existing database read-only (no freelist rebuild, a
// shared lock) and walks every page reachable from the root with cursors in
// the calling goroutine under guard, so that damage surfaces as a
// *CorruptError here rather than as a panic in a goroutine bbolt starts
// while rebuilding the freelist of a read-write open. It also rejects a
// file shorter than its high-water mark. A missing or empty file passes:
// bbolt initialises it.
func preflight(path string, timeout time.Duration) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) || err == nil && fi.Size() == 0 {
		return nil
	}
	if err != nil {
		return err
	}
	db, err := openBolt(path, true, timeout)
	if err != nil {
		return err
	}
	defer db.Close()
	return guard("walk", func() error {
		return db.View(func(tx *bolt.Tx) error {
			if hw := tx.Size(); hw > fi.Size() {
				return &CorruptError{Bucket: "file", Reason: fmt.Sprintf("file truncated: %d bytes, high-water mark %d", fi.Size(), hw)}
			}
			return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return walkBucket(b, 0) })
		})
	})
}

func walkBucket(b *bolt.Bucket, depth int) error {
	if depth > 4 {
		return &CorruptError{Bucket: "file", Reason: "buckets nested too deep"}
	}
	c := b.Cursor()
	var prev []byte
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if prev != nil && bytes.Compare(prev, k) >= 0 {
			return &CorruptError{Bucket: "file", Reason: "keys out of order"}
		}
		prev = k
		if v == nil {
			if nb := b.Bucket(k); nb != nil {
				if err := walkBucket(nb, depth+1); err != nil {
					return err
				}
			}
			continue
		}
		if len(v) > 0 {
			_ = v[0] + v[len(v)-1] // touch the first and last byte: faults surface here
		}
	}
	return nil
}

// guard runs fn, turning a panic or a memory fault (a truncated mmap) into a
// *CorruptError so that a damaged file never crashes the process.
func guard(what string, fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = &CorruptError{Bucket: "file", Reason: fmt.Sprintf("%s: bbolt panic: %v", what, r)}
		}
	}()
	return fn()
}

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

type loadResult struct {
	entries   []entry
	quar      map[uint64]int64
	nextID    uint64
	evictions map[string]uint64
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
	res := &loadResult{quar: make(map[uint64]int64), evictions: make(map[string]uint64)}
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
					if err := dataDelete(data, k); err != nil {
						return err
					}
					if err := idx.Delete(k); err != nil {
						return err
					}
				}
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
			} else if prio, created, err := decodeHeader(id, dv); err != nil {
				fixes = append(fixes, fixup{id: id, action: ActionQuarantine, reason: reasonOf(err), raw: slices.Clone(dv)})
			} else {
				ie := idxEntry{dataLen: uint32(len(dv)), priority: prio, created: created}
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
				prio, created, herr := decodeHeader(id, dv)
				if herr != nil {
					fixes = append(fixes, fixup{id: id, action: ActionQuarantine, reason: reasonOf(herr), raw: slices.Clone(dv)})
				} else {
					reason := "index length disagrees with data"
					if err != nil {
						reason = reasonOf(err)
					}
					ie = idxEntry{dataLen: uint32(len(dv)), priority: prio, created: created}
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
	r.entries = append(r.entries, entry{id: id, prio: ie.priority, created: ie.created, size: int64(ie.dataLen) + entryOverhead})
	r.nextID = max(r.nextID, id)
}

func reasonOf(err error) string {
	var ce *CorruptError
	if errors.As(err, &ce) {
		return ce.Reason
	}
	return err.Error()
}

// renameAside renames a damaged database to path.corrupt-<UTC time> and
// syncs the directory. The file is kept for a person to inspect.
func renameAside(path string, now time.Time) (string, error) {
	base := path + corruptSuffix + now.UTC().Format("20060102T150405Z")
	aside := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(aside); errors.Is(err, os.ErrNotExist) {
			break
		}
		aside = fmt.Sprintf("%s.%d", base, i)
	}
	if err := os.Rename(path, aside); err != nil {
		return "", fmt.Errorf("rename corrupt spool aside: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return aside, err
	}
	return aside, nil
}

func countCorrupt(path string) int {
	m, _ := filepath.Glob(path + corruptSuffix + "*")
	return len(m)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	return nil
}

type salvageResult struct {
	records int
	err     error
}

// salvage copies every record of the renamed-aside file at path whose value
// passes its checksums into db, keeping ids. It is best effort: it stops at
// the first bbolt panic and never returns records that fail verification.
func salvage(path string, dst *bolt.DB) salvageResult {
	var res salvageResult
	src, err := openBolt(path, true, time.Second)
	if err != nil {
		res.err = err
		return res
	}
	defer src.Close()
	type rec struct {
		id uint64
		v  []byte
	}
	var batch []rec
	var maxID uint64
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := dst.Update(func(tx *bolt.Tx) error {
			data, idx, st := tx.Bucket(bktData), tx.Bucket(bktIdx), tx.Bucket(bktState)
			if data == nil {
				var err error
				for _, name := range [][]byte{bktData, bktIdx, bktQuar, bktState} {
					if _, err = tx.CreateBucketIfNotExists(name); err != nil {
						return err
					}
				}
				data, idx, st = tx.Bucket(bktData), tx.Bucket(bktIdx), tx.Bucket(bktState)
				if err := st.Put(keyFormat, []byte{formatVersion}); err != nil {
					return err
				}
			}
			for _, r := range batch {
				prio, created, _ := decodeHeader(r.id, r.v)
				if err := dataPut(data, idKey(r.id), r.v); err != nil {
					return err
				}
				ie := idxEntry{dataLen: uint32(len(r.v)), priority: prio, created: created}
				if err := idx.Put(idKey(r.id), encodeIdx(ie)); err != nil {
					return err
				}
			}
			if getU64(st.Get(keyNextID)) < maxID {
				return st.Put(keyNextID, u64Bytes(maxID))
			}
			return nil
		})
		res.records += len(batch)
		batch = batch[:0]
		return err
	}
	// Collect ids from both the index and the data bucket, each scan under
	// its own guard, then read every record under its own guard: damage to
	// one page loses the records on that page, not everything after it.
	ids := map[uint64]bool{}
	var errs []error
	scan := func(bucket []byte) {
		err := guard("salvage scan", func() error {
			return src.View(func(tx *bolt.Tx) error {
				if bucket == nil {
					if st := tx.Bucket(bktState); st != nil {
						maxID = getU64(st.Get(keyNextID))
					}
					return nil
				}
				b := tx.Bucket(bucket)
				if b == nil {
					return fmt.Errorf("no %s bucket", bucket)
				}
				c := b.Cursor()
				for k, _ := c.First(); k != nil; k, _ = c.Next() {
					if id, ok := keyID(k); ok {
						ids[id] = true
					}
				}
				return nil
			})
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	scan(nil)
	scan(bktIdx)
	scan(bktData)
	var size int
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		var v []byte
		err := guard("salvage read", func() error {
			return src.View(func(tx *bolt.Tx) error {
				data := tx.Bucket(bktData)
				if data == nil {
					return nil
				}
				if raw := dataGet(data, idKey(id)); raw != nil && verifyRecord(id, raw) == nil {
					v = slices.Clone(raw)
				}
				return nil
			})
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if v == nil {
			continue
		}
		maxID = max(maxID, id)
		batch = append(batch, rec{id: id, v: v})
		size += len(v)
		if size > maxBatchBytes {
			size = 0
			if err := flush(); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	if len(errs) > 0 {
		res.err = errs[0]
	}
	if err := flush(); err != nil && res.err == nil {
		res.err = err
	}
	return res
}
