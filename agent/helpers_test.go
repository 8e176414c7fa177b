package agent

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/segment"
	"github.com/forestwatch/forest/spool"
)

func TestMain(m *testing.M) { rabbittest.Main(m) }

// modelPath is the satellite model, which most of the agent's tests use: its
// sample tiles take one window each. The device's default is deviceModel's.
var modelPath = filepath.Join("..", "segment", "models", "forest-unet-v1.onnx")

// deviceModel is the absolute path of the model the device package's
// config (firmware/agent.yaml) names, in this checkout.
func deviceModel(t testing.TB, def *Config) string {
	t.Helper()
	model := def.Segment.Model
	if !filepath.IsAbs(model) || !fileExists(model) {
		model, _ = filepath.Abs(filepath.Join("..", "segment", "models", filepath.Base(model)))
	}
	return model
}

// needModel fails under CI and skips otherwise when the default model or
// ONNX Runtime is missing.
func needModel(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(modelPath); err != nil {
		rabbittest.Unavailable(t, "default model %s: %v", modelPath, err)
	}
	if _, _, err := segment.RuntimeVersion(""); err != nil {
		rabbittest.Unavailable(t, "onnx runtime: %v", err)
	}
}

// testLogger logs to the test at debug level when -v, else discards.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// testConfig returns a valid offline configuration with a dir source, all
// in temporary directories.
func testConfig(t testing.TB) *Config {
	t.Helper()
	dir := t.TempDir()
	c := Default()
	c.Device.ID = "test-dev"
	c.Device.StateDir = filepath.Join(dir, "state")
	c.Source.Dir.Path = filepath.Join(dir, "incoming")
	c.Source.Dir.Settle = Duration(50 * time.Millisecond)
	c.Source.Dir.After = "move"
	c.Segment.Model = modelPath
	c.Segment.Threads = 1
	c.Spool.Dir = filepath.Join(dir, "spool")
	c.Spool.MinFreeBytes = 0
	c.HTTP.Listen = ""
	c.ShutdownTimeout = Duration(10 * time.Second)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(c.Source.Dir.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	return &c
}

// sampleFrames returns the sample frames the tests index: the four
// 256×256 Sentinel-2 tiles, then the 1024² NEON BLAN JPEG.
func sampleFrames(t testing.TB) []string {
	t.Helper()
	out, _ := filepath.Glob(filepath.Join("testdata", "frames", "satellite", "*.png"))
	out = append(out, filepath.Join("testdata", "frames", "aerial", "neon_BLAN_3_751000_4330000_crop.jpg"))
	for _, f := range out {
		if _, err := os.Stat(f); err != nil || len(out) != 5 {
			t.Fatalf("sample frames missing: %v (%v)", out, err)
		}
	}
	return out
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type ioDiscard struct{}

func (ioDiscard) Write(p []byte) (int, error) { return len(p), nil }

// openSpoolT opens a spool for inspection and closes it on cleanup.
func openSpoolT(t testing.TB, dir string) *spool.Queue {
	t.Helper()
	q, err := spool.Open(dir, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }
