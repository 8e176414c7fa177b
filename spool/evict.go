package spool

import (
	"fmt"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// statfsFree returns the bytes available to an unprivileged user on the file
// system holding dir.
func statfsFree(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// pageSize is bbolt's page size: its default, the operating system's.
var pageSize = int64(os.Getpagesize())

// The reserve check estimates how much a commit grows the file; these two
// allowances keep the estimate on the safe side. bbolt copies every leaf
// and branch page a commit touches and frees the old ones, so a busy file
// holds dozens of scattered single free pages that a record's run of
// contiguous pages cannot use, and its hashmap freelist may split a freed
// run. Counting all free pages as reusable left the disk 36 to 60 pages
// below the reserve in TestRealFullDisk (failed in CI); with these
// allowances it kept the reserve in 200 runs of 100 KB and 9 KB records.
const (
	scatterPages = 128 // free pages not counted as reusable
	commitPages  = 16  // pages a commit may add besides its records
)

// footprint is the file space a record of size accounted bytes takes: its
// value with bbolt's page and element headers (16 bytes each), rounded up to
// whole pages.
func footprint(size int64) int64 {
	return (size + 32 + pageSize - 1) / pageSize * pageSize
}

// spaceFacts returns the disk bytes available (only when MinFreeBytes is set)
// and the free bytes inside the database file that a new record can reuse:
// free pages not pending for a reader, less the scatter allowance.
func (q *Queue) spaceFacts() (avail, fileFree int64, err error) {
	if q.opts.MinFreeBytes <= 0 {
		return 0, 0, nil
	}
	avail, err = q.diskFree(q.dir)
	if err != nil {
		return 0, 0, err
	}
	q.dbmu.RLock()
	if q.db != nil {
		fileFree = max(int64(q.db.Stats().FreePageN)-scatterPages, 0) * pageSize
	}
	q.dbmu.RUnlock()
	return avail, fileFree, nil
}

type victim struct {
	id          uint64
	reason      string
	quarantined bool
}

type candidate struct {
	id          uint64
	prio        int64
	size        int64
	quarantined bool
	inflight    bool
}

// candidatesLocked lists what eviction may remove, in the order it removes
// it: quarantined records, then records not in flight by (priority, id),
// then records in flight by (priority, id).
func (q *Queue) candidatesLocked() []candidate {
	cs := make([]candidate, 0, len(q.quar)+len(q.ents))
	for id, n := range q.quar {
		cs = append(cs, candidate{id: id, size: n, quarantined: true})
	}
	for _, e := range q.ents {
		_, busy := q.inflight[e.id]
		cs = append(cs, candidate{id: e.id, prio: e.prio, size: e.size, inflight: busy})
	}
	rank := func(c candidate) int {
		switch {
		case c.quarantined:
			return 0
		case !c.inflight:
			return 1
		}
		return 2
	}
	slices.SortFunc(cs, func(a, b candidate) int {
		if d := rank(a) - rank(b); d != 0 {
			return d
		}
		if a.prio != b.prio {
			if a.prio < b.prio {
				return -1
			}
			return 1
		}
		if a.id < b.id {
			return -1
		}
		if a.id > b.id {
			return 1
		}
		return 0
	})
	return cs
}

// shortfall returns how many bytes the admissible requests of batch would
// take out of the MinFreeBytes reserve, before any eviction: the same
// growth estimate as planLocked's.
func (q *Queue) shortfall(batch []*putReq, errs []error, avail, fileFree int64) int64 {
	if q.opts.MinFreeBytes <= 0 {
		return 0
	}
	var grow int64
	for i, r := range batch {
		if errs[i] == nil {
			grow += footprint(r.size)
		}
	}
	growth := max(grow+commitPages*pageSize-fileFree, 0)
	return max(q.opts.MinFreeBytes-(avail-growth), 0)
}

// planLocked decides, request by request, which requests are admitted and
// which stored records are evicted to admit them. Rejected requests get an
// error in errs. q.mu must be held.
func (q *Queue) planLocked(batch []*putReq, avail, fileFree int64, errs []error) []victim {
	o := q.opts
	used := q.bytes
	var (
		cands    []candidate
		ci       int
		newBytes int64
		freed    int64
		victims  []victim
	)
	fits := func(size int64) (bool, string) {
		if o.MaxBytes > 0 && used+size > o.MaxBytes {
			return false, ReasonMaxBytes
		}
		if o.MinFreeBytes > 0 {
			// Growth of the file this batch causes; the runs of pages
			// freed by an eviction are reused before the file grows.
			growth := max(newBytes+footprint(size)+commitPages*pageSize-fileFree-freed, 0)
			if growth > 0 && avail-growth < o.MinFreeBytes {
				return false, ReasonMinFree
			}
		}
		return true, ""
	}
	for i, r := range batch {
		if errs[i] != nil {
			continue
		}
		if o.MaxBytes > 0 && r.size > o.MaxBytes {
			errs[i] = fmt.Errorf("put: record of %d bytes exceeds max_bytes %d: %w", r.size, o.MaxBytes, ErrFull)
			q.rejected++
			continue
		}
		mark, sci, sused, sfreed := len(victims), ci, used, freed
		var reject string
		for {
			ok, reason := fits(r.size)
			if ok {
				break
			}
			if cands == nil {
				cands = q.candidatesLocked()
			}
			if ci >= len(cands) {
				reject = reason + ": nothing left to evict"
				break
			}
			c := cands[ci]
			if !c.quarantined && (c.prio > r.enc.priority || (o.Policy == RejectNew && c.prio >= r.enc.priority)) {
				reject = fmt.Sprintf("%s: policy %s keeps stored records of priority %d", reason, o.Policy, c.prio)
				break
			}
			ci++
			victims = append(victims, victim{id: c.id, reason: reason, quarantined: c.quarantined})
			used -= c.size
			freed += footprint(c.size)
		}
		if reject != "" {
			victims, ci, used, freed = victims[:mark], sci, sused, sfreed
			errs[i] = fmt.Errorf("put: %s: %w", reject, ErrFull)
			q.rejected++
			continue
		}
		used += r.size
		newBytes += footprint(r.size)
	}
	return victims
}

// evictLocked deletes victims in one durable transaction, counts them by
// reason (persistently) and logs the burst. q.wmu must be held.
func (q *Queue) evictLocked(victims []victim) error {
	counts := make(map[string]uint64)
	for _, v := range victims {
		counts[v.reason]++
	}
	var persisted map[string]uint64
	err := q.update("evict", func(tx *bolt.Tx) error {
		data, idx, qb, state := tx.Bucket(bktData), tx.Bucket(bktIdx), tx.Bucket(bktQuar), tx.Bucket(bktState)
		for _, v := range victims {
			k := idKey(v.id)
			if v.quarantined {
				if err := qb.Delete(k); err != nil {
					return err
				}
				continue
			}
			if err := dataDelete(data, k); err != nil {
				return err
			}
			if err := idx.Delete(k); err != nil {
				return err
			}
		}
		var err error
		persisted, err = addCounters(state, evictKeyPrefix, counts)
		return err
	})
	if err != nil {
		return err
	}
	q.mu.Lock()
	drop := make(map[uint64]bool, len(victims))
	var first, last uint64
	for _, v := range victims {
		if v.quarantined {
			q.bytes -= q.quar[v.id]
			delete(q.quar, v.id)
			continue
		}
		if _, busy := q.inflight[v.id]; busy {
			q.gone[v.id] = v.reason // settled by its Ack or Release
		}
		drop[v.id] = true
		if first == 0 || v.id < first {
			first = v.id
		}
		last = max(last, v.id)
	}
	q.removeLocked(drop)
	for reason, total := range persisted {
		q.evictions[reason] = total
	}
	q.mu.Unlock()
	for reason, n := range counts {
		q.noteBurst(reason, n, first, last)
	}
	q.maybeCompactLocked()
	return nil
}

const (
	evictKeyPrefix = "evict/"
	quarKeyPrefix  = "quarantine/"
)

// addCounters adds counts to the persistent counters prefix+key in the
// state bucket and returns their new totals. sub subtracts them instead.
func addCounters(state *bolt.Bucket, prefix string, counts map[string]uint64, sub ...bool) (map[string]uint64, error) {
	totals := make(map[string]uint64, len(counts))
	for name, n := range counts {
		key := []byte(prefix + name)
		total := getU64(state.Get(key))
		if len(sub) > 0 && sub[0] {
			total -= min(n, total)
		} else {
			total += n
		}
		if err := state.Put(key, u64Bytes(total)); err != nil {
			return nil, err
		}
		totals[name] = total
	}
	return totals, nil
}

// expireLocked evicts records not in flight whose Created time is older
// than MaxAge. q.wmu must be held.
func (q *Queue) expireLocked() error {
	if q.opts.MaxAge <= 0 {
		return nil
	}
	now := q.now()
	cutoff := now.Add(-q.opts.MaxAge).UnixNano()
	synced := q.opts.ClockSynced == nil || q.opts.ClockSynced()
	if synced && q.syncedSince.IsZero() {
		q.syncedSince = now
	}
	unsyncedOld := synced && q.syncedSince.UnixNano() < cutoff
	q.mu.Lock()
	var victims []victim
	for _, e := range q.ents {
		if _, busy := q.inflight[e.id]; busy {
			continue
		}
		if (!e.unsynced && e.created < cutoff) || (e.unsynced && unsyncedOld) {
			victims = append(victims, victim{id: e.id, reason: ReasonMaxAge})
		}
	}
	q.mu.Unlock()
	if len(victims) == 0 {
		q.endBurst(ReasonMaxAge)
		return nil
	}
	if err := q.evictLocked(victims); err != nil {
		return fmt.Errorf("expire: %w", err)
	}
	return nil
}

// burst tracks a run of evictions for one reason so that it is logged once
// when it starts and once when it ends, not per record.
type burst struct {
	start   time.Time
	evicted uint64
	first   uint64
	last    uint64
}

func (q *Queue) noteBurst(reason string, n, first, last uint64) {
	q.mu.Lock()
	b := q.bursts[reason]
	started := b == nil
	if started {
		b = &burst{start: q.now(), first: first}
		q.bursts[reason] = b
	}
	b.evicted += n
	b.last = max(b.last, last)
	q.mu.Unlock()
	if started {
		q.log.Warn("spool evicting records", "reason", reason, "evicted", n,
			"first_id", first, "max_bytes", q.opts.MaxBytes, "min_free_bytes", q.opts.MinFreeBytes,
			"max_age", q.opts.MaxAge, "policy", q.opts.Policy.String())
	}
}

func (q *Queue) endBurst(reason string) {
	q.mu.Lock()
	b := q.bursts[reason]
	delete(q.bursts, reason)
	q.mu.Unlock()
	if b != nil {
		q.log.Warn("spool eviction burst ended", "reason", reason, "evicted", b.evicted,
			"first_id", b.first, "last_id", b.last, "duration", q.now().Sub(b.start))
	}
}

// endBursts ends the space bursts (a batch was admitted without eviction)
// and, when age is set, the expiry burst too.
func (q *Queue) endBursts(age bool) {
	q.endBurst(ReasonMaxBytes)
	q.endBurst(ReasonMinFree)
	if age {
		q.endBurst(ReasonMaxAge)
	}
}
