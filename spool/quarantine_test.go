package spool

import (
	"errors"
	"testing"
)

// TestQuarantineByCode: records set aside with Quarantine, in flight or
// not, leave the queue, keep their bytes in the quarantine, and are counted
// by reason code, persistently.
func TestQuarantineByCode(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		putT(t, q, rec(i, 1000, 0))
	}
	inflight := nextIDs(t, q, 1) // id 1 in flight
	if err := q.Quarantine("refused_by_broker", "nacked 20 times", inflight[0], 2); err != nil {
		t.Fatal(err)
	}
	if err := q.Quarantine("undecodable_meta", "bad json", 3, 99); err != nil { // 99 is unknown
		t.Fatal(err)
	}
	st := q.Stats()
	if st.Frames != 1 || st.InFlight != 0 || st.Quarantined != 3 || st.QuarantinedTotal != 3 ||
		st.QuarantinedBy["refused_by_broker"] != 2 || st.QuarantinedBy["undecodable_meta"] != 1 {
		t.Fatalf("stats after quarantine: %+v", st)
	}
	if ids := nextIDs(t, q, 10); len(ids) != 1 || ids[0] != 4 {
		t.Fatalf("Next hands out %v, want only 4", ids)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Check(dir, false)
	if err != nil || !rep.OK || rep.Quarantined != 3 {
		t.Fatalf("check: %+v %v", rep, err)
	}
	for _, e := range rep.Quarantine {
		if len(e.Reason) == 0 || e.RawBytes < 1000 {
			t.Errorf("quarantine entry %+v lacks its reason or bytes", e)
		}
	}
	q = openT(t, dir, Options{})
	if st := q.Stats(); st.QuarantinedBy["refused_by_broker"] != 2 || st.QuarantinedBy["undecodable_meta"] != 1 {
		t.Fatalf("counts after reopen: %+v", st.QuarantinedBy)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := q.Quarantine("x", "y", 4); !errors.Is(err, ErrClosed) {
		t.Fatalf("quarantine on a closed spool: %v", err)
	}
}
