package spool

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
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
