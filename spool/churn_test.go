package spool

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
)

// TestDiskBoundedAfterChurn runs thousands of Puts of random sizes and
// priorities against a small MaxBytes with a drain that acknowledges in
// random batches and sometimes stalls, and checks the disk use of the file
// after every operation against the documented bound; after a full drain
// the file must have been compacted back to near nothing.
func TestDiskBoundedAfterChurn(t *testing.T) {
	const (
		maxBytes    = 8 << 20
		compactFree = 2 << 20
		maxRecord   = 300 << 10
		slack       = 1 << 20 // bbolt meta, branch and freelist pages
	)
	dir := t.TempDir()
	q := openT(t, dir, Options{MaxBytes: maxBytes, CompactFreeBytes: compactFree})
	rng := rand.New(rand.NewPCG(1, 2))
	bound := int64(maxBytes + compactFree + 2*maxRecord + slack)
	var peak int64
	stalled := false
	for i := range 2000 {
		r := rec(i, 10<<10+rng.IntN(maxRecord-10<<10), rng.IntN(3))
		if _, err := q.Put(context.Background(), r); err != nil && !errors.Is(err, ErrFull) {
			t.Fatal(err)
		}
		if i%200 == 0 {
			stalled = rng.IntN(2) == 0 // the uplink is down for a while
		}
		if !stalled && rng.IntN(3) == 0 {
			rs, err := q.Next(1 + rng.IntN(40))
			if err != nil {
				t.Fatal(err)
			}
			if err := q.Ack(recordIDs(rs)...); err != nil {
				t.Fatal(err)
			}
		}
		st := q.Stats()
		if st.Bytes > maxBytes {
			t.Fatalf("op %d: accounted bytes %d over MaxBytes", i, st.Bytes)
		}
		peak = max(peak, st.FileBytes)
		if st.FileBytes > bound {
			t.Fatalf("op %d: file uses %d bytes on disk, bound %d (%+v)", i, st.FileBytes, bound, st)
		}
	}
	for {
		rs, err := q.Next(64)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) == 0 {
			break
		}
		if err := q.Ack(recordIDs(rs)...); err != nil {
			t.Fatal(err)
		}
	}
	st := q.Stats()
	t.Logf("peak file %d bytes (bound %d), after drain %d bytes, %d compactions, evictions %v, rejected %d",
		peak, bound, st.FileBytes, st.Compactions, st.Evictions, st.Rejected)
	if st.Compactions == 0 || st.FileBytes > compactFree+slack {
		t.Fatalf("after full drain file uses %d bytes, %d compactions", st.FileBytes, st.Compactions)
	}
}
