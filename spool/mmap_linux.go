package spool

import (
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// dropMapped tells the kernel to unmap the pages of db's mmap from this
// process (MADV_DONTNEED on a shared, read-only file mapping: the page cache
// keeps them and later reads fault them back in from the file). Reading
// records, and bbolt's page walks at open, would otherwise leave up to the
// whole file counted in the process's RSS, since the kernel maps 64 KB
// around every fault. The caller must guarantee that no write transaction
// runs (bbolt may remap while committing): q.wmu held, or before the
// committer starts.
func dropMapped(db *bolt.DB) {
	var size int64
	if err := db.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		return nil
	}); err != nil || size <= 0 {
		return
	}
	info := db.Info()
	if info == nil || info.Data == 0 {
		return
	}
	// Advice only: an error leaves the pages mapped, nothing else.
	_, _, _ = unix.Syscall(unix.SYS_MADVISE, info.Data, uintptr(size), unix.MADV_DONTNEED)
}

// dropMappedLocked calls dropMapped on the open database; q.wmu must be held.
func (q *Queue) dropMappedLocked() {
	q.dbmu.RLock()
	defer q.dbmu.RUnlock()
	if q.db != nil {
		dropMapped(q.db)
	}
}
