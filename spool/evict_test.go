package spool

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func sizeOf(r *Record) int64 {
	return int64(recHeaderLen+len(r.Image)+len(r.Mask)+len(r.Meta)) + entryOverhead
}

func liveIDs(q *Queue) []uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	ids := make([]uint64, len(q.ents))
	for i, e := range q.ents {
		ids[i] = e.id
	}
	return ids
}

func TestEvictionMaxBytes(t *testing.T) {
	one := sizeOf(rec(0, 1000, 0))
	for _, tc := range []struct {
		name     string
		policy   Policy
		stored   []int // priorities of records 1..n
		inflight []uint64
		newPrio  int
		newSize  int
		wantFull bool
		want     []uint64 // ids stored afterwards (new record is id len(stored)+1)
	}{
		{"drop-oldest equal priority", DropOldest, []int{0, 0, 0}, nil, 0, 1000, false, []uint64{2, 3, 4}},
		{"drop-oldest lowest priority first", DropOldest, []int{1, 0, 1}, nil, 0, 1000, false, []uint64{1, 3, 4}},
		{"drop-oldest higher priorities outlive", DropOldest, []int{1, 1, 1}, nil, 0, 1000, true, []uint64{1, 2, 3}},
		{"drop-oldest high new evicts low", DropOldest, []int{0, 2, 1}, nil, 5, 1000, false, []uint64{2, 3, 4}},
		{"drop-oldest spares in flight", DropOldest, []int{0, 0, 0}, []uint64{1}, 0, 1000, false, []uint64{1, 3, 4}},
		{"drop-oldest in flight last resort", DropOldest, []int{0, 0, 0}, []uint64{1, 2, 3}, 0, 1000, false, []uint64{2, 3, 4}},
		{"drop-oldest big record evicts two", DropOldest, []int{0, 0, 0}, nil, 0, 2000, false, []uint64{3, 4}},
		{"reject-new equal priority", RejectNew, []int{0, 0, 0}, nil, 0, 1000, true, []uint64{1, 2, 3}},
		{"reject-new higher priority evicts lower", RejectNew, []int{0, 1, 0}, nil, 1, 1000, false, []uint64{2, 3, 4}},
		{"reject-new nothing lower", RejectNew, []int{2, 1, 2}, nil, 1, 1000, true, []uint64{1, 2, 3}},
		{"record larger than max bytes", DropOldest, []int{0, 0, 0}, nil, 9, 4000, true, []uint64{1, 2, 3}},
		{"fits without eviction", DropOldest, []int{0, 0}, nil, 0, 1000, false, []uint64{1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := openT(t, t.TempDir(), Options{MaxBytes: 3 * one, Policy: tc.policy})
			for i, p := range tc.stored {
				putT(t, q, rec(i, 1000, p))
			}
			if len(tc.inflight) > 0 {
				nextIDs(t, q, len(tc.inflight))
			}
			_, err := q.Put(context.Background(), rec(9, tc.newSize, tc.newPrio))
			if got := errors.Is(err, ErrFull); got != tc.wantFull {
				t.Fatalf("Put error %v, want ErrFull %v", err, tc.wantFull)
			}
			if got := liveIDs(q); !slices.Equal(got, tc.want) {
				t.Fatalf("stored ids %v, want %v", got, tc.want)
			}
			st := q.Stats()
			evicted := uint64(len(tc.stored) + 1 - len(tc.want))
			if tc.wantFull {
				evicted = 0
				if st.Rejected != 1 {
					t.Fatalf("Rejected = %d", st.Rejected)
				}
			}
			if st.Evictions[ReasonMaxBytes] != evicted {
				t.Fatalf("evictions %v, want %d", st.Evictions, evicted)
			}
			if st.Bytes > 3*one {
				t.Fatalf("Bytes %d over MaxBytes %d", st.Bytes, 3*one)
			}
		})
	}
}

func TestEvictionMinFree(t *testing.T) {
	const size = 100_000
	for _, tc := range []struct {
		name     string
		policy   Policy
		stored   int
		avail    int64
		diskErr  bool
		wantErr  error
		wantEvic bool
	}{
		{"plenty of disk", DropOldest, 2, 1 << 30, false, nil, false},
		{"reserve breached drop-oldest recycles space", DropOldest, 2, 1 << 20, false, nil, true},
		{"reserve breached empty spool", DropOldest, 0, 1 << 20, false, ErrFull, false},
		{"statfs fails", DropOldest, 2, 0, true, errStatfs, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var avail atomic.Int64
			avail.Store(1 << 40)
			var fail atomic.Bool
			q := openT(t, t.TempDir(), Options{MinFreeBytes: 2 << 20, Policy: tc.policy,
				DiskFree: func(string) (int64, error) {
					if fail.Load() {
						return 0, errStatfs
					}
					return avail.Load(), nil
				}})
			for i := range tc.stored {
				putT(t, q, rec(i, size, 0))
			}
			avail.Store(tc.avail)
			fail.Store(tc.diskErr)
			// Larger than the file's free pages, so that it must grow the
			// file unless an eviction frees pages first.
			_, fileFree, _ := q.spaceFacts()
			id, err := q.Put(context.Background(), rec(9, int(fileFree)+size/2, 0))
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Put error %v, want %v", err, tc.wantErr)
			}
			st := q.Stats()
			if got := st.Evictions[ReasonMinFree] > 0; got != tc.wantEvic {
				t.Fatalf("min_free evictions %d, want some: %v", st.Evictions[ReasonMinFree], tc.wantEvic)
			}
			if err == nil && !slices.Contains(liveIDs(q), id) {
				t.Fatalf("accepted record %d not stored", id)
			}
		})
	}
}

// TestPlanMinFree drives the admission arithmetic with exact disk figures:
// a record needs its page run plus commitPages of copied pages.
func TestPlanMinFree(t *testing.T) {
	const reserve = 1000
	one := sizeOf(rec(0, 1000, 0))
	commit := commitPages * pageSize
	need := footprint(one) + commit
	for _, tc := range []struct {
		name        string
		policy      Policy
		avail       int64
		fileFree    int64
		wantVictims int
		wantFull    bool
	}{
		{"plenty", DropOldest, 1 << 30, 0, 0, false},
		{"fits in free pages", DropOldest, 0, need, 0, false},
		{"exactly the reserve left", DropOldest, reserve + need, 0, 0, false},
		{"one byte short evicts", DropOldest, reserve + need - 1, 0, 1, false},
		{"below reserve recycles one", DropOldest, 10, commit, 1, false},
		{"partial free pages", DropOldest, 10, commit + footprint(one)/2, 1, false},
		{"reject-new refuses", RejectNew, 10, commit, 0, true},
		{"evicting everything is not enough", DropOldest, 10, 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := openT(t, t.TempDir(), Options{MinFreeBytes: reserve, Policy: tc.policy})
			for i := range 3 {
				putT(t, q, rec(i, 1000, 0))
			}
			errs := make([]error, 1)
			q.mu.Lock()
			v := q.planLocked([]*putReq{{size: one}}, tc.avail, tc.fileFree, errs)
			q.mu.Unlock()
			if len(v) != tc.wantVictims || errors.Is(errs[0], ErrFull) != tc.wantFull {
				t.Fatalf("victims %v, err %v; want %d victims, full %v", v, errs[0], tc.wantVictims, tc.wantFull)
			}
			for _, x := range v {
				if x.reason != ReasonMinFree || x.id != 1 {
					t.Fatalf("victim %+v, want id 1 for min_free", x)
				}
			}
		})
	}
}

var errStatfs = errors.New("statfs broken")

func TestMaxAge(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := &fakeClock{t: t0}
	sink := &logSink{}
	opts := Options{MaxAge: 90 * time.Second, Now: clk.Now, Logger: slog.New(sink)}
	q, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		r := rec(i, 10, 0)
		r.Created = t0.Add(time.Duration(i) * time.Minute)
		putT(t, q, r)
	}
	clk.Add(2 * time.Minute) // record 1 is 2m old
	if got := nextIDs(t, q, 1); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("Next = %v, want [2]", got)
	}
	if st := q.Stats(); st.Evictions[ReasonMaxAge] != 1 || st.Frames != 2 || st.OldestAge != time.Minute {
		t.Fatalf("after expiry %+v", st)
	}
	clk.Add(10 * time.Minute) // 2 is in flight and kept, 3 expires
	if got := nextIDs(t, q, 5); len(got) != 0 {
		t.Fatalf("Next = %v, want none", got)
	}
	if got := liveIDs(q); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("stored %v, want [2] (in flight)", got)
	}
	// A Put expires too, and a fresh record is kept.
	putT(t, q, rec(5, 10, 0))
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	// At Open nothing is in flight: 2 expires; 4 is fresh.
	q = openT(t, dir, opts)
	if got := liveIDs(q); !slices.Equal(got, []uint64{4}) {
		t.Fatalf("after reopen stored %v, want [4]", got)
	}
	if st := q.Stats(); st.Evictions[ReasonMaxAge] != 3 {
		t.Fatalf("max_age evictions %d, want 3 (persisted)", st.Evictions[ReasonMaxAge])
	}
	if n := sink.count("spool evicting records"); n != 2 {
		t.Fatalf("burst start logged %d times, want 2", n)
	}
}

func TestEvictionBurstLoggedOnce(t *testing.T) {
	sink := &logSink{}
	one := sizeOf(rec(0, 1000, 0))
	q := openT(t, t.TempDir(), Options{MaxBytes: 3 * one, Logger: slog.New(sink)})
	for i := range 10 {
		putT(t, q, rec(i%10, 1000, 0))
	}
	if n := sink.count("spool evicting records"); n != 1 {
		t.Fatalf("burst start logged %d times, want 1", n)
	}
	if n := sink.count("spool eviction burst ended"); n != 0 {
		t.Fatalf("burst end logged early")
	}
	if err := q.Ack(liveIDs(q)...); err != nil {
		t.Fatal(err)
	}
	putT(t, q, rec(1, 1000, 0))
	if n := sink.count("spool eviction burst ended"); n != 1 {
		t.Fatalf("burst end logged %d times, want 1", n)
	}
	var evicted int64
	sink.mu.Lock()
	for _, r := range sink.msgs {
		if r.Message == "spool eviction burst ended" {
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "evicted" {
					evicted = int64(a.Value.Uint64())
				}
				return true
			})
		}
	}
	sink.mu.Unlock()
	if evicted != 7 || q.Stats().Evictions[ReasonMaxBytes] != 7 {
		t.Fatalf("burst evicted %d, stats %v, want 7", evicted, q.Stats().Evictions)
	}
}
