package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// mountTmpfs mounts a tmpfs of the given size on a fresh directory, or
// skips: it needs CAP_SYS_ADMIN. The fake statfs tests cover the same
// branches without privileges.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs for a real full-disk test (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// TestRealFullDisk fills a real 24 MiB file system: with MinFreeBytes the
// spool keeps the reserve by evicting, for large and for small records;
// without it a Put fails cleanly with ENOSPC, the spool keeps working, and
// after an Ack Puts succeed again.
func TestRealFullDisk(t *testing.T) {
	const reserve = 6 << 20
	for _, size := range []int{100_000, 9_000} {
		t.Run(fmt.Sprintf("reserve kept with %d-byte records", size), func(t *testing.T) {
			dir := mountTmpfs(t, "24m")
			q, err := Open(dir, Options{MinFreeBytes: reserve})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = q.Close() }) // before the unmount, also on failure
			// 30 MB of records into 24 MB.
			for i := range 30_000_000 / size {
				if _, err := q.Put(context.Background(), rec(i, size, 0)); err != nil {
					t.Fatalf("Put %d with a reserve: %v", i, err)
				}
				avail, err := statfsFree(dir)
				if err != nil {
					t.Fatal(err)
				}
				if avail < reserve {
					t.Fatalf("Put %d: %d bytes free, %d below the reserve", i, avail, reserve-avail)
				}
			}
			st := q.Stats()
			t.Logf("with reserve: %+v", st)
			if st.Evictions[ReasonMinFree] == 0 || st.Frames == 0 {
				t.Fatalf("no min_free eviction: %+v", st)
			}
		})
	}

	t.Run("no reserve", func(t *testing.T) {
		dir := mountTmpfs(t, "24m")
		q, err := Open(dir, Options{CompactFreeBytes: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = q.Close() })
		var full error
		for i := range 400 {
			if _, err := q.Put(context.Background(), rec(i, 100_000, 0)); err != nil {
				full = err
				break
			}
		}
		if !errors.Is(full, syscall.ENOSPC) {
			t.Fatalf("Put on a full disk: %v, want ENOSPC", full)
		}
		rs, err := q.Next(20)
		if err != nil || len(rs) != 20 {
			t.Fatalf("Next on a full disk: %d, %v", len(rs), err)
		}
		if err := q.Ack(recordIDs(rs)...); err != nil {
			t.Fatalf("Ack on a full disk: %v", err)
		}
		if _, err := q.Put(context.Background(), rec(1, 100_000, 0)); err != nil {
			t.Fatalf("Put after Ack freed space: %v", err)
		}
	})
}

// TestReclaimBeforeEvicting fills a real file system that also holds files
// the owner can spare (delivered captures): a Put that needs room asks
// Reclaim first, so no record is evicted while a spare file is left.
func TestReclaimBeforeEvicting(t *testing.T) {
	const reserve = 4 << 20
	dir := mountTmpfs(t, "24m")
	spare := filepath.Join(dir, "done")
	if err := os.MkdirAll(spare, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 10 { // 10 MiB of delivered captures
		if err := os.WriteFile(filepath.Join(spare, fmt.Sprintf("%02d.jpg", i)), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var asked, freed int64
	reclaim := func(need int64) int64 {
		asked++
		var n int64
		ents, _ := os.ReadDir(spare)
		for _, e := range ents { // oldest name first
			if n >= need {
				break
			}
			fi, err := e.Info()
			if err == nil && os.Remove(filepath.Join(spare, e.Name())) == nil {
				n += fi.Size()
			}
		}
		freed += n
		return n
	}
	q, err := Open(filepath.Join(dir, "spool"), Options{MinFreeBytes: reserve, Reclaim: reclaim})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	for i := 0; ; i++ {
		if _, err := q.Put(context.Background(), rec(i, 100_000, 0)); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
		left, _ := os.ReadDir(spare)
		st := q.Stats()
		if st.Evictions[ReasonMinFree] > 0 {
			if len(left) > 0 {
				t.Fatalf("Put %d evicted a record while %d spare files were left", i, len(left))
			}
			t.Logf("first eviction at Put %d, after Reclaim freed %d bytes in %d calls", i, freed, asked)
			break
		}
		if i > 400 {
			t.Fatal("no eviction after 40 MB of records in 24 MB")
		}
	}
	if freed < 9<<20 {
		t.Fatalf("Reclaim freed %d bytes of the 10 MiB spare", freed)
	}
	if avail, _ := statfsFree(dir); avail < reserve {
		t.Fatalf("%d bytes free, below the reserve", avail)
	}
}
