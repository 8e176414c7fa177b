package spool

import (
	"fmt"
	"os"

	bolt "go.etcd.io/bbolt"
)

// maybeCompactLocked compacts the database file when it holds more than
// CompactFreeBytes of free pages and either the file exceeds
// MaxBytes+CompactFreeBytes, or seven eighths of the file are free and no
// record is in flight. q.wmu must be held.
//
// Seven eighths, not half: a drain that empties a large backlog would
// otherwise compact at every halving and copy about the whole backlog
// once more (BenchmarkDrain in package agent: 4 compactions in a drain of
// 400 MB). Not while records are in flight: a compaction holds Next and
// Ack for as long as it copies, which stalled a running drain (two
// compactions in a drain of 2,000 × 200 KB cost it about a fifth of its
// throughput); the Ack that ends the drain compacts a nearly empty file
// instead. Pages freed meanwhile are reused by Puts, so the file does not
// grow because of the wait.
func (q *Queue) maybeCompactLocked() {
	if q.opts.CompactFreeBytes < 0 {
		return
	}
	free, size := q.fileFacts()
	if free < q.opts.CompactFreeBytes {
		return
	}
	over := q.opts.MaxBytes > 0 && size > q.opts.MaxBytes+q.opts.CompactFreeBytes
	q.mu.Lock()
	busy := len(q.inflight) > 0
	q.mu.Unlock()
	if !over && (free*8 < size*7 || busy) {
		return
	}
	if err := q.compactLocked(); err != nil {
		q.log.Error("spool compaction failed", "error", err, "file_bytes", size, "free_bytes", free)
		return
	}
	nfree, nsize := q.fileFacts()
	q.log.Info("spool compacted", "file_bytes_before", size, "file_bytes_after", nsize,
		"free_bytes_before", free, "free_bytes_after", nfree)
}

// fileFacts returns the free bytes inside the database file and the file's
// high-water size in bytes.
func (q *Queue) fileFacts() (free, size int64) {
	q.dbmu.RLock()
	defer q.dbmu.RUnlock()
	if q.db == nil {
		return 0, 0
	}
	free = int64(q.db.Stats().FreeAlloc)
	_ = q.db.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		return nil
	})
	return free, size
}

// compactLocked copies the live database into DBName+".compact", syncs it,
// and renames it over the original. Crash states: before the rename the
// original is intact and Open deletes the partial copy; after the rename the
// copy is complete and synced, so either name resolution is consistent.
// The original is first hard-linked to DBName+".old", which is removed in
// the background: freeing a large file's blocks inside the rename took
// about 100 ms for 400 MB, every Ack and Put waiting on it. Open removes a
// stale ".old", which is never the live file.
// q.wmu must be held; readers are excluded by q.dbmu.
func (q *Queue) compactLocked() error {
	tmp := q.path + compactSuffix
	_ = os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	q.dbmu.Lock()
	defer q.dbmu.Unlock()
	err = guard("compact", func() error { return bolt.Compact(dst, q.db, 16<<20) })
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("compact: %w", err)
	}
	if err := q.db.Close(); err != nil {
		_ = os.Remove(tmp)
		q.db = nil
		return q.reopenLocked(fmt.Errorf("compact: close: %w", err))
	}
	q.db = nil
	old := q.path + oldSuffix
	linked := os.Link(q.path, old) == nil
	if err := os.Rename(tmp, q.path); err != nil {
		_ = os.Remove(tmp)
		if linked {
			_ = os.Remove(old)
		}
		return q.reopenLocked(fmt.Errorf("compact: %w", err))
	}
	if linked {
		q.wg.Add(1)
		go func() {
			defer q.wg.Done()
			_ = os.Remove(old)
		}()
	}
	if err := syncDir(q.dir); err != nil {
		return q.reopenLocked(fmt.Errorf("compact: %w", err))
	}
	q.mu.Lock()
	q.compactions++
	q.mu.Unlock()
	return q.reopenLocked(nil)
}

// reopenLocked reopens q.path after compaction; q.dbmu must be held.
func (q *Queue) reopenLocked(cause error) error {
	db, err := openBolt(q.path, false, q.opts.OpenTimeout)
	if err != nil {
		return fmt.Errorf("reopen spool after compaction: %w", err)
	}
	dropMapped(db)
	q.db = db
	return cause
}
