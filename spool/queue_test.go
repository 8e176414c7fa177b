package spool

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestPutNextAckRoundTrip(t *testing.T) {
	dir := t.TempDir()
	q := openT(t, dir, Options{})
	var want []*Record
	for i := range 5 {
		r := rec(i, 1000+i, i%2)
		id := putT(t, q, r)
		if id != uint64(i+1) || r.ID != id {
			t.Fatalf("Put %d: id %d, r.ID %d", i, id, r.ID)
		}
		if r.Created.IsZero() {
			t.Fatalf("Put did not set Created")
		}
		want = append(want, r)
	}
	got, err := q.Next(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 {
		t.Fatalf("Next: %d records, want 5", len(got))
	}
	for i := range got {
		if got[i].ID != want[i].ID || !sameRecord(&got[i], want[i]) {
			t.Fatalf("record %d differs: got %+v", i, got[i].ID)
		}
	}
	st := q.Stats()
	if st.Frames != 5 || st.InFlight != 5 || st.LastID != 5 || st.Bytes <= 5*1000 {
		t.Fatalf("Stats = %+v", st)
	}
	if err := q.Ack(1, 2, 99); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Frames != 3 || st.InFlight != 3 {
		t.Fatalf("after Ack: %+v", st)
	}
	if err := q.Ack(); err != nil {
		t.Fatal(err)
	}
}

func TestEmptyRecordFieldsRoundTrip(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	putT(t, q, &Record{Priority: -3})
	rs, err := q.Next(1)
	if err != nil || len(rs) != 1 {
		t.Fatalf("Next = %v, %v", rs, err)
	}
	if rs[0].Image != nil || rs[0].Mask != nil || rs[0].Meta != nil || rs[0].Priority != -3 {
		t.Fatalf("got %+v", rs[0])
	}
}

func TestOrder(t *testing.T) {
	for _, tc := range []struct {
		order Order
		want  []uint64
	}{
		{OldestFirst, []uint64{1, 2, 3, 4}},
		{NewestFirst, []uint64{4, 3, 2, 1}},
	} {
		t.Run(tc.order.String(), func(t *testing.T) {
			q := openT(t, t.TempDir(), Options{Order: tc.order})
			for i := range 4 {
				putT(t, q, rec(i, 10, 0))
			}
			got := append(nextIDs(t, q, 2), nextIDs(t, q, 5)...)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Next order %v, want %v", got, tc.want)
			}
		})
	}
}

// TestOrderByPriority: the highest priority first, the oldest first within
// a priority; in-flight records are skipped and released ones come back in
// their place; the order holds after a reopen.
func TestOrderByPriority(t *testing.T) {
	dir := t.TempDir()
	q := openT(t, dir, Options{Order: ByPriority})
	for i, p := range []int{0, 2, 1, 2, 0, 4, 1} { // ids 1..7
		putT(t, q, rec(i, 10, p))
	}
	first := nextIDs(t, q, 3)
	if want := []uint64{6, 2, 4}; !slices.Equal(first, want) {
		t.Fatalf("first Next %v, want %v", first, want)
	}
	q.Release(2)
	if got, want := nextIDs(t, q, 10), []uint64{2, 3, 7, 1, 5}; !slices.Equal(got, want) {
		t.Fatalf("after releasing 2: %v, want %v", got, want)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = openT(t, dir, Options{Order: ByPriority})
	if got, want := nextIDs(t, q, 10), []uint64{6, 2, 4, 3, 7, 1, 5}; !slices.Equal(got, want) {
		t.Fatalf("after reopen: %v, want %v", got, want)
	}
}

func TestInFlightReleaseAndReopen(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		putT(t, q, rec(i, 10, 0))
	}
	if got := nextIDs(t, q, 2); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("first batch %v", got)
	}
	if got := nextIDs(t, q, 10); !slices.Equal(got, []uint64{3, 4}) {
		t.Fatalf("second batch %v", got)
	}
	if got := nextIDs(t, q, 10); len(got) != 0 {
		t.Fatalf("all in flight, got %v", got)
	}
	q.Release(2)
	if got := nextIDs(t, q, 10); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("after Release %v", got)
	}
	if err := q.Ack(1); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Next(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	if _, err := q.Put(context.Background(), rec(1, 1, 0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close: %v", err)
	}
	if err := q.Ack(2); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ack after Close: %v", err)
	}
	// In-flight marks are memory only: everything unacknowledged comes back.
	q = openT(t, dir, Options{})
	if got := nextIDs(t, q, 10); !slices.Equal(got, []uint64{2, 3, 4}) {
		t.Fatalf("after reopen %v", got)
	}
}

func TestIDsNeverReused(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		putT(t, q, rec(i, 10, 0))
	}
	if err := q.Ack(1, 2, 3); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = openT(t, dir, Options{})
	if id := putT(t, q, rec(9, 10, 0)); id != 4 {
		t.Fatalf("id after reopen of emptied spool = %d, want 4", id)
	}
}

func TestPutContextCancelled(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := q.Put(ctx, rec(1, 1, 0)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with cancelled ctx: %v", err)
	}
	if _, err := q.Put(context.Background(), nil); err == nil {
		t.Fatal("Put(nil) succeeded")
	}
	if st := q.Stats(); st.Frames != 0 {
		t.Fatalf("frames %d", st.Frames)
	}
}

func TestWait(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := q.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on empty spool: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- q.Wait(context.Background()) }()
	time.Sleep(10 * time.Millisecond)
	putT(t, q, rec(1, 10, 0))
	if err := <-done; err != nil {
		t.Fatalf("Wait after Put: %v", err)
	}
	// All in flight: Wait blocks until Release.
	nextIDs(t, q, 1)
	go func() { done <- q.Wait(context.Background()) }()
	time.Sleep(10 * time.Millisecond)
	q.Release(1)
	if err := <-done; err != nil {
		t.Fatalf("Wait after Release: %v", err)
	}
	nextIDs(t, q, 1)
	go func() { done <- q.Wait(context.Background()) }()
	time.Sleep(10 * time.Millisecond)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait after Close: %v", err)
	}
}

func TestGroupCommit(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	const producers, each = 8, 20
	var wg sync.WaitGroup
	ids := make(chan uint64, producers*each)
	for p := range producers {
		wg.Go(func() {
			for i := range each {
				id, err := q.Put(context.Background(), rec(p*1000+i, 2000, 0))
				if err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				ids <- id
			}
		})
	}
	wg.Wait()
	close(ids)
	seen := map[uint64]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("duplicate id %d", id)
		}
		seen[id] = true
	}
	st := q.Stats()
	if st.Frames != producers*each || len(seen) != producers*each {
		t.Fatalf("frames %d, ids %d", st.Frames, len(seen))
	}
	if st.PutCommits >= producers*each {
		t.Fatalf("no group commit: %d commits for %d puts", st.PutCommits, producers*each)
	}
	t.Logf("%d puts in %d commits", producers*each, st.PutCommits)
}

func TestPolicyText(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Policy
		wantErr bool
	}{
		{"", DropOldest, false}, {"drop-oldest", DropOldest, false}, {"reject-new", RejectNew, false}, {"nope", 0, true},
	} {
		var p Policy
		err := p.UnmarshalText([]byte(tc.in))
		if (err != nil) != tc.wantErr || (err == nil && p != tc.want) {
			t.Errorf("Policy(%q) = %v, %v", tc.in, p, err)
		}
	}
	for _, tc := range []struct {
		in      string
		want    Order
		wantErr bool
	}{
		{"", OldestFirst, false}, {"oldest-first", OldestFirst, false}, {"newest-first", NewestFirst, false}, {"x", 0, true},
	} {
		var o Order
		err := o.UnmarshalText([]byte(tc.in))
		if (err != nil) != tc.wantErr || (err == nil && o != tc.want) {
			t.Errorf("Order(%q) = %v, %v", tc.in, o, err)
		}
	}
	if b, _ := RejectNew.MarshalText(); string(b) != "reject-new" {
		t.Errorf("MarshalText = %s", b)
	}
	if b, _ := NewestFirst.MarshalText(); string(b) != "newest-first" {
		t.Errorf("MarshalText = %s", b)
	}
}

func TestInUse(t *testing.T) {
	dir := t.TempDir()
	q := openT(t, dir, Options{})
	putT(t, q, rec(1, 10, 0))
	start := time.Now()
	if _, err := Open(dir, Options{OpenTimeout: 50 * time.Millisecond}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("in-use detection took %v", time.Since(start))
	}
	if _, err := Inspect(dir); !errors.Is(err, ErrInUse) {
		t.Fatalf("Inspect while open: %v", err)
	}
	if _, err := Check(dir, true); !errors.Is(err, ErrInUse) {
		t.Fatalf("Check while open: %v", err)
	}
}
