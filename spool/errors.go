package spool

import (
	"errors"
	"fmt"
)

var (
	// ErrFull is returned by Put when the record cannot be admitted without
	// breaking MaxBytes or MinFreeBytes: under RejectNew when nothing of
	// strictly lower priority can be evicted, under DropOldest when every
	// stored record has a higher priority than the new one, or when the
	// record alone is larger than MaxBytes.
	ErrFull = errors.New("spool full")

	// ErrDuplicate is returned by Put, with the earlier record's id, when a
	// record with the same Record.Key was stored before.
	ErrDuplicate = errors.New("capture stored before")

	// ErrBroken is matched by the errors of every operation on a Queue
	// that lost its database file (it could not reopen it after a
	// compaction). The owner should stop; Open recovers the file.
	ErrBroken = errors.New("spool broken")

	// ErrClosed is returned by operations on a closed Queue.
	ErrClosed = errors.New("spool closed")

	// ErrInUse is returned by Open, Check and Inspect when another process
	// (normally the running agent) holds the spool's file lock.
	ErrInUse = errors.New("spool in use by another process")

	// ErrCorrupt marks damaged on-disk data. Errors of type *CorruptError
	// match it with errors.Is.
	ErrCorrupt = errors.New("spool data corrupt")
)

// CorruptError says where damaged data was found and why it was rejected.
// It matches ErrCorrupt with errors.Is.
type CorruptError struct {
	// Bucket is the bbolt bucket holding the damaged value ("data", "idx",
	// "state") or "file" for damage to the database file itself.
	Bucket string
	// ID is the record id the damaged value belongs to, 0 when unknown.
	ID uint64
	// Reason is a short lowercase phrase such as "payload checksum mismatch".
	Reason string
}

// Error implements error.
func (e *CorruptError) Error() string {
	if e.ID != 0 {
		return fmt.Sprintf("corrupt %s record %d: %s", e.Bucket, e.ID, e.Reason)
	}
	return fmt.Sprintf("corrupt %s: %s", e.Bucket, e.Reason)
}

// Is reports whether target is ErrCorrupt.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }
