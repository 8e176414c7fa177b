package spool

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestCompactionNeverEatsTheReserve runs on a real 20 MiB file system
// holding a 12 MiB spool file: the operator lowers max_bytes to 8 MiB, so
// the file holds 8 MiB of live records, and the file system is between 1×
// and 2× the live data: a copy of the live data does not fit above the
// reserve. The compaction the file now asks for is postponed (and backed
// off) instead of writing into the reserve until ENOSPC; once enough is
// acknowledged it runs.
func TestCompactionNeverEatsTheReserve(t *testing.T) {
	const reserve = 3 << 20
	dir := mountTmpfs(t, "20m")
	clk := &fakeClock{t: time.Now()}
	opts := Options{MaxBytes: 16 << 20, MinFreeBytes: reserve, CompactFreeBytes: 256 << 10, Now: clk.Now}
	q, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 120 {
		putT(t, q, rec(i, 100_000, 0))
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	opts.MaxBytes = 8 << 20
	if q, err = Open(dir, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	checkReserve := func(when string) {
		t.Helper()
		avail, err := statfsFree(dir)
		if err != nil {
			t.Fatal(err)
		}
		if avail < reserve {
			t.Fatalf("%s: %d bytes free, below the %d-byte reserve", when, avail, reserve)
		}
		if _, err := os.Stat(filepath.Join(dir, DBName+compactSuffix)); err == nil {
			t.Fatalf("%s: a compaction copy is left on disk", when)
		}
	}
	putT(t, q, rec(120, 100_000, 0)) // evicts down to 8 MiB
	checkReserve("filled")
	ack := func(n int) {
		t.Helper()
		if err := q.Ack(nextIDs(t, q, n)...); err != nil {
			t.Fatalf("ack: %v", err)
		}
	}
	ack(5)
	free, size := q.fileFacts()
	avail, _ := statfsFree(dir)
	t.Logf("file %d bytes, %d free in it, %d available on disk", size, free, avail)
	st := q.Stats()
	if st.CompactionsPostponed != 1 || st.Compactions != 0 {
		t.Fatalf("after the first ack: %d postponed, %d compactions; want 1 and 0", st.CompactionsPostponed, st.Compactions)
	}
	checkReserve("postponed")
	ack(1) // within the back-off: not even tried
	if st := q.Stats(); st.CompactionsPostponed != 1 {
		t.Fatalf("tried again within the back-off: %d postponed", st.CompactionsPostponed)
	}
	for i := range 10 { // the spool keeps working meanwhile
		putT(t, q, rec(1000+i, 100_000, 0))
	}
	checkReserve("puts while postponed")
	clk.Add(2 * time.Minute)
	ack(70) // most of it delivered: the copy fits now
	st = q.Stats()
	if st.Compactions != 1 {
		t.Fatalf("after acknowledging most records: %d compactions (%d postponed), want 1", st.Compactions, st.CompactionsPostponed)
	}
	checkReserve("compacted")
	if got := nextIDs(t, q, 1000); len(got) != st.Frames {
		t.Fatalf("%d records read after compaction, stats say %d", len(got), st.Frames)
	}
}

// TestReopenFailureBreaksTheSpool: when the file cannot be reopened after a
// compaction, every later operation fails with ErrBroken instead of the
// Queue carrying on as if closed (a drain that took ErrClosed for a
// shutdown stopped quietly while capture went on).
func TestReopenFailureBreaksTheSpool(t *testing.T) {
	q, err := Open(t.TempDir(), Options{CompactFreeBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i := range 20 {
		putT(t, q, rec(i, 10_000, 0))
	}
	q.openFile = func(string, bool, time.Duration) (*bolt.DB, error) { return nil, errors.New("disk gone") }
	if err := q.Ack(nextIDs(t, q, 19)...); err != nil {
		t.Fatalf("the ack itself committed: %v", err)
	}
	if _, err := q.Next(1); !errors.Is(err, ErrBroken) || errors.Is(err, ErrClosed) {
		t.Fatalf("Next on a broken spool: %v, want ErrBroken", err)
	}
	if err := q.Ack(20); !errors.Is(err, ErrBroken) {
		t.Fatalf("Ack on a broken spool: %v, want ErrBroken", err)
	}
}
