package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestKeyStoredOnce: a record's source key is stored with it; a second Put
// with that key stores nothing and names the first id, also after the
// record was acknowledged and after a reopen.
func TestKeyStoredOnce(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := q.Lookup("dir:a.jpg:1:2"); ok || err != nil {
		t.Fatalf("lookup before put: %v %v", ok, err)
	}
	r := rec(1, 100, 0)
	r.Key = "dir:a.jpg:1:2"
	id := putT(t, q, r)
	if got, ok, err := q.Lookup(r.Key); !ok || got != id || err != nil {
		t.Fatalf("lookup: %d %v %v, want %d", got, ok, err, id)
	}
	dup := rec(2, 100, 0)
	dup.Key = r.Key
	got, err := q.Put(context.Background(), dup)
	if !errors.Is(err, ErrDuplicate) || got != id {
		t.Fatalf("second put: id %d %v, want id %d and ErrDuplicate", got, err, id)
	}
	if n := q.Stats().Frames; n != 1 {
		t.Fatalf("%d frames stored, want 1", n)
	}
	if err := q.Ack(nextIDs(t, q, 10)...); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = openT(t, dir, Options{})
	if got, ok, _ := q.Lookup(r.Key); !ok || got != id {
		t.Fatalf("lookup after ack and reopen: %d %v", got, ok)
	}
	if _, err := q.Put(context.Background(), dup); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("put after reopen: %v", err)
	}
	other := rec(3, 100, 0)
	other.Key = "dir:b.jpg:1:2"
	if id2 := putT(t, q, other); id2 <= id {
		t.Fatalf("new key got id %d, not above %d", id2, id)
	}
}

// TestKeyDuplicatesInOneBatch: concurrent Puts of one key that share a
// group commit store one record; every caller gets its id.
func TestKeyDuplicatesInOneBatch(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	const n = 16
	ids := make([]uint64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r := rec(i, 1000, 0)
			r.Key = "same"
			ids[i], errs[i] = q.Put(context.Background(), r)
		})
	}
	wg.Wait()
	stored := 0
	for i := range n {
		switch {
		case errs[i] == nil:
			stored++
		case !errors.Is(errs[i], ErrDuplicate):
			t.Fatalf("put %d: %v", i, errs[i])
		}
		if ids[i] != ids[0] || ids[i] == 0 {
			t.Fatalf("ids %v: not all the one stored", ids)
		}
	}
	if stored != 1 || q.Stats().Frames != 1 {
		t.Fatalf("%d puts succeeded, %d frames stored; want 1 and 1", stored, q.Stats().Frames)
	}
}

// TestImport: ids continue above the imported floor, imported keys count
// as stored, and both survive a reopen.
func TestImport(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	putT(t, q, rec(1, 10, 0))
	if err := q.Import(1000, map[string]uint64{"dir:old.jpg:5:6": 999}); err != nil {
		t.Fatal(err)
	}
	if id := putT(t, q, rec(2, 10, 0)); id != 1001 {
		t.Fatalf("id after import %d, want 1001", id)
	}
	if err := q.Import(10, nil); err != nil { // a lower floor changes nothing
		t.Fatal(err)
	}
	q.Close()
	q = openT(t, dir, Options{})
	if got, ok, _ := q.Lookup("dir:old.jpg:5:6"); !ok || got != 999 {
		t.Fatalf("imported key: %d %v", got, ok)
	}
	if id := putT(t, q, rec(3, 10, 0)); id != 1002 {
		t.Fatalf("id after reopen %d, want 1002", id)
	}
}

// TestKeysBounded: old keys are forgotten, recent ones kept.
func TestKeysBounded(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	const n = maxKeys + 3*pruneEvery
	for i := range n {
		r := rec(i, 1, 0)
		r.Key = fmt.Sprintf("k%d", i)
		putT(t, q, r)
		if i%512 == 0 {
			if err := q.Ack(nextIDs(t, q, 1000)...); err != nil {
				t.Fatal(err)
			}
		}
	}
	var count int
	if err := q.view("count", func(tx *bolt.Tx) error {
		count = tx.Bucket(bktKeys).Stats().KeyN
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if count > maxKeys+pruneEvery || count < maxKeys {
		t.Fatalf("%d keys kept, want %d to %d", count, maxKeys, maxKeys+pruneEvery)
	}
	if _, ok, _ := q.Lookup(fmt.Sprintf("k%d", n-1)); !ok {
		t.Fatal("newest key forgotten")
	}
	if _, ok, _ := q.Lookup(fmt.Sprintf("k%d", n-maxKeys)); !ok {
		t.Fatal("a key among the newest maxKeys forgotten")
	}
	if _, ok, _ := q.Lookup("k0"); ok {
		t.Fatal("oldest key kept")
	}
}

// TestKeysSalvaged: when a damaged file is replaced, the source keys that
// can be read move to the new file with the sound records.
func TestKeysSalvaged(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var victim *Record
	for i := range 6 {
		r := rec(i, 20000, 0)
		r.Key = fmt.Sprintf("dir:%d.jpg:1:2", i)
		putT(t, q, r)
		if i == 3 {
			victim = r
		}
	}
	q.Close()
	path := filepath.Join(dir, DBName)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	enc := encodeRecord(victim, victim.Created)
	enc.seal(victim.ID)
	off := bytes.Index(raw, enc.buf[:recHeaderLen])
	if off < 0 {
		t.Fatal("record not found in the file")
	}
	flipAt(t, path, int64(off/4096*4096+8)) // page flags of the page holding it
	q = openT(t, dir, Options{})
	if q.Stats().CorruptRenames != 1 {
		t.Fatal("file not renamed aside")
	}
	for i := range 6 {
		if got, ok, err := q.Lookup(fmt.Sprintf("dir:%d.jpg:1:2", i)); !ok || got != uint64(i+1) || err != nil {
			t.Errorf("key %d after salvage: %d %v %v", i, got, ok, err)
		}
	}
}

// TestAttempt: attempts are counted durably per key until a record with
// the key is stored; then Attempt names its id and counts no more.
func TestAttempt(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for want := 1; want <= 3; want++ {
		n, id, err := q.Attempt("dir:poison.jpg:1:2")
		if err != nil || n != want || id != 0 {
			t.Fatalf("attempt %d: %d %d %v", want, n, id, err)
		}
	}
	q.Close() // a crash would do the same: every Attempt is durable
	q = openT(t, dir, Options{})
	if n, _, _ := q.Attempt("dir:poison.jpg:1:2"); n != 4 {
		t.Fatalf("after reopen: attempt %d, want 4", n)
	}
	r := rec(1, 10, 0)
	r.Key = "dir:good.jpg:1:2"
	if n, _, _ := q.Attempt(r.Key); n != 1 {
		t.Fatalf("first attempt of another key: %d", n)
	}
	id := putT(t, q, r)
	if n, got, err := q.Attempt(r.Key); got != id || n != 1 || err != nil {
		t.Fatalf("attempt after the put: %d %d %v, want 1 and id %d", n, got, err, id)
	}
	if _, _, err := q.Attempt(""); err == nil {
		t.Fatal("empty key accepted")
	}
	if err := q.ClearAttempts("dir:poison.jpg:1:2"); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := q.Attempt("dir:poison.jpg:1:2"); n != 1 {
		t.Fatalf("attempt after ClearAttempts: %d, want 1", n)
	}
}
