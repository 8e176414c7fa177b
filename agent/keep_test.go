package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/forestwatch/forest/agent/source"
	"github.com/forestwatch/forest/agent/status"
	"github.com/forestwatch/forest/spool"
)

// TestKeeperBudgets: done/ and failed/ are held to their byte budget and
// age, oldest first, together; overlays to their own budget; reclaim takes
// the oldest file of any set and stops once it freed what was asked.
func TestKeeperBudgets(t *testing.T) {
	cfg := testConfig(t)
	cfg.Source.Dir.KeepBytes, cfg.Source.Dir.KeepAge = 5000, Duration(time.Hour)
	cfg.Segment.OverlayDir, cfg.Segment.OverlayKeepBytes = filepath.Join(t.TempDir(), "overlays"), 2000
	m, err := status.NewMetrics(prometheus.NewRegistry(), status.Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	k := newKeeper(cfg, m, testLogger(t))
	now := time.Now()
	write := func(dir, name string, size int, age time.Duration) string {
		t.Helper()
		os.MkdirAll(dir, 0o755)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, now.Add(-age), now.Add(-age))
		return p
	}
	done, failed := filepath.Join(cfg.Source.Dir.Path, "done"), filepath.Join(cfg.Source.Dir.Path, "failed")
	stale := write(done, "stale.jpg", 100, 2*time.Hour)
	oldest := write(failed, "bad.jpg", 2000, 50*time.Minute)
	older := write(done, "a.jpg", 2000, 40*time.Minute)
	newer := write(done, "b.jpg", 2000, 30*time.Minute)
	ov1 := write(cfg.Segment.OverlayDir, "1.png", 1500, 20*time.Minute)
	ov2 := write(cfg.Segment.OverlayDir, "2.png", 1500, 10*time.Minute)
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }

	if freed := k.prune(); freed != 100+2000+1500 {
		t.Fatalf("prune freed %d bytes", freed)
	}
	for p, want := range map[string]bool{stale: false, oldest: false, older: true, newer: true, ov1: false, ov2: true} {
		if exists(p) != want {
			t.Errorf("after prune: %s exists %v, want %v", filepath.Base(p), !want, want)
		}
	}
	if got := k.bytes.Load(); got != 4000+1500 {
		t.Errorf("kept bytes %d, want 5500", got)
	}
	// Reclaim: the oldest across sets first, just enough.
	if freed := k.reclaim(2500); freed != 4000 || exists(older) || exists(newer) || !exists(ov2) {
		t.Fatalf("reclaim(2500) freed %d: a %v b %v overlay %v", freed, exists(older), exists(newer), exists(ov2))
	}
	if freed := k.reclaim(1); freed != 1500 || exists(ov2) {
		t.Fatalf("reclaim(1) freed %d", freed)
	}
}

// TestLongOutageOnSmallDisk runs the agent offline (the link is down for
// the whole test) with after: move, its spool, incoming and done/ on one
// real 24 MiB file system, until the spool has to evict for its free-disk
// reserve: by then every file in done/ (each a frame the spool holds) has
// been removed, since one could go instead of an unsent frame; the spool
// never had to evict while one was left.
func TestLongOutageOnSmallDisk(t *testing.T) {
	needModel(t)
	if testing.Short() {
		t.Skip("-short")
	}
	disk := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", disk).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a tmpfs: %v: %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", disk).Run() })
	cfg := testConfig(t)
	cfg.Source.Dir.Path = filepath.Join(disk, "incoming")
	cfg.Spool.Dir = filepath.Join(disk, "spool")
	cfg.Spool.MinFreeBytes = 6 << 20
	cfg.Source.Dir.KeepBytes = 0 // the budget alone would not save the spool here
	os.MkdirAll(cfg.Source.Dir.Path, 0o755)
	a, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	frame, err := os.ReadFile(sampleFrames(t)[4]) // the 1024² NEON frame, 172 KB
	if err != nil {
		t.Fatal(err)
	}
	done := filepath.Join(cfg.Source.Dir.Path, "done")
	src := source.New(cfg.Source, source.Env{Failed: func(_ string, err error) { t.Error(err) }, OK: func(string) {}})
	var evictedAt int
	for i := 0; i < 400; i++ {
		name := fmt.Sprintf("f%04d.jpg", i)
		if err := os.WriteFile(filepath.Join(cfg.Source.Dir.Path, name), frame, 0o644); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if err := src.Once(context.Background(), a.pipe.handle); err != nil {
			t.Fatal(err)
		}
		if st := a.q.Stats(); st.Evictions[spool.ReasonMinFree] > 0 {
			// Only this frame's own file, moved after its Put, may be in
			// done/: every older one went before the eviction.
			after, _ := os.ReadDir(done)
			if len(after) > 1 || len(after) == 1 && after[0].Name() != name {
				t.Fatalf("frame %d: the spool evicted for its reserve while done/ held %d older files", i, len(after))
			}
			evictedAt = i
			break
		}
	}
	if evictedAt == 0 {
		t.Fatal("the disk never filled")
	}
	var mv dto.Metric
	a.m.KeptRemoved.WithLabelValues("disk").Write(&mv)
	removed := mv.GetCounter().GetValue()
	if removed < float64(evictedAt-1) {
		t.Fatalf("%v kept files removed for the reserve before frame %d", removed, evictedAt)
	}
	t.Logf("first eviction at frame %d, after %v kept files gave way", evictedAt, removed)
}
