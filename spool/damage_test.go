package spool

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// fill creates a closed spool in dir with n records and returns them.
func fill(t *testing.T, dir string, n, size int) []*Record {
	t.Helper()
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var rs []*Record
	for i := range n {
		r := rec(i, size, i%3)
		putT(t, q, r)
		rs = append(rs, r)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	return rs
}

// mutate edits the closed spool file with raw bbolt.
func mutate(t *testing.T, dir string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, DBName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func flipValueByte(bucket []byte, id uint64, off int) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if sb := b.Bucket(idKey(id)); sb != nil {
			b = sb // a record's sub-bucket
			v := slices.Clone(b.Get(valKey))
			v[off] ^= 0x40
			return b.Put(valKey, v)
		}
		v := slices.Clone(b.Get(idKey(id)))
		v[off] ^= 0x40
		return b.Put(idKey(id), v)
	}
}

// drainAll reads every available record and checks each against the
// originals by content.
func drainAll(t *testing.T, q *Queue, orig []*Record) []uint64 {
	t.Helper()
	rs, err := q.Next(1 << 20)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	for _, r := range rs {
		if r.ID == 0 || int(r.ID) > len(orig) || !sameRecord(&r, orig[r.ID-1]) {
			t.Fatalf("record %d differs from what was put", r.ID)
		}
	}
	return recordIDs(rs)
}

func TestQuarantineOnNext(t *testing.T) {
	for _, tc := range []struct {
		name   string
		off    int
		reason string
		atOpen bool
	}{
		{"payload byte", recHeaderLen + 10, "payload checksum mismatch", false},
		{"header byte", 20, "header checksum mismatch", true},
		{"magic", 0, "bad magic 0x6575350", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			orig := fill(t, dir, 3, 5000)
			mutate(t, dir, flipValueByte(bktData, 2, tc.off))
			rep, err := Check(dir, false)
			if err != nil || rep.OK || len(rep.Problems) != 1 || rep.Problems[0].ID != 2 || rep.Problems[0].Action != ActionQuarantine {
				t.Fatalf("Check = %+v, %v", rep, err)
			}
			q := openT(t, dir, Options{})
			if got := drainAll(t, q, orig); !slices.Equal(got, []uint64{1, 3}) {
				t.Fatalf("Next = %v, want [1 3]", got)
			}
			st := q.Stats()
			if st.Quarantined != 1 || st.QuarantinedTotal != 1 || st.Frames != 2 {
				t.Fatalf("Stats = %+v", st)
			}
			if err := q.Ack(1, 3); err != nil {
				t.Fatal(err)
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			rep, err = Check(dir, false)
			if err != nil || !rep.OK || len(rep.Quarantine) != 1 || rep.Quarantine[0].ID != 2 || rep.Quarantine[0].Reason != tc.reason {
				t.Fatalf("Check after quarantine = %+v, %v", rep, err)
			}
			if rep.Quarantine[0].RawBytes != len(recHeaderBytes(orig[1])) {
				t.Fatalf("raw bytes kept %d, want %d", rep.Quarantine[0].RawBytes, len(recHeaderBytes(orig[1])))
			}
			// Quarantined records are evicted first when space is needed.
			st2, err := Inspect(dir)
			if err != nil {
				t.Fatal(err)
			}
			q = openT(t, dir, Options{MaxBytes: st2.Bytes + sizeOf(rec(7, 100, 0))/2})
			putT(t, q, rec(7, 100, 0))
			if st := q.Stats(); st.Quarantined != 0 || st.Frames != 1 || st.Evictions[ReasonMaxBytes] != 1 {
				t.Fatalf("after eviction of quarantine %+v", st)
			}
		})
	}
}

func recHeaderBytes(r *Record) []byte {
	return encodeRecord(r, r.Created).buf
}

func TestOpenReconcilesIndex(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mut      func(tx *bolt.Tx) error
		action   string
		want     []uint64
		wantQuar int
	}{
		{"index entry missing", func(tx *bolt.Tx) error { return tx.Bucket(bktIdx).Delete(idKey(2)) },
			ActionRebuildIndex, []uint64{1, 2, 3}, 0},
		{"index entry damaged", flipValueByte(bktIdx, 2, 9), ActionRebuildIndex, []uint64{1, 2, 3}, 0},
		{"index length wrong", func(tx *bolt.Tx) error {
			return tx.Bucket(bktIdx).Put(idKey(2), encodeIdx(idxEntry{dataLen: 7}))
		}, ActionRebuildIndex, []uint64{1, 2, 3}, 0},
		{"data missing", func(tx *bolt.Tx) error { return tx.Bucket(bktData).DeleteBucket(idKey(2)) },
			ActionQuarantine, []uint64{1, 3}, 1},
		{"data header damaged and index missing", func(tx *bolt.Tx) error {
			if err := flipValueByte(bktData, 2, 30)(tx); err != nil {
				return err
			}
			return tx.Bucket(bktIdx).Delete(idKey(2))
		}, ActionQuarantine, []uint64{1, 3}, 1},
		{"data header damaged and index damaged", func(tx *bolt.Tx) error {
			if err := flipValueByte(bktData, 2, 30)(tx); err != nil {
				return err
			}
			return flipValueByte(bktIdx, 2, 9)(tx)
		}, ActionQuarantine, []uint64{1, 3}, 1},
		{"stray key", func(tx *bolt.Tx) error { return tx.Bucket(bktData).Put([]byte("junk"), []byte("x")) },
			ActionDropKey, []uint64{1, 2, 3}, 0},
		{"plain value instead of sub-bucket", func(tx *bolt.Tx) error {
			d := tx.Bucket(bktData)
			v := slices.Clone(d.Bucket(idKey(2)).Get(valKey))
			if err := d.DeleteBucket(idKey(2)); err != nil {
				return err
			}
			v[recHeaderLen] ^= 1
			return d.Put(idKey(2), v)
		}, ActionQuarantine, []uint64{1, 3}, 1},
		{"stray index key", func(tx *bolt.Tx) error { return tx.Bucket(bktIdx).Put([]byte("zz"), []byte("x")) },
			ActionDropKey, []uint64{1, 2, 3}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			orig := fill(t, dir, 3, 3000)
			mutate(t, dir, tc.mut)
			rep, err := Check(dir, false)
			if err != nil || rep.OK || len(rep.Problems) != 1 || rep.Problems[0].Action != tc.action {
				t.Fatalf("Check = %+v, %v", rep, err)
			}
			rep, err = Check(dir, true)
			if err != nil || !rep.Repaired {
				t.Fatalf("Check repair = %+v, %v", rep, err)
			}
			if rep, err := Check(dir, false); err != nil || !rep.OK {
				t.Fatalf("Check after repair = %+v, %v", rep, err)
			}
			q := openT(t, dir, Options{})
			if got := drainAll(t, q, orig); !slices.Equal(got, tc.want) {
				t.Fatalf("Next = %v, want %v", got, tc.want)
			}
			if st := q.Stats(); st.Quarantined != tc.wantQuar {
				t.Fatalf("quarantined %d, want %d", st.Quarantined, tc.wantQuar)
			}
			if id := putT(t, q, rec(4, 10, 0)); id != 4 {
				t.Fatalf("next id %d, want 4", id)
			}
		})
	}
}

// TestCorruptFile damages a closed spool file and checks that Open renames
// it aside, starts fresh (salvaging sound records), reports it, and that
// the API keeps working.
func TestCorruptFile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"garbage", func(t *testing.T, path string) {
			writeFile(t, path, bytes.Repeat([]byte("not a bbolt file "), 4096))
		}},
		{"truncated to 1000 bytes", func(t *testing.T, path string) { truncate(t, path, 1000) }},
		{"truncated to half", func(t *testing.T, path string) {
			fi, _ := os.Stat(path)
			truncate(t, path, fi.Size()/2)
		}},
		{"both meta pages flipped", func(t *testing.T, path string) {
			flipAt(t, path, 16+4096/2)
			flipAt(t, path, 4096+16+4096/2)
			flipAt(t, path, 40)
			flipAt(t, path, 4096+40)
		}},
		{"page headers flipped", func(t *testing.T, path string) {
			fi, _ := os.Stat(path)
			for p := int64(2); p*4096 < fi.Size(); p++ {
				flipAt(t, path, p*4096+8) // page flags
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			orig := fill(t, dir, 20, 20000)
			path := filepath.Join(dir, DBName)
			tc.damage(t, path)
			rep, err := Check(dir, false)
			if err != nil || rep.OK {
				t.Fatalf("Check of damaged file = %+v, %v", rep, err)
			}
			q := openT(t, dir, Options{})
			st := q.Stats()
			if st.CorruptRenames != 1 {
				t.Fatalf("CorruptRenames = %d", st.CorruptRenames)
			}
			m, _ := filepath.Glob(path + ".corrupt-*")
			if len(m) != 1 {
				t.Fatalf("renamed-aside files %v", m)
			}
			got := drainAll(t, q, orig) // salvaged records are intact
			t.Logf("salvaged %d of %d records", len(got), len(orig))
			id := putT(t, q, rec(3, 10, 0))
			if id <= uint64(len(orig)) {
				t.Fatalf("new id %d after corruption may repeat an id of the lost file", id)
			}
			if err := q.Ack(got...); err != nil {
				t.Fatal(err)
			}
			if rs := nextIDs(t, q, 5); !slices.Equal(rs, []uint64{id}) {
				t.Fatalf("Next after recovery %v, want [%d]", rs, id)
			}
		})
	}
}

// TestRandomByteFlips flips random bytes of a closed spool many times: Open
// must never fail or crash, and every record it hands out must be intact.
func TestRandomByteFlips(t *testing.T) {
	for seed := range 30 {
		dir := t.TempDir()
		orig := fill(t, dir, 15, 9000)
		path := filepath.Join(dir, DBName)
		fi, _ := os.Stat(path)
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		for range 1 + seed%8 {
			flipAt(t, path, rng.Int64N(fi.Size()))
		}
		q, err := Open(dir, Options{})
		if err != nil {
			t.Fatalf("seed %d: Open: %v", seed, err)
		}
		drainAll(t, q, orig)
		if _, err := q.Put(t.Context(), rec(1, 10, 0)); err != nil {
			t.Fatalf("seed %d: Put after damage: %v", seed, err)
		}
		if err := q.Close(); err != nil {
			t.Fatalf("seed %d: Close: %v", seed, err)
		}
		if rep, err := Check(dir, false); err != nil || !rep.OK {
			t.Fatalf("seed %d: Check after recovery: %+v %v", seed, rep, err)
		}
	}
}

func TestInspectAndCheckJSON(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 4, 1000)
	st, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Frames != 4 || st.LastID != 4 || st.Bytes == 0 || st.FileBytes == 0 {
		t.Fatalf("Inspect = %+v", st)
	}
	b, err := json.Marshal(st)
	if err != nil || !bytes.Contains(b, []byte(`"frames":4`)) {
		t.Fatalf("json %s, %v", b, err)
	}
	rep, err := Check(dir, false)
	if err != nil || !rep.OK || rep.Records != 4 {
		t.Fatalf("Check = %+v, %v", rep, err)
	}
	b, _ = json.Marshal(rep)
	if !bytes.Contains(b, []byte(`"ok":true`)) {
		t.Fatalf("json %s", b)
	}
	if _, err := Inspect(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Inspect of empty dir: %v", err)
	}
	if _, err := Check(t.TempDir(), false); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Check of empty dir: %v", err)
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func truncate(t *testing.T, path string, n int64) {
	t.Helper()
	if err := os.Truncate(path, n); err != nil {
		t.Fatal(err)
	}
}

func flipAt(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestSalvageLosesOnlyTheDamagedPage damages the page holding one record:
// the file fails the structural walk and is renamed aside, and every other
// record is salvaged.
func TestSalvageLosesOnlyTheDamagedPage(t *testing.T) {
	dir := t.TempDir()
	orig := fill(t, dir, 20, 20000)
	path := filepath.Join(dir, DBName)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	victim := encodeRecord(orig[4], orig[4].Created)
	victim.seal(5)
	off := bytes.Index(raw, victim.buf[:recHeaderLen])
	if off < 0 {
		t.Fatal("record 5 not found in the file")
	}
	flipAt(t, path, int64(off/4096*4096+8)) // page flags of the page holding it
	q := openT(t, dir, Options{})
	got := drainAll(t, q, orig)
	want := []uint64{1, 2, 3, 4}
	for id := uint64(6); id <= 20; id++ {
		want = append(want, id)
	}
	if st := q.Stats(); st.CorruptRenames != 1 || !slices.Equal(got, want) {
		t.Fatalf("salvaged %v (stats %+v), want all but 5", got, st)
	}
}
