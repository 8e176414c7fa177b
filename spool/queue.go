package spool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
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
}

// entry is the in-memory index of one stored record.
type entry struct {
	id      uint64
	prio    int64
	created int64
	size    int64
}

type putReq struct {
	enc  encoded
	size int64
	done chan putRes
}

type putRes struct {
	id  uint64
	err error
}

// dropMappedEvery is how many record bytes Next may read before an Ack
// drops the mapped pages: the bound on what reading records adds to RSS,
// besides the 64 KB the kernel maps around each fault.
const dropMappedEvery = 8 << 20

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

	mu          sync.Mutex // guards the fields below
	ents        []entry    // sorted by id
	inflight    map[uint64]struct{}
	quar        map[uint64]int64 // quarantined id -> bytes
	bytes       int64
	nextID      uint64
	evictions   map[string]uint64
	rejected    uint64
	quarTotal   uint64
	corrupt     int
	compactions uint64
	commits     uint64
	salvaged    int    // records salvaged from a renamed-aside file at Open
	renamedTo   string // file renamed aside at Open, if any
	notify      chan struct{}
	bursts      map[string]*burst
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
		quar:      make(map[uint64]int64),
		evictions: make(map[string]uint64),
		notify:    make(chan struct{}),
		bursts:    make(map[string]*burst),
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
	for _, e := range q.ents {
		q.bytes += e.size
	}
	for _, n := range q.quar {
		q.bytes += n
	}
}

// Put stores r durably and returns its id. When Put returns nil the record
// is on stable storage (fsync). Concurrent Puts share one transaction and
// one fsync (group commit). Put sets r.ID, and r.Created when it was zero.
// It returns an error wrapping ErrFull when the record does not fit under
// the configured bounds and policy. Once a Put has been handed to the
// committer it waits for the outcome even if ctx is cancelled, so a nil
// error is never lost and an error never hides a stored record.
func (q *Queue) Put(ctx context.Context, r *Record) (uint64, error) {
	if r == nil {
		return 0, errors.New("put: nil record")
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("put: %w", err)
	}
	q.inPut.Add(1)
	defer q.inPut.Add(-1)
	created := r.Created
	if created.IsZero() {
		created = q.now()
	}
	enc := encodeRecord(r, created)
	req := &putReq{enc: enc, size: int64(len(enc.buf)) + entryOverhead, done: make(chan putRes, 1)}

	q.closeMu.RLock()
	if q.closing {
		q.closeMu.RUnlock()
		return 0, fmt.Errorf("put: %w", ErrClosed)
	}
	select {
	case q.reqs <- req:
	case <-ctx.Done():
		q.closeMu.RUnlock()
		return 0, fmt.Errorf("put: %w", ctx.Err())
	}
	q.closeMu.RUnlock()
	res := <-req.done
	if res.err != nil {
		return 0, res.err
	}
	r.ID = res.id
	r.Created = created
	return res.id, nil
}

// committer owns group commit: it takes every request waiting at the time
// the previous commit ended and commits them in one transaction.
func (q *Queue) committer() {
	defer q.wg.Done()
	for {
		select {
		case r := <-q.reqs:
			q.commitBatch(q.gather(r))
		case <-q.quit:
			for {
				select {
				case r := <-q.reqs:
					q.commitBatch(q.gather(r))
				default:
					return
				}
			}
		}
	}
}

// gather collects the requests of one group commit: everything already
// queued, and, when recent batches or the Puts in progress show that
// several producers are active, up to groupWait more for the producers that
// are still encoding their next record. A lone producer never waits.
func (q *Queue) gather(first *putReq) []*putReq {
	batch := []*putReq{first}
	n := first.size
	full := func() bool { return len(batch) >= q.opts.MaxBatch || n >= maxBatchBytes }
	for !full() {
		select {
		case r := <-q.reqs:
			batch = append(batch, r)
			n += r.size
			continue
		default:
		}
		break
	}
	target := int(q.inPut.Load())
	for _, n := range q.recent {
		target = max(target, n)
	}
	if len(batch) < target && !full() {
		timer := time.NewTimer(groupWait)
	wait:
		for len(batch) < target && !full() {
			select {
			case r := <-q.reqs:
				batch = append(batch, r)
				n += r.size
			case <-timer.C:
				break wait
			case <-q.quit:
				break wait
			}
		}
		timer.Stop()
	}
	q.recent[q.nbatch%len(q.recent)] = len(batch)
	q.nbatch++
	return batch
}

func (q *Queue) commitBatch(batch []*putReq) {
	errs := make([]error, len(batch))
	ids := make([]uint64, len(batch))
	func() {
		q.wmu.Lock()
		defer q.wmu.Unlock()
		fail := func(err error) {
			for i := range errs {
				if errs[i] == nil {
					errs[i] = err
				}
			}
		}
		if err := q.expireLocked(); err != nil {
			fail(fmt.Errorf("put: %w", err))
			return
		}
		avail, fileFree, err := q.spaceFacts()
		if err != nil {
			fail(fmt.Errorf("put: %w", err))
			return
		}
		q.mu.Lock()
		victims := q.planLocked(batch, avail, fileFree, errs)
		q.mu.Unlock()
		if len(victims) > 0 {
			if err := q.evictLocked(victims); err != nil {
				fail(fmt.Errorf("put: make room: %w", err))
				return
			}
		}
		q.mu.Lock()
		next := q.nextID
		q.mu.Unlock()
		for i, r := range batch {
			if errs[i] != nil {
				continue
			}
			next++
			ids[i] = next
			r.enc.seal(next)
		}
		if next == q.nextID {
			q.endBursts(false)
			return
		}
		err = q.update("put", func(tx *bolt.Tx) error {
			data, idx, state := tx.Bucket(bktData), tx.Bucket(bktIdx), tx.Bucket(bktState)
			for i, r := range batch {
				if errs[i] != nil {
					continue
				}
				k := idKey(ids[i])
				if err := dataPut(data, k, r.enc.buf); err != nil {
					return err
				}
				ie := idxEntry{dataLen: uint32(len(r.enc.buf)), priority: r.enc.priority, created: r.enc.created}
				if err := idx.Put(k, encodeIdx(ie)); err != nil {
					return err
				}
			}
			return state.Put(keyNextID, u64Bytes(next))
		})
		if err != nil {
			fail(fmt.Errorf("put: %w", err))
			return
		}
		q.mu.Lock()
		q.nextID = next
		q.commits++
		for i, r := range batch {
			if errs[i] == nil {
				q.ents = append(q.ents, entry{id: ids[i], prio: r.enc.priority, created: r.enc.created, size: r.size})
				q.bytes += r.size
			}
		}
		q.wakeLocked()
		q.mu.Unlock()
		if len(victims) == 0 {
			q.endBursts(false)
		}
	}()
	for i, r := range batch {
		r.done <- putRes{id: ids[i], err: errs[i]}
	}
}

// wakeLocked wakes every Wait. q.mu must be held.
func (q *Queue) wakeLocked() {
	close(q.notify)
	q.notify = make(chan struct{})
}

// Next returns up to n records that are not in flight, in the configured
// Order, and marks them in flight. They stay stored until Ack; Release
// hands them out again. A record that fails to decode is quarantined and
// skipped. Next returns an empty slice when nothing is available; use Wait
// to block for new records.
func (q *Queue) Next(n int) ([]Record, error) {
	if n <= 0 {
		return nil, nil
	}
	if q.isClosed() {
		return nil, fmt.Errorf("next: %w", ErrClosed)
	}
	if q.opts.MaxAge > 0 {
		q.wmu.Lock()
		err := q.expireLocked()
		q.wmu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("next: %w", err)
		}
	}
	var out []Record
	for len(out) < n {
		ids := q.pick(n - len(out))
		if len(ids) == 0 {
			break
		}
		recs, bad, err := q.read(ids)
		if err != nil {
			q.Release(ids...)
			q.Release(recordIDs(out)...)
			return nil, fmt.Errorf("next: %w", err)
		}
		out = append(out, recs...)
		if len(bad) == 0 {
			break
		}
		if err := q.quarantine(bad); err != nil {
			q.Release(recordIDs(out)...)
			return nil, fmt.Errorf("next: %w", err)
		}
	}
	return out, nil
}

func recordIDs(rs []Record) []uint64 {
	ids := make([]uint64, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	return ids
}

func (q *Queue) pick(n int) []uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	var ids []uint64
	take := func(e entry) bool {
		if _, busy := q.inflight[e.id]; busy {
			return true
		}
		ids = append(ids, e.id)
		q.inflight[e.id] = struct{}{}
		return len(ids) < n
	}
	if q.opts.Order == NewestFirst {
		for i := len(q.ents) - 1; i >= 0 && take(q.ents[i]); i-- {
		}
	} else {
		for i := 0; i < len(q.ents) && take(q.ents[i]); i++ {
		}
	}
	return ids
}

type badRecord struct {
	id     uint64
	reason string
	raw    []byte
}

func (q *Queue) read(ids []uint64) (recs []Record, bad []badRecord, err error) {
	err = q.view("read", func(tx *bolt.Tx) error {
		data := tx.Bucket(bktData)
		for _, id := range ids {
			v := dataGet(data, idKey(id))
			if v == nil {
				bad = append(bad, badRecord{id: id, reason: "data missing"})
				continue
			}
			r, err := decodeRecord(id, v)
			if err != nil {
				var ce *CorruptError
				reason := err.Error()
				if errors.As(err, &ce) {
					reason = ce.Reason
				}
				bad = append(bad, badRecord{id: id, reason: reason, raw: slices.Clone(v)})
				continue
			}
			recs = append(recs, r)
			q.unmapped.Add(int64(len(v)))
		}
		return nil
	})
	return recs, bad, err
}

// quarantine moves damaged records out of the data and index buckets into
// the quarantine bucket with their reason, in one transaction.
func (q *Queue) quarantine(bad []badRecord) error {
	q.wmu.Lock()
	defer q.wmu.Unlock()
	// A record evicted or acknowledged between Next's pick and its read
	// looks missing but is not damaged. With q.wmu held the in-memory index
	// matches the file, so only records still indexed are quarantined.
	q.mu.Lock()
	bad = slices.DeleteFunc(slices.Clone(bad), func(b badRecord) bool { return !q.hasLocked(b.id) })
	q.mu.Unlock()
	if len(bad) == 0 {
		return nil
	}
	at := q.now()
	sizes := make([]int64, len(bad))
	err := q.update("quarantine", func(tx *bolt.Tx) error {
		data, idx, qb := tx.Bucket(bktData), tx.Bucket(bktIdx), tx.Bucket(bktQuar)
		for i, b := range bad {
			k := idKey(b.id)
			v := encodeQuarantine(b.reason, at, b.raw)
			sizes[i] = int64(len(v)) + keyLen
			if err := qb.Put(k, v); err != nil {
				return err
			}
			if err := dataDelete(data, k); err != nil {
				return err
			}
			if err := idx.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	q.mu.Lock()
	drop := make(map[uint64]bool, len(bad))
	for i, b := range bad {
		drop[b.id] = true
		q.quar[b.id] = sizes[i]
		q.bytes += sizes[i]
		q.quarTotal++
	}
	q.removeLocked(drop)
	q.mu.Unlock()
	for _, b := range bad {
		q.log.Error("spool record quarantined", "id", b.id, "reason", b.reason, "raw_bytes", len(b.raw))
	}
	return nil
}

// hasLocked reports whether id is in the in-memory index. q.mu must be held.
func (q *Queue) hasLocked(id uint64) bool {
	_, ok := slices.BinarySearchFunc(q.ents, id, func(e entry, id uint64) int { return cmp.Compare(e.id, id) })
	return ok
}

// removeLocked drops ids from the in-memory index and in-flight set and
// subtracts their bytes. q.mu must be held.
func (q *Queue) removeLocked(drop map[uint64]bool) {
	keep := q.ents[:0]
	for _, e := range q.ents {
		if drop[e.id] {
			q.bytes -= e.size
			delete(q.inflight, e.id)
			continue
		}
		keep = append(keep, e)
	}
	clear(q.ents[len(keep):])
	q.ents = keep
}

// Ack deletes the records with the given ids in one durable transaction;
// call it after the broker confirmed them. Unknown ids (already evicted or
// acknowledged) are ignored.
func (q *Queue) Ack(ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	if q.isClosed() {
		return fmt.Errorf("ack: %w", ErrClosed)
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.mu.Lock()
	drop := make(map[uint64]bool, len(ids))
	for _, id := range ids {
		drop[id] = true
	}
	q.mu.Unlock()
	err := q.update("ack", func(tx *bolt.Tx) error {
		data, idx := tx.Bucket(bktData), tx.Bucket(bktIdx)
		for id := range drop {
			k := idKey(id)
			if err := dataDelete(data, k); err != nil {
				return err
			}
			if err := idx.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	q.mu.Lock()
	q.removeLocked(drop)
	q.mu.Unlock()
	q.maybeCompactLocked()
	// The pages Next read for acknowledged records, once they add up:
	// dropping them after every Ack cost the drain of small frames a
	// madvise over the whole mapping and a page fault per page read.
	if q.unmapped.Load() >= dropMappedEvery {
		q.unmapped.Store(0)
		q.dropMappedLocked()
	}
	return nil
}

// Release returns in-flight records so that Next hands them out again, for
// example after the broker refused them or the connection dropped.
func (q *Queue) Release(ids ...uint64) {
	if len(ids) == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, id := range ids {
		delete(q.inflight, id)
	}
	q.wakeLocked()
}

// Wait blocks until at least one record is available to Next (stored and
// not in flight), ctx is done, or the Queue is closed.
func (q *Queue) Wait(ctx context.Context) error {
	for {
		q.mu.Lock()
		avail := len(q.ents) - len(q.inflight)
		ch := q.notify
		q.mu.Unlock()
		if q.isClosed() {
			return fmt.Errorf("wait: %w", ErrClosed)
		}
		if avail > 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-q.quit:
			return fmt.Errorf("wait: %w", ErrClosed)
		}
	}
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
		return ErrClosed
	}
	return guard(what, func() error { return q.db.Update(fn) })
}

func (q *Queue) view(what string, fn func(*bolt.Tx) error) error {
	q.dbmu.RLock()
	defer q.dbmu.RUnlock()
	if q.db == nil {
		return ErrClosed
	}
	return guard(what, func() error { return q.db.View(fn) })
}
