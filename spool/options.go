package spool

import (
	"fmt"
	"log/slog"
	"time"
)

// Policy says what Put does when a new record does not fit under MaxBytes or
// MinFreeBytes.
type Policy int

const (
	// DropOldest evicts stored records to make room: quarantined records
	// first, then records of the lowest priority, oldest first, never a
	// record of higher priority than the new one. It is the default.
	DropOldest Policy = iota
	// RejectNew refuses the new record with ErrFull unless records of
	// strictly lower priority (or quarantined records) can be evicted to
	// make room.
	RejectNew
)

// String returns the configuration spelling of p.
func (p Policy) String() string {
	switch p {
	case DropOldest:
		return "drop-oldest"
	case RejectNew:
		return "reject-new"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// MarshalText implements encoding.TextMarshaler.
func (p Policy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText accepts "drop-oldest" (or empty) and "reject-new".
func (p *Policy) UnmarshalText(b []byte) error {
	switch string(b) {
	case "", "drop-oldest":
		*p = DropOldest
	case "reject-new":
		*p = RejectNew
	default:
		return fmt.Errorf("spool policy: must be drop-oldest or reject-new (got %q)", b)
	}
	return nil
}

// Order says in which order Next hands out records.
type Order int

const (
	// OldestFirst hands out the lowest ids first. It is the default.
	OldestFirst Order = iota
	// NewestFirst hands out the highest ids first.
	NewestFirst
	// ByPriority hands out the highest Record.Priority first, the lowest
	// id (the oldest) first within a priority.
	ByPriority
)

// String returns the configuration spelling of o.
func (o Order) String() string {
	switch o {
	case OldestFirst:
		return "oldest-first"
	case NewestFirst:
		return "newest-first"
	case ByPriority:
		return "priority"
	}
	return fmt.Sprintf("Order(%d)", int(o))
}

// MarshalText implements encoding.TextMarshaler.
func (o Order) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// UnmarshalText accepts "oldest-first" (or empty), "newest-first" and
// "priority".
func (o *Order) UnmarshalText(b []byte) error {
	switch string(b) {
	case "", "oldest-first":
		*o = OldestFirst
	case "newest-first":
		*o = NewestFirst
	case "priority":
		*o = ByPriority
	default:
		return fmt.Errorf("spool order: must be oldest-first, newest-first or priority (got %q)", b)
	}
	return nil
}

// QuarantineDamaged is the reason code (a key of Stats.QuarantinedBy) of
// records quarantined because their bytes are damaged.
const QuarantineDamaged = "damaged"

// Eviction reasons, the keys of Stats.Evictions.
const (
	// ReasonMaxBytes counts records evicted to stay under Options.MaxBytes.
	ReasonMaxBytes = "max_bytes"
	// ReasonMinFree counts records evicted to keep Options.MinFreeBytes free.
	ReasonMinFree = "min_free"
	// ReasonMaxAge counts records expired by Options.MaxAge.
	ReasonMaxAge = "max_age"
)

// Options configure a Queue. The zero value is a usable, unbounded spool.
type Options struct {
	// MaxBytes bounds the bytes of stored records (encoded records plus
	// index entries plus quarantined data). 0 means no bound.
	MaxBytes int64
	// MinFreeBytes is the free-disk reserve: a Put that would have to grow
	// the database file while the file system has fewer than this many
	// bytes available evicts or rejects per Policy. 0 disables the check.
	MinFreeBytes int64
	// Policy applies when a new record does not fit. Default DropOldest.
	Policy Policy
	// MaxAge expires records whose Created time is older than this; 0 keeps
	// records forever. Expiry runs on Put and Next; records in flight are
	// not expired. A record marked ClockUnsynced never expires while
	// ClockSynced reports false, and otherwise only MaxAge after the spool
	// first saw the clock synchronised.
	MaxAge time.Duration
	// ClockSynced reports whether the system clock is known to be right;
	// nil means it always is.
	ClockSynced func() bool
	// Reclaim, when set, is asked to free need bytes on the spool's file
	// system (by deleting files the caller can spare) before a Put evicts
	// records to keep MinFreeBytes free; it returns the bytes it freed.
	// It runs in the committer with writes held: keep it short.
	Reclaim func(need int64) (freed int64)
	// Order is the order Next hands out records in. Default OldestFirst.
	Order Order
	// Logger receives eviction bursts, quarantines, compactions and
	// corruption reports. nil discards.
	Logger *slog.Logger

	// CompactFreeBytes is the number of free bytes inside the database file
	// above which the spool compacts it (see the package comment). 0 means
	// 32 MiB; a negative value disables compaction.
	CompactFreeBytes int64
	// MaxBatch bounds the records of one group commit. 0 means 64.
	MaxBatch int
	// OpenTimeout is how long Open waits for the file lock before
	// returning ErrInUse. 0 means 200ms.
	OpenTimeout time.Duration
	// DiskFree reports the bytes available to the process on the file
	// system holding dir. nil uses statfs(2). Tests inject a fake.
	DiskFree func(dir string) (int64, error)
	// Now is the clock used for Created defaults, expiry and ages. nil
	// uses time.Now.
	Now func() time.Time
}

const (
	defaultCompactFree = 32 << 20
	defaultMaxBatch    = 64
	defaultOpenTimeout = 200 * time.Millisecond
	maxBatchBytes      = 32 << 20
	// groupWait bounds how long a group commit waits for producers of
	// the previous batch; far below one fsync.
	groupWait = 2 * time.Millisecond
)
