package spool

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestCheckRepairsCorruptFile(t *testing.T) {
	dir := t.TempDir()
	orig := fill(t, dir, 10, 20000)
	path := filepath.Join(dir, DBName)
	fi, _ := os.Stat(path)
	truncate(t, path, fi.Size()/2)
	rep, err := Check(dir, false)
	if err != nil || rep.OK || len(rep.Problems) != 1 || rep.Problems[0].Action != ActionRenameAside {
		t.Fatalf("Check = %+v, %v", rep, err)
	}
	if _, err := Inspect(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Inspect of corrupt spool: %v", err)
	}
	rep, err = Check(dir, true)
	if err != nil || !rep.Repaired || rep.RenamedTo == "" {
		t.Fatalf("Check repair = %+v, %v", rep, err)
	}
	if _, err := os.Stat(rep.RenamedTo); err != nil {
		t.Fatalf("renamed file: %v", err)
	}
	st, err := Inspect(dir)
	if err != nil || st.CorruptRenames != 1 || st.Frames != rep.Salvaged {
		t.Fatalf("Inspect after repair = %+v, %v (salvaged %d)", st, err, rep.Salvaged)
	}
	q := openT(t, dir, Options{})
	if got := drainAll(t, q, orig); len(got) != rep.Salvaged {
		t.Fatalf("drained %d, salvaged %d", len(got), rep.Salvaged)
	}
}

// TestCompactionWaitsForInFlight: a spool mostly acked compacts only once
// no record is in flight, so a running drain is not stalled by the copy.
func TestCompactionWaitsForInFlight(t *testing.T) {
	q := openT(t, t.TempDir(), Options{CompactFreeBytes: 1 << 20})
	for i := range 60 {
		putT(t, q, rec(i, 100_000, 0))
	}
	before := q.Stats().FileBytes
	inflight := nextIDs(t, q, 3)
	if err := q.Ack(idRange(4, 58)...); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Compactions != 0 {
		t.Fatalf("compacted with %d records in flight", st.InFlight)
	}
	if err := q.Ack(inflight...); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Compactions != 1 || st.FileBytes >= before/2 {
		t.Fatalf("compactions %d, file %d -> %d", st.Compactions, before, st.FileBytes)
	}
}

// TestCompactionKeepsRecordsAndInFlight: a file far above MaxBytes is
// compacted even with records in flight, and keeps them.
func TestCompactionKeepsRecordsAndInFlight(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(dir, Options{CompactFreeBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	var orig []*Record
	for i := range 60 {
		r := rec(i, 100_000, 0)
		putT(t, q, r)
		orig = append(orig, r)
	}
	before := q.Stats().FileBytes
	if err := q.Ack(idRange(4, 58)...); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	// 500 KB of records left in a 6 MB file, now bounded at 1 MiB.
	q = openT(t, dir, Options{CompactFreeBytes: 1 << 20, MaxBytes: 1 << 20})
	if got := nextIDs(t, q, 3); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("Next %v", got)
	}
	if err := q.Ack(59); err != nil {
		t.Fatal(err)
	}
	st := q.Stats()
	if st.Compactions != 1 || st.FileBytes >= before/2 {
		t.Fatalf("compactions %d, file %d -> %d", st.Compactions, before, st.FileBytes)
	}
	if st.InFlight != 3 || st.Frames != 4 {
		t.Fatalf("after compaction %+v", st)
	}
	rs, err := q.Next(10)
	if err != nil {
		t.Fatal(err)
	}
	if got := recordIDs(rs); !slices.Equal(got, []uint64{60}) {
		t.Fatalf("Next after compaction %v", got)
	}
	if !sameRecord(&rs[0], orig[59]) {
		t.Fatal("record 60 changed by compaction")
	}
	if id := putT(t, q, rec(1, 10, 0)); id != 61 {
		t.Fatalf("id after compaction %d", id)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{DBName + compactSuffix, DBName + oldSuffix} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("compaction left %s: %v", f, err)
		}
	}
}

// idRange returns the ids from and to, both included.
func idRange(from, to uint64) []uint64 {
	var ids []uint64
	for id := from; id <= to; id++ {
		ids = append(ids, id)
	}
	return ids
}

func TestStaleCompactionFileRemoved(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 2, 100)
	tmp := filepath.Join(dir, DBName+compactSuffix)
	writeFile(t, tmp, []byte("half a copy"))
	old := filepath.Join(dir, DBName+oldSuffix)
	writeFile(t, old, []byte("a replaced file"))
	q := openT(t, dir, Options{})
	if st := q.Stats(); st.Frames != 2 {
		t.Fatalf("frames %d", st.Frames)
	}
	for _, f := range []string{tmp, old} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stale compaction file kept: %v", err)
		}
	}
}

// TestCloseWhilePutting closes the spool under concurrent Puts: every Put
// that returned nil is present after reopening, the others report ErrClosed.
func TestCloseWhilePutting(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var ok []uint64
	var wg sync.WaitGroup
	for p := range 6 {
		wg.Go(func() {
			for i := 0; ; i++ {
				id, err := q.Put(context.Background(), rec(p*100+i%100, 1000, 0))
				if err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Errorf("Put: %v", err)
					}
					return
				}
				mu.Lock()
				ok = append(ok, id)
				mu.Unlock()
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	q = openT(t, dir, Options{})
	got := liveIDs(q)
	for _, id := range ok {
		if !slices.Contains(got, id) {
			t.Fatalf("acknowledged Put %d lost by Close", id)
		}
	}
	if len(got) != len(ok) {
		t.Fatalf("%d stored, %d acknowledged", len(got), len(ok))
	}
}

// TestConcurrentUse hammers every method at once (run with -race).
func TestConcurrentUse(t *testing.T) {
	one := sizeOf(rec(0, 2000, 0))
	q := openT(t, t.TempDir(), Options{MaxBytes: 6 * one, MaxAge: time.Hour, Order: NewestFirst})
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	var puts, acks atomic.Int64
	var wg sync.WaitGroup
	for p := range 3 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				if _, err := q.Put(ctx, rec(i%10, 2000, (p+i)%3)); err != nil && !errors.Is(err, ErrFull) && !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Put: %v", err)
					return
				}
				puts.Add(1)
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(1, 1))
			for ctx.Err() == nil {
				if err := q.Wait(ctx); err != nil {
					return
				}
				rs, err := q.Next(1 + rng.IntN(8))
				if err != nil {
					t.Errorf("Next: %v", err)
					return
				}
				ids := recordIDs(rs)
				time.Sleep(3 * time.Millisecond) // a slow uplink: the spool fills up
				if rng.IntN(4) == 0 {
					q.Release(ids...)
					continue
				}
				if err := q.Ack(ids...); err != nil {
					t.Errorf("Ack: %v", err)
					return
				}
				acks.Add(int64(len(ids)))
			}
		})
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			st := q.Stats()
			if st.Bytes > 6*one {
				t.Errorf("Bytes %d over MaxBytes", st.Bytes)
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	wg.Wait()
	st := q.Stats()
	t.Logf("%d puts, %d acks, stats %+v", puts.Load(), acks.Load(), st)
	if st.Evictions[ReasonMaxBytes] == 0 {
		t.Errorf("no eviction exercised")
	}
}

func TestUnknownFormatVersionRenamedAside(t *testing.T) {
	dir := t.TempDir()
	orig := fill(t, dir, 3, 100)
	mutate(t, dir, func(tx *bolt.Tx) error { return tx.Bucket(bktState).Put(keyFormat, []byte{9}) })
	sink := &logSink{}
	q := openT(t, dir, Options{Logger: slog.New(sink)})
	st := q.Stats()
	if st.CorruptRenames != 1 || sink.count("spool database corrupt: renamed aside and started fresh") != 1 {
		t.Fatalf("stats %+v", st)
	}
	if got := drainAll(t, q, orig); len(got) != 3 {
		t.Fatalf("salvaged %v, want all 3", got)
	}
}

func TestOpenErrorsThatAreNotCorruption(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plain")
	writeFile(t, file, []byte("x"))
	if _, err := Open(filepath.Join(file, "spool"), Options{}); err == nil || errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open below a regular file: %v", err)
	}
	// A directory where the file should be is junk bbolt calls invalid: it
	// is renamed aside like a damaged file, and the spool starts fresh.
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, DBName), 0o700); err != nil {
		t.Fatal(err)
	}
	q := openT(t, dir, Options{})
	if st := q.Stats(); st.CorruptRenames != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestEvictedBetweenPickAndReadIsNotQuarantined covers the race in which
// eviction removes a record after Next picked it and before Next read it.
func TestEvictedBetweenPickAndReadIsNotQuarantined(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	for i := range 3 {
		putT(t, q, rec(i, 100, 0))
	}
	ids := q.pick(3)
	q.wmu.Lock()
	err := q.evictLocked([]victim{{id: 2, reason: ReasonMaxBytes}})
	q.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	recs, bad, err := q.read(ids)
	if err != nil || len(recs) != 2 || len(bad) != 1 || bad[0].id != 2 {
		t.Fatalf("read = %d records, bad %+v, %v", len(recs), bad, err)
	}
	if err := q.quarantine(bad); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Quarantined != 0 || st.QuarantinedTotal != 0 || st.Frames != 2 {
		t.Fatalf("evicted record quarantined: %+v", st)
	}
}

// TestInterruptedRecovery covers the crash states of replacing a corrupt
// file (see openAndLoad).
func TestInterruptedRecovery(t *testing.T) {
	t.Run("replacement built, not installed", func(t *testing.T) {
		src := t.TempDir()
		orig := fill(t, src, 3, 100)
		dir := t.TempDir()
		if err := os.Rename(filepath.Join(src, DBName), filepath.Join(dir, DBName+freshSuffix)); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, DBName+corruptSuffix+"20260101T000000Z"), []byte("junk"))
		q := openT(t, dir, Options{})
		if got := drainAll(t, q, orig); len(got) != 3 {
			t.Fatalf("records %v", got)
		}
		if st := q.Stats(); st.CorruptRenames != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("corrupt file and a partial replacement", func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, DBName), bytes.Repeat([]byte("junk"), 4096))
		writeFile(t, filepath.Join(dir, DBName+freshSuffix), []byte("half"))
		q := openT(t, dir, Options{})
		putT(t, q, rec(1, 10, 0))
		if st := q.Stats(); st.CorruptRenames != 1 || st.Frames != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("sound file and a stale replacement", func(t *testing.T) {
		dir := t.TempDir()
		fill(t, dir, 2, 10)
		writeFile(t, filepath.Join(dir, DBName+freshSuffix), []byte("stale"))
		q := openT(t, dir, Options{})
		if st := q.Stats(); st.Frames != 2 || st.CorruptRenames != 0 {
			t.Fatalf("stats %+v", st)
		}
		if _, err := os.Stat(filepath.Join(dir, DBName+freshSuffix)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stale replacement kept: %v", err)
		}
	})
}
