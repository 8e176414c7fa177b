package source

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// recorder collects handler calls.
type recorder struct {
	mu    sync.Mutex
	caps  []*Capture
	err   func(c *Capture) error
	fails []error
	oks   int
}

func (r *recorder) handle(_ context.Context, c *Capture) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.caps = append(r.caps, c)
	if r.err != nil {
		return r.err(c)
	}
	return nil
}

func (r *recorder) env(testing.TB) Env {
	return Env{
		Log: slog.New(slog.DiscardHandler),
		Failed: func(_ string, err error) {
			r.mu.Lock()
			r.fails = append(r.fails, err)
			r.mu.Unlock()
		},
		OK: func(string) { r.mu.Lock(); r.oks++; r.mu.Unlock() },
	}
}

func (r *recorder) snapshot() ([]*Capture, []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Capture(nil), r.caps...), append([]error(nil), r.fails...)
}

// sampleFrames returns the agent's sample frames the tests index: the four
// PNG tiles, then the NEON BLAN JPEG.
func sampleFrames(t testing.TB) []string {
	t.Helper()
	png, _ := filepath.Glob("../testdata/frames/satellite/*.png")
	if len(png) < 4 {
		t.Fatalf("sample frames missing: %v", png)
	}
	return append(png, "../testdata/frames/aerial/neon_BLAN_3_751000_4330000_crop.jpg")
}

// waitUntil polls cond every 20 ms for up to d.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

func copyTo(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err == nil {
		err = os.WriteFile(dst, b, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
}
