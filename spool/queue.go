package spool

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// DBName is the name of the bbolt file inside the spool directory.
const DBName = "spool.db"

// Record is one spooled frame.
type Record struct {
	// ID is assigned by Put: unique and increasing for the life of the
	// spool directory, never reused, also across restarts.
	ID uint64
	// Priority decides eviction: records of higher priority outlive
	// records of lower priority.
	Priority int
	// Created is the capture time; Put sets it to the current time when it
	// is zero. MaxAge is measured from it.
	Created time.Time
	// Image is the encoded image.
	Image []byte
	// Mask is the encoded segmentation mask.
	Mask []byte
	// Meta is opaque frame metadata owned by the caller (JSON).
	Meta []byte
	// ClockUnsynced says the record was captured while the clock was not
	// known to be right, so Created may be far off: MaxAge counts its age
	// from when Options.ClockSynced first reported the clock right, not
	// from Created.
	ClockUnsynced bool
	// Key identifies the capture at its source (a file's name, size and
	// time), or is empty. Put stores it with the record in one transaction
	// and refuses a second record with the same key (see Lookup). Next
	// leaves it empty.
	Key string
}

// entry is the in-memory index of one stored record.
type entry struct {
	id       uint64
	prio     int64
	created  int64
	size     int64
	unsynced bool // captured while the clock was not known to be right
}

// Queue is an open spool. All methods are safe for concurrent use.
type Queue struct {
	dir, path string
	opts      Options
	log       *slog.Logger
	now       func() time.Time
	diskFree  func(string) (int64, error)

	closeMu sync.RWMutex // guards closing against Put submissions
	closing bool
	reqs    chan *putReq
	// recent holds the sizes of the last group commits; owned by the
	// committer goroutine.
	recent [8]int
	nbatch int
	inPut  atomic.Int64 // Put calls in progress
	// unmapped counts the record bytes Next read since mapped pages were
	// last dropped (see dropMapped).
	unmapped atomic.Int64
	quit     chan struct{}
	wg       sync.WaitGroup

	wmu  sync.Mutex   // serializes write transactions and compaction
	dbmu sync.RWMutex // guards db against the swap done by compaction and Close
	db   *bolt.DB
	// broken is set, under dbmu, when the file could not be reopened
	// after a compaction (see reopenLocked).
	broken error
	// openFile is openBolt; tests replace it to make a reopen fail.
	openFile func(path string, readOnly bool, timeout time.Duration) (*bolt.DB, error)
	// compactAfter and compactWait postpone compaction after a failure or
	// for want of disk space; guarded by wmu.
	compactAfter time.Time
	compactWait  time.Duration
	// syncedSince is when expiry first saw the clock synchronised (see
	// Options.ClockSynced); guarded by wmu.
	syncedSince time.Time

	mu           sync.Mutex // guards the fields below
	ents         []entry    // sorted by id
	inflight     map[uint64]struct{}
	gone         map[uint64]string // in-flight records evicted, by reason, until Ack or Release
	quar         map[uint64]int64  // quarantined id -> bytes
	bytes        int64
	nextID       uint64
	evictions    map[string]uint64
	quarBy       map[string]uint64 // lifetime quarantines by reason code
	rejected     uint64
	quarTotal    uint64
	corrupt      int
	compactions  uint64
	compactSkips uint64
	commits      uint64
	salvaged     int    // records salvaged from a renamed-aside file at Open
	renamedTo    string // file renamed aside at Open, if any
	notify       chan struct{}
	bursts       map[string]*burst
}

// Open opens or creates the spool in directory dir. The directory holds the
// bbolt file DBName and, after damage, renamed-aside files
// DBName+".corrupt-<time>". Open fails with ErrInUse when another process
// holds the spool. A database file bbolt cannot open, or whose structure
// fails bbolt's consistency check, is renamed aside, decodable records are
// salvaged into a fresh file, and the event is logged at Error and counted
// in Stats.CorruptRenames; Open then succeeds.
func Open(dir string, opts Options) (*Queue, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	q := &Queue{
		dir:       dir,
		path:      filepath.Join(dir, DBName),
		opts:      opts,
		log:       opts.Logger,
		now:       opts.Now,
		diskFree:  opts.DiskFree,
		reqs:      make(chan *putReq, 256),
		quit:      make(chan struct{}),
		inflight:  make(map[uint64]struct{}),
		gone:      make(map[uint64]string),
		quar:      make(map[uint64]int64),
		evictions: make(map[string]uint64),
		quarBy:    make(map[string]uint64),
		notify:    make(chan struct{}),
		bursts:    make(map[string]*burst),
		openFile:  openBolt,
	}
	if q.log == nil {
		q.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	q.log = q.log.With("component", "spool")
	if q.now == nil {
		q.now = time.Now
	}
	if q.diskFree == nil {
		q.diskFree = statfsFree
	}
	if q.opts.MaxBatch <= 0 {
		q.opts.MaxBatch = defaultMaxBatch
	}
	if q.opts.CompactFreeBytes == 0 {
		q.opts.CompactFreeBytes = defaultCompactFree
	}
	if q.opts.OpenTimeout <= 0 {
		q.opts.OpenTimeout = defaultOpenTimeout
	}
	q.corrupt = countCorrupt(q.path)
	st, err := q.openAndLoad()
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", dir, err)
	}
	// A crash during compaction leaves a partial copy (the original is
	// intact) or a second link to the replaced file. Removed only now that
	// this process holds the file lock.
	_ = os.Remove(q.path + compactSuffix)
	_ = os.Remove(q.path + oldSuffix)
	// bbolt syncs the file it creates but not the directory entries: make
	// the file's (and a new spool directory's) names durable before the
	// first Put can claim durability.
	if err := errors.Join(syncDir(dir), syncDir(filepath.Dir(filepath.Clean(dir)))); err != nil {
		_ = q.db.Close()
		return nil, fmt.Errorf("open spool %s: %w", dir, err)
	}
	q.applyLoad(st)
	q.wg.Add(1)
	go q.committer()
	if q.opts.MaxAge > 0 {
		q.wmu.Lock()
		err := q.expireLocked()
		q.wmu.Unlock()
		if err != nil {
			_ = q.Close()
			return nil, fmt.Errorf("open spool %s: %w", dir, err)
		}
	}
	return q, nil
}

// wakeLocked wakes every Wait. q.mu must be held.
func (q *Queue) wakeLocked() {
	close(q.notify)
	q.notify = make(chan struct{})
}

func (q *Queue) isClosed() bool {
	q.closeMu.RLock()
	defer q.closeMu.RUnlock()
	return q.closing
}

// Close stops the committer after it has committed every Put already
// submitted, and closes the database. In-flight marks are not persisted:
// after reopening, unacknowledged records are handed out again.
func (q *Queue) Close() error {
	q.closeMu.Lock()
	if q.closing {
		q.closeMu.Unlock()
		return nil
	}
	q.closing = true
	close(q.quit)
	q.closeMu.Unlock()
	q.wg.Wait()
	q.endBursts(true)
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.dbmu.Lock()
	defer q.dbmu.Unlock()
	if q.db == nil {
		return nil
	}
	err := q.db.Close()
	q.db = nil
	if err != nil {
		return fmt.Errorf("close spool: %w", err)
	}
	return nil
}

// update runs fn in a durable write transaction; q.wmu must be held. A
// bbolt panic (damaged page) becomes a *CorruptError.
func (q *Queue) update(what string, fn func(*bolt.Tx) error) error {
	q.dbmu.RLock()
	defer q.dbmu.RUnlock()
	if q.db == nil {
		return q.closedErr()
	}
	return guard(what, func() error { return q.db.Update(fn) })
}

func (q *Queue) view(what string, fn func(*bolt.Tx) error) error {
	q.dbmu.RLock()
	defer q.dbmu.RUnlock()
	if q.db == nil {
		return q.closedErr()
	}
	return guard(what, func() error { return q.db.View(fn) })
}

// closedErr says why q.db is nil: q.broken, or ErrClosed. q.dbmu must be
// held.
func (q *Queue) closedErr() error {
	if q.broken != nil {
		return q.broken
	}
	return ErrClosed
}
