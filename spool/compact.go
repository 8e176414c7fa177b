package spool

import (
	"fmt"
	"os"
	"time"

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
//
// A compaction writes a copy of the live data beside the file, so it runs
// only while the file system has room for that copy on top of the
// MinFreeBytes reserve: it never eats into the reserve that keeps
// unsent frames from being evicted. When there is no room, or after a
// failed compaction (a write error, ENOSPC), it is not tried again for a
// while: one minute, doubling up to an hour.
func (q *Queue) maybeCompactLocked() {
	if q.opts.CompactFreeBytes < 0 || q.now().Before(q.compactAfter) {
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
	live := size - free
	avail, err := q.diskFree(q.dir)
	if err == nil && avail < live+q.opts.MinFreeBytes+compactSlack {
		q.compactBackoff()
		q.mu.Lock()
		q.compactSkips++
		q.mu.Unlock()
		q.log.Warn("spool compaction postponed: not enough free disk for a copy of the live data above the reserve",
			"live_bytes", live, "available_bytes", avail, "min_free_bytes", q.opts.MinFreeBytes, "retry_in", q.compactWait)
		return
	}
	if err := q.compactLocked(); err != nil {
		q.compactBackoff()
		q.log.Error("spool compaction failed", "error", err, "file_bytes", size, "free_bytes", free, "retry_in", q.compactWait)
		return
	}
	q.compactWait, q.compactAfter = 0, time.Time{}
	nfree, nsize := q.fileFacts()
	q.log.Info("spool compacted", "file_bytes_before", size, "file_bytes_after", nsize,
		"free_bytes_before", free, "free_bytes_after", nfree)
}

// compactSlack is room beyond the live data that a compaction's copy may
// need (bbolt's page rounding and metadata).
const compactSlack = 1 << 20

// compactBackoff postpones the next compaction: one minute, doubling up to
// an hour. q.wmu must be held.
func (q *Queue) compactBackoff() {
	q.compactWait = min(max(2*q.compactWait, time.Minute), time.Hour)
	q.compactAfter = q.now().Add(q.compactWait)
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

// reopenLocked reopens q.path after compaction; q.dbmu must be held. When
// that fails the Queue is broken: every later operation fails with an
// error wrapping ErrBroken, so that its owner stops (and a supervisor
// restarts it and Open recovers the file) instead of running without a
// spool.
func (q *Queue) reopenLocked(cause error) error {
	db, err := q.openFile(q.path, false, q.opts.OpenTimeout)
	if err != nil {
		q.broken = fmt.Errorf("%w: reopen after compaction: %w", ErrBroken, err)
		q.log.Error("spool cannot reopen its file after compaction; stopping", "error", err)
		return q.broken
	}
	dropMapped(db)
	q.db = db
	return cause
}
