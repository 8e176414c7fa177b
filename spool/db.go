package spool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
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
