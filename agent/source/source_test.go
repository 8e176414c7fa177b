package source

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/forestwatch/forest/internal/config"
	"github.com/forestwatch/forest/segment"
)

func dirCfg(t *testing.T) DirConfig {
	c := Defaults().Dir
	c.Path = t.TempDir()
	c.After = "move"
	c.Settle = config.Duration(100 * time.Millisecond)
	return c
}

// runSource runs s in the background and returns a stop function that
// waits for Run to return.
func runSource(t *testing.T, s Source, h Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("source did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// decodeHandler accepts images and refuses anything else like the pipeline.
func decodeHandler(r *recorder) {
	r.err = func(c *Capture) error {
		if _, err := segment.Decode(c.Data, 0); err != nil {
			return fmt.Errorf("%w: %w", ErrBadFrame, err)
		}
		return nil
	}
}

// TestDirPartialFile writes a file slowly: it must not be taken before it
// is complete, and then exactly once with all its bytes.
func TestDirPartialFile(t *testing.T) {
	defer goleak.VerifyNone(t)
	cfg := dirCfg(t)
	cfg.Settle = config.Duration(500 * time.Millisecond) // well above the writer's pauses, even on a loaded machine
	r := &recorder{}
	decodeHandler(r)
	s := &dirSource{cfg: cfg, env: r.env(t)}
	stop := runSource(t, s, r.handle)

	src, _ := os.ReadFile(sampleFrames(t)[0])
	path := filepath.Join(cfg.Path, "slow.png")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// Write in 8 chunks, 60 ms apart (less than settle): never taken early.
	// (A writer that pauses longer than settle mid-file would be taken early:
	// that is the limit of the stable-size rule; writers that can should
	// write to a .tmp name and rename.)
	for i := 0; i < 8; i++ {
		lo, hi := i*len(src)/8, (i+1)*len(src)/8
		f.Write(src[lo:hi])
		time.Sleep(60 * time.Millisecond)
		if caps, fails := r.snapshot(); len(caps) != 0 || len(fails) != 0 {
			t.Fatalf("partial file taken after chunk %d: %d captures, failures %v", i, len(caps), fails)
		}
	}
	f.Close()
	waitUntil(t, 5*time.Second, "the complete file", func() bool { c, _ := r.snapshot(); return len(c) == 1 })
	stop()
	caps, fails := r.snapshot()
	if len(caps) != 1 || len(fails) != 0 || string(caps[0].Data) != string(src) || caps[0].Name != "slow.png" {
		t.Fatalf("got %d captures (%v), want the whole file once", len(caps), fails)
	}
	if _, err := os.Stat(filepath.Join(cfg.Path, "done", "slow.png")); err != nil {
		t.Fatalf("file not moved to done/: %v", err)
	}
}

// TestDirStartupScanRenameAndDispose covers files present at start,
// temporary names renamed into place, delete mode, non-images moved to
// failed/ and files kept when the frame could not be spooled.
func TestDirStartupScanRenameAndDispose(t *testing.T) {
	defer goleak.VerifyNone(t)
	cfg := dirCfg(t)
	cfg.After = "delete"
	frames := sampleFrames(t)
	copyTo(t, frames[0], filepath.Join(cfg.Path, "present.png"))
	os.WriteFile(filepath.Join(cfg.Path, "notes.txt"), []byte("not an image"), 0o644)
	copyTo(t, frames[1], filepath.Join(cfg.Path, "retry.png"))
	r := &recorder{}
	var mu sync.Mutex
	failSpool := true
	r.err = func(c *Capture) error {
		if _, err := segment.Decode(c.Data, 0); err != nil {
			return fmt.Errorf("%w: %w", ErrBadFrame, err)
		}
		mu.Lock()
		defer mu.Unlock()
		if c.Name == "retry.png" && failSpool {
			failSpool = false
			return errors.New("spool full")
		}
		return nil
	}
	s := &dirSource{cfg: cfg, env: r.env(t)}
	stop := runSource(t, s, r.handle)
	// A writer that writes to a temporary name and renames into place.
	tmp := filepath.Join(cfg.Path, ".incoming.png.tmp")
	copyTo(t, frames[2], tmp)
	time.Sleep(300 * time.Millisecond)
	if c, _ := r.snapshot(); len(c) > 3 {
		t.Fatalf("temporary file taken")
	}
	os.Rename(tmp, filepath.Join(cfg.Path, "renamed.png"))
	waitUntil(t, 10*time.Second, "all files handled", func() bool {
		ents, _ := os.ReadDir(cfg.Path)
		for _, e := range ents {
			if e.Type().IsRegular() {
				return false
			}
		}
		return true
	})
	stop()
	caps, fails := r.snapshot()
	names := map[string]int{}
	for _, c := range caps {
		names[c.Name]++
	}
	if names["present.png"] != 1 || names["renamed.png"] != 1 || names["retry.png"] != 2 || names["notes.txt"] != 1 {
		t.Fatalf("captures by name: %v", names)
	}
	if len(fails) != 1 || !errors.Is(fails[0], ErrBadFrame) {
		t.Fatalf("failures: %v", fails)
	}
	if _, err := os.Stat(filepath.Join(cfg.Path, "failed", "notes.txt")); err != nil {
		t.Fatalf("non-image not moved to failed/: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Path, "done")); err == nil {
		t.Fatalf("delete mode made a done/ directory")
	}
}

func TestExecSource(t *testing.T) {
	defer goleak.VerifyNone(t)
	frame, _ := filepath.Abs(sampleFrames(t)[0])
	cases := []struct {
		name    string
		cmd     []string
		ok      bool
		errLike string
	}{
		{"image", []string{"cat", frame}, true, ""},
		{"non-zero exit", []string{"sh", "-c", "echo camera busy >&2; exit 3"}, false, "camera busy"},
		{"not an image", []string{"echo", "hello"}, false, "not a supported image"},
		{"no output", []string{"true"}, false, "no output"},
		{"timeout", []string{"sh", "-c", "sleep 30 & sleep 30"}, false, "killed after"},
		{"missing", []string{"/nonexistent/camera"}, false, "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			decodeHandler(r)
			cfg := Defaults().Exec
			cfg.Command, cfg.Timeout = tc.cmd, config.Duration(300*time.Millisecond)
			s := &execSource{cfg: cfg, env: r.env(t)}
			t0 := time.Now()
			if err := s.Once(context.Background(), r.handle); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(t0); d > 3*time.Second {
				t.Fatalf("capture took %s", d)
			}
			caps, fails := r.snapshot()
			if tc.ok {
				if len(fails) != 0 || r.oks != 1 || len(caps) != 1 {
					t.Fatalf("failures %v, oks %d", fails, r.oks)
				}
				return
			}
			if len(fails) != 1 || !strings.Contains(strings.ToLower(fails[0].Error()), tc.errLike) {
				t.Fatalf("failures %v, want one like %q", fails, tc.errLike)
			}
			if !errors.Is(fails[0], ErrCapture) && !errors.Is(fails[0], ErrBadFrame) {
				t.Fatalf("failure not typed: %v", fails[0])
			}
		})
	}
}

// TestExecKeepsRunning proves a failing command is not fatal: Run keeps
// capturing on its interval.
func TestExecKeepsRunning(t *testing.T) {
	defer goleak.VerifyNone(t)
	r := &recorder{}
	decodeHandler(r)
	cfg := Defaults().Exec
	cfg.Command, cfg.Interval, cfg.Timeout = []string{"false"}, config.Duration(30*time.Millisecond), config.Duration(time.Second)
	stop := runSource(t, &execSource{cfg: cfg, env: r.env(t)}, r.handle)
	waitUntil(t, 5*time.Second, "five failed captures", func() bool { _, f := r.snapshot(); return len(f) >= 5 })
	stop()
}

func TestHTTPSource(t *testing.T) {
	defer goleak.VerifyNone(t)
	img, _ := os.ReadFile(sampleFrames(t)[0])
	dir := t.TempDir()
	pwFile, tokFile := filepath.Join(dir, "pw"), filepath.Join(dir, "tok")
	os.WriteFile(pwFile, []byte("cam-secret\n"), 0o600)
	os.WriteFile(tokFile, []byte("tok-123\n"), 0o600)
	var mu sync.Mutex
	mode := "ok"
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		m := mode
		mu.Unlock()
		switch m {
		case "basic":
			if u, p, ok := r.BasicAuth(); !ok || u != "cam" || p != "cam-secret" {
				http.Error(w, "no", http.StatusUnauthorized)
				return
			}
		case "bearer":
			if r.Header.Get("Authorization") != "Bearer tok-123" {
				http.Error(w, "no", http.StatusUnauthorized)
				return
			}
		case "500":
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		case "stall-headers":
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		case "stall-body":
			w.Header().Set("Content-Length", fmt.Sprint(len(img)))
			w.Write(img[:100])
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		w.Header().Set("Content-Type", "image/png")
		w.Write(img)
	}))
	defer srv.Close()
	defer close(release)

	cases := []struct {
		mode    string
		tweak   func(*HTTPConfig)
		ok      bool
		errLike string
	}{
		{"ok", nil, true, ""},
		{"basic", func(c *HTTPConfig) { c.User, c.PasswordFile = "cam", pwFile }, true, ""},
		{"basic", func(c *HTTPConfig) { c.User = "cam" }, false, "401"},
		{"bearer", func(c *HTTPConfig) { c.TokenFile = tokFile }, true, ""},
		{"500", nil, false, "500"},
		{"stall-headers", nil, false, "deadline exceeded"},
		{"stall-body", nil, false, "deadline exceeded"},
		{"ok", func(c *HTTPConfig) { c.MaxBytes = 10 }, false, "max_bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			mu.Lock()
			mode = tc.mode
			mu.Unlock()
			cfg := Defaults().HTTP
			cfg.URL, cfg.Timeout = srv.URL+"/snapshot.png", config.Duration(300*time.Millisecond)
			if tc.tweak != nil {
				tc.tweak(&cfg)
			}
			r := &recorder{}
			decodeHandler(r)
			s := &httpSource{cfg: cfg, env: r.env(t)}
			t0 := time.Now()
			s.Once(context.Background(), r.handle)
			if d := time.Since(t0); d > 2*time.Second {
				t.Fatalf("capture took %s; the timeout is 300ms", d)
			}
			caps, fails := r.snapshot()
			if tc.ok {
				if len(fails) != 0 || len(caps) != 1 || len(caps[0].Data) != len(img) {
					t.Fatalf("failures %v, captures %d", fails, len(caps))
				}
				return
			}
			if len(fails) != 1 || !strings.Contains(fails[0].Error(), tc.errLike) || !errors.Is(fails[0], ErrCapture) {
				t.Fatalf("failures %v, want one like %q", fails, tc.errLike)
			}
		})
	}

	// A camera that stalls does not stop the source: the next capture
	// after it recovers succeeds.
	mu.Lock()
	mode = "stall-body"
	mu.Unlock()
	cfg := Defaults().HTTP
	cfg.URL, cfg.Timeout, cfg.Interval = srv.URL, config.Duration(200*time.Millisecond), config.Duration(50*time.Millisecond)
	r := &recorder{}
	decodeHandler(r)
	stop := runSource(t, &httpSource{cfg: cfg, env: r.env(t)}, r.handle)
	waitUntil(t, 5*time.Second, "two stalled captures", func() bool { _, f := r.snapshot(); return len(f) >= 2 })
	mu.Lock()
	mode = "ok"
	mu.Unlock()
	waitUntil(t, 5*time.Second, "a capture after the camera recovered", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.oks >= 1 })
	stop()
	srv.CloseClientConnections()
}
