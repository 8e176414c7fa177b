package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/forestwatch/forest/agent/source"
)

// TestDirRestartNoDoubleSpool crashes (simulated) between the spool Put
// and the file's move, restarts with the same spool, and checks that the
// file is not spooled again but moved: the spool stored its key with the
// record. The migration case starts from an earlier version's state
// directory, whose journal recorded the Put.
func TestDirRestartNoDoubleSpool(t *testing.T) {
	needModel(t)
	cfg := *testConfig(t)
	base := t.TempDir()
	cfg.Device.StateDir, cfg.Spool.Dir, cfg.Source.Dir.Path = filepath.Join(base, "state"), filepath.Join(base, "spool"), filepath.Join(base, "in")
	os.MkdirAll(cfg.Source.Dir.Path, 0o755)
	copyFile(t, sampleFrames(t)[2], filepath.Join(cfg.Source.Dir.Path, "f.png"))

	// First life: Put succeeds, then the process "dies" before the move.
	a, err := New(&cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	crash := errors.New("simulated crash")
	s := source.New(cfg.Source, source.Env{Failed: func(string, error) {}, OK: func(string) {}})
	s.Once(context.Background(), func(ctx context.Context, c *source.Capture) error {
		if err := a.pipe.handle(ctx, c); err != nil {
			return err
		}
		return crash
	})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Source.Dir.Path, "f.png")); err != nil {
		t.Fatal("file should still be in place after the crash")
	}

	// Second life.
	a, err = New(&cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.RunOnce(context.Background(), ioDiscard{}); err != nil {
		t.Fatal(err)
	}
	q := openSpoolT(t, cfg.Spool.Dir)
	recs, err := q.Next(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("spool holds %d records, want 1", len(recs))
	}
	if _, err := os.Stat(filepath.Join(cfg.Source.Dir.Path, "done", "f.png")); err != nil {
		t.Fatalf("file not moved after restart: %v", err)
	}
}

// TestMigrateState starts on an earlier version's state directory: frame
// numbers continue above its high-water mark, the file its journal
// recorded as spooled is not spooled again, and the old files are gone.
func TestMigrateState(t *testing.T) {
	needModel(t)
	cfg := *testConfig(t)
	base := t.TempDir()
	cfg.Device.StateDir, cfg.Spool.Dir, cfg.Source.Dir.Path = filepath.Join(base, "state"), filepath.Join(base, "spool"), filepath.Join(base, "in")
	os.MkdirAll(cfg.Device.StateDir, 0o700)
	os.MkdirAll(cfg.Source.Dir.Path, 0o755)
	for _, n := range []string{"old.png", "new.png"} {
		copyFile(t, sampleFrames(t)[2], filepath.Join(cfg.Source.Dir.Path, n))
	}
	fi, err := os.Stat(filepath.Join(cfg.Source.Dir.Path, "old.png"))
	if err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf("dir:old.png:%d:%d", fi.Size(), fi.ModTime().UnixNano())
	os.WriteFile(filepath.Join(cfg.Device.StateDir, "seq"), []byte("640\n"), 0o600)
	os.WriteFile(filepath.Join(cfg.Device.StateDir, "journal"), []byte(`{"key":"`+key+`","seq":639,"spool_id":17}`), 0o600)

	var reports []FrameReport
	a, err := New(&cfg, Options{Logger: testLogger(t), Report: func(r FrameReport) { reports = append(reports, r) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.RunOnce(context.Background(), ioDiscard{}); err != nil {
		t.Fatal(err)
	}
	if len(reports) != 1 || reports[0].Name != "new.png" || reports[0].Seq <= 640 {
		t.Fatalf("reports %+v: want only new.png, numbered above 640", reports)
	}
	for _, f := range []string{"seq", "journal"} {
		if _, err := os.Stat(filepath.Join(cfg.Device.StateDir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("state file %s left after migration: %v", f, err)
		}
	}
	for _, n := range []string{"old.png", "new.png"} {
		if _, err := os.Stat(filepath.Join(cfg.Source.Dir.Path, "done", n)); err != nil {
			t.Errorf("%s not moved: %v", n, err)
		}
	}
}
