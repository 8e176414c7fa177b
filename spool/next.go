package spool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// dropMappedEvery is how many record bytes Next may read before an Ack
// drops the mapped pages: the bound on what reading records adds to RSS,
// besides the 64 KB the kernel maps around each fault.
const dropMappedEvery = 8 << 20

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
	switch q.opts.Order {
	case NewestFirst:
		for i := len(q.ents) - 1; i >= 0 && take(q.ents[i]); i-- {
		}
	case ByPriority:
		// The index is in id order; a stable sort by priority keeps the
		// oldest first within a priority. O(n log n) per Next over the
		// records not in flight (about 1 ms for 10,000).
		free := make([]entry, 0, len(q.ents)-len(q.inflight))
		for _, e := range q.ents {
			if _, busy := q.inflight[e.id]; !busy {
				free = append(free, e)
			}
		}
		slices.SortStableFunc(free, func(a, b entry) int { return cmp.Compare(b.prio, a.prio) })
		for i := 0; i < len(free) && take(free[i]); i++ {
		}
	default:
		for i := 0; i < len(q.ents) && take(q.ents[i]); i++ {
		}
	}
	return ids
}

type badRecord struct {
	id     uint64
	code   string // the Stats.QuarantinedBy key; QuarantineDamaged when ""
	reason string
	raw    []byte // the value as read; nil: read it in the quarantine's transaction
}

// Quarantine moves the records with the given ids, in flight or not, into
// the quarantine in one durable transaction, with a reason code (a short
// snake_case word, counted in Stats.QuarantinedBy) and a detail kept with
// each record. Use it for records that can never be delivered, so that
// they neither block nor vanish: they stay on disk, counted, until MaxBytes
// pressure evicts them first. Unknown ids are ignored.
func (q *Queue) Quarantine(code, detail string, ids ...uint64) error {
	if q.isClosed() {
		return fmt.Errorf("quarantine: %w", ErrClosed)
	}
	bad := make([]badRecord, len(ids))
	for i, id := range ids {
		bad[i] = badRecord{id: id, code: code, reason: code + ": " + detail}
	}
	if err := q.quarantine(bad); err != nil {
		return fmt.Errorf("quarantine: %w", err)
	}
	return nil
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
	counts := map[string]uint64{}
	for i := range bad {
		if bad[i].code == "" {
			bad[i].code = QuarantineDamaged
		}
		counts[bad[i].code]++
	}
	var totals map[string]uint64
	err := q.update("quarantine", func(tx *bolt.Tx) error {
		data, idx, qb := tx.Bucket(bktData), tx.Bucket(bktIdx), tx.Bucket(bktQuar)
		var err error
		if totals, err = addCounters(tx.Bucket(bktState), quarKeyPrefix, counts); err != nil {
			return err
		}
		for i, b := range bad {
			k := idKey(b.id)
			raw := b.raw
			if raw == nil {
				raw = dataGet(data, k)
			}
			v := encodeQuarantine(b.reason, at, raw)
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
	maps.Copy(q.quarBy, totals)
	q.removeLocked(drop)
	q.mu.Unlock()
	for i, b := range bad {
		q.log.Error("spool record quarantined", "id", b.id, "reason", b.reason, "bytes", sizes[i])
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
	_, err := q.AckCount(ids...)
	return err
}

// AckCount is Ack, and returns how many of ids it settled: the records it
// deleted, and those evicted while in flight (the last resort under
// MaxBytes or MinFreeBytes) and confirmed now. Such a record was delivered
// after all, so its eviction is taken back from Stats.Evictions: every
// record is counted once, as delivered or as evicted. Ids acknowledged or
// released before are not counted.
func (q *Queue) AckCount(ids ...uint64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	if q.isClosed() {
		return 0, fmt.Errorf("ack: %w", ErrClosed)
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.mu.Lock()
	drop := make(map[uint64]bool, len(ids))
	delivered := map[uint64]string{}
	undo := map[string]uint64{}
	for _, id := range ids {
		if q.hasLocked(id) {
			drop[id] = true
		} else if reason, ok := q.gone[id]; ok {
			delivered[id] = reason
			undo[reason]++
		}
	}
	q.mu.Unlock()
	if len(drop) == 0 && len(delivered) == 0 {
		return 0, nil
	}
	var totals map[string]uint64
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
		var err error
		totals, err = addCounters(tx.Bucket(bktState), evictKeyPrefix, undo, true)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("ack: %w", err)
	}
	q.mu.Lock()
	q.removeLocked(drop)
	for id := range delivered {
		delete(q.gone, id)
	}
	maps.Copy(q.evictions, totals)
	q.mu.Unlock()
	q.maybeCompactLocked()
	// The pages Next read for acknowledged records, once they add up:
	// dropping them after every Ack cost the drain of small frames a
	// madvise over the whole mapping and a page fault per page read.
	if q.unmapped.Load() >= dropMappedEvery {
		q.unmapped.Store(0)
		q.dropMappedLocked()
	}
	return len(drop) + len(delivered), nil
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
		delete(q.gone, id)
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
