package spool

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

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
				ie, _ := headerIdx(r.id, r.v) // verified when it was read
				if err := dataPut(data, idKey(r.id), r.v); err != nil {
					return err
				}
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
	if err := salvageKeys(src, dst); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		res.err = errs[0]
	}
	if err := flush(); err != nil && res.err == nil {
		res.err = err
	}
	return res
}

// salvageKeys copies the source keys that can be read (see keys.go), so
// that a capture stored before the damage is not stored again.
func salvageKeys(src, dst *bolt.DB) error {
	keys := map[string][]byte{}
	var clock uint64
	err := guard("salvage keys", func() error {
		return src.View(func(tx *bolt.Tx) error {
			if b := tx.Bucket(bktKeys); b != nil {
				return b.ForEach(func(k, v []byte) error {
					if st, ok := decodeKeyState(v); ok {
						keys[string(k)] = slices.Clone(v)
						clock = max(clock, st.written)
					}
					return nil
				})
			}
			return nil
		})
	})
	if len(keys) == 0 {
		return err
	}
	return errors.Join(err, dst.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bktKeys)
		if err != nil {
			return err
		}
		for k, v := range keys {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return tx.Bucket(bktState).Put(keyKeyClock, u64Bytes(clock))
	}))
}
