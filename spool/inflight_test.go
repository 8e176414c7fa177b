package spool

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestAckCountAfterInFlightEviction: a record evicted while in flight (the
// last resort under MaxBytes) and then confirmed by the broker was
// delivered after all: its Ack counts it as delivered and takes its
// eviction back, so it is counted once. One evicted in flight and released
// (never confirmed) stays counted as evicted.
func TestAckCountAfterInFlightEviction(t *testing.T) {
	dir := t.TempDir()
	q := openT(t, dir, Options{MaxBytes: 3 * (1000 + recHeaderLen + entryOverhead + 20)})
	for i := range 3 {
		putT(t, q, rec(i, 1000, 0))
	}
	nextIDs(t, q, 3)            // 1, 2, 3
	putT(t, q, rec(3, 1000, 0)) // 4 evicts 1, in flight
	nextIDs(t, q, 1)            // 4
	putT(t, q, rec(4, 1000, 0)) // 5 evicts 2, in flight
	st := q.Stats()
	if st.Evictions[ReasonMaxBytes] != 2 || st.Frames != 3 || st.InFlight != 2 {
		t.Fatalf("after the evictions: %+v", st)
	}
	q.Release(2)               // its publish failed: it stays evicted
	n, err := q.AckCount(1, 3) // 1 was confirmed after its eviction
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("AckCount settled %d, want 2: the stored one and the one evicted in flight", n)
	}
	if st := q.Stats(); st.Evictions[ReasonMaxBytes] != 1 {
		t.Fatalf("evictions after the confirm of an evicted record: %v, want 1", st.Evictions)
	}
	if n, _ := q.AckCount(1, 2, 3); n != 0 {
		t.Fatalf("a second AckCount settled %d", n)
	}
	q.Close()
	st2, err := Inspect(dir)
	if err != nil || st2.Evictions[ReasonMaxBytes] != 1 {
		t.Fatalf("persisted evictions %v (%v), want 1", st2.Evictions, err)
	}
}

// TestUnsyncedClockRecordsOutliveMaxAge: a frame captured while the clock
// was wrong (here: 1970, a device without a real-time clock) is not expired
// by MaxAge while the clock is unsynchronised, nor at once when it becomes
// synchronised, but MaxAge after that; ordinary records expire as before.
func TestUnsyncedClockRecordsOutliveMaxAge(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC)}
	var synced atomic.Bool
	dir := t.TempDir()
	q := openT(t, dir, Options{MaxAge: time.Hour, Now: clk.Now, ClockSynced: synced.Load})
	boot := rec(1, 100, 0)
	boot.Created, boot.ClockUnsynced = time.Unix(3600, 0), true // 1970
	putT(t, q, boot)
	normal := rec(2, 100, 0)
	putT(t, q, normal)
	clk.Add(2 * time.Hour)
	putT(t, q, rec(3, 100, 0)) // expiry runs: the normal record goes
	if ids := nextIDs(t, q, 10); len(ids) != 2 || ids[0] != 1 || ids[1] != 3 {
		t.Fatalf("after 2 h unsynchronised: %v, want [1 3]", ids)
	}
	q.Release(1, 3)
	synced.Store(true)
	clk.Add(30 * time.Minute)
	putT(t, q, rec(4, 100, 0))
	if ids := nextIDs(t, q, 10); len(ids) != 3 || ids[0] != 1 {
		t.Fatalf("30 min after the clock synchronised: %v, want 1 kept", ids)
	}
	q.Release(1, 3, 4)
	clk.Add(2 * time.Hour)
	putT(t, q, rec(5, 100, 0))
	if ids := nextIDs(t, q, 10); len(ids) != 1 || ids[0] != 5 {
		t.Fatalf("MaxAge after the clock synchronised: %v, want only [5]", ids)
	}
	if rs, _ := q.Next(0); rs != nil {
		t.Fatal("Next(0) returned records")
	}
	if st := q.Stats(); st.Evictions[ReasonMaxAge] != 4 {
		t.Fatalf("%d expired, want 4", st.Evictions[ReasonMaxAge])
	}
}
