package spool

import (
	"context"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

type putReq struct {
	enc  encoded
	key  string // Record.Key
	size int64
	done chan putRes
}

type putRes struct {
	id  uint64
	err error
}

// Put stores r durably and returns its id. When Put returns nil the record
// is on stable storage (fsync). Concurrent Puts share one transaction and
// one fsync (group commit). Put sets r.ID, and r.Created when it was zero.
// It returns an error wrapping ErrFull when the record does not fit under
// the configured bounds and policy, and the id of the earlier record with
// an error wrapping ErrDuplicate when a record with r.Key was stored before
// (see Lookup); it stores nothing then. Once a Put has been handed to the
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
	req := &putReq{enc: enc, key: r.Key, size: int64(len(enc.buf)) + entryOverhead, done: make(chan putRes, 1)}

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
		return res.id, res.err
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
		stored, dup, err := q.storedKeys(batch)
		if err != nil {
			fail(fmt.Errorf("put: %w", err))
			return
		}
		for i, id := range stored {
			ids[i] = id
			errs[i] = fmt.Errorf("put: key %q stored before as id %d: %w", batch[i].key, id, ErrDuplicate)
		}
		for i := range dup {
			errs[i] = ErrDuplicate // settled once the first request is
		}
		defer func() {
			for i, j := range dup {
				ids[i], errs[i] = ids[j], errs[j]
				if errs[j] == nil {
					errs[i] = fmt.Errorf("put: key %q stored as id %d: %w", batch[i].key, ids[j], ErrDuplicate)
				}
			}
		}()
		avail, fileFree, err := q.spaceFacts()
		if err != nil {
			fail(fmt.Errorf("put: %w", err))
			return
		}
		if short := q.shortfall(batch, errs, avail, fileFree); short > 0 && q.opts.Reclaim != nil {
			// Files that can go (delivered captures, old overlays) go
			// before any record is evicted for the reserve.
			if q.opts.Reclaim(short) > 0 {
				if avail, fileFree, err = q.spaceFacts(); err != nil {
					fail(fmt.Errorf("put: %w", err))
					return
				}
			}
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
				ie := idxEntry{dataLen: uint32(len(r.enc.buf)), priority: r.enc.priority, created: r.enc.created, flags: r.enc.flags}
				if err := idx.Put(k, encodeIdx(ie)); err != nil {
					return err
				}
				if r.key != "" {
					id := ids[i]
					if err := writeKey(tx, r.key, func(s *keyState) { s.id = id }); err != nil {
						return err
					}
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
				q.ents = append(q.ents, entry{id: ids[i], prio: r.enc.priority, created: r.enc.created, size: r.size,
					unsynced: r.enc.flags&flagClockUnsynced != 0})
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
