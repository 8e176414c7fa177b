package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelpAndUnknown(t *testing.T) {
	code, out, _ := runCLI("--help")
	if code != 0 || !strings.Contains(out, "Examples:") || !strings.Contains(out, "run --config") {
		t.Fatalf("--help: %d %q", code, out)
	}
	for _, sub := range [][]string{{"run", "--help"}, {"config", "--help"}, {"config", "check", "--help"}, {"segment", "--help"}, {"spool", "stats", "--help"}, {"spool", "--help"}} {
		code, out, errOut := runCLI(sub...)
		if code != 0 || !strings.Contains(out, "Example") {
			t.Errorf("%v: %d %q %q", sub, code, out, errOut)
		}
	}
	code, _, errOut := runCLI("fly")
	if code == 0 || !strings.Contains(errOut, `unknown command "fly"`) {
		t.Fatalf("unknown command: %d %q", code, errOut)
	}
	if code, _, _ := runCLI(); code == 0 {
		t.Fatal("no command should fail")
	}
	if code, _, errOut := runCLI("run", "--bogus"); code != 2 || !strings.Contains(errOut, "bogus") {
		t.Fatalf("bad flag: %d %q", code, errOut)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI("version")
	for _, want := range []string{"forest-agent ", "commit ", "go go1.", "onnxruntime ", "\nwebp "} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("version output lacks %q: %q", want, out)
		}
	}
	// With --config it reports the config's library.
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	lib := filepath.Join(t.TempDir(), "libonnxruntime.so.1")
	os.WriteFile(cfg, []byte("device: {id: d1}\nsegment: {library: "+lib+"}\n"), 0o644)
	if code, out, _ := runCLI("version", "--config", cfg); code != 0 || !strings.Contains(out, "("+lib+")") {
		t.Fatalf("version --config: %d %q", code, out)
	}
	if code, out, _ := runCLI("version", "--help"); code != 0 || !strings.Contains(out, "Examples:") {
		t.Fatalf("version --help: %d %q", code, out)
	}
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("device: {id: d1}\n"), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("device: {id: d1}\nuplink: {confirm_timeout: 0s}\n"), 0o644)
	if code, out, _ := runCLI("config", "check", good); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("good config: %d %q", code, out)
	}
	code, _, errOut := runCLI("config", "check", bad)
	if code != 1 || !strings.Contains(errOut, "uplink.confirm_timeout: must be > 0 (got 0s)") {
		t.Fatalf("bad config: %d %q", code, errOut)
	}
}

var model = filepath.Join("..", "..", "..", "segment", "models", "forest-unet-v1.onnx")

func needModel(t *testing.T) {
	if _, err := os.Stat(model); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("default model missing: %v", err)
		}
		t.Skipf("default model missing: %v", err)
	}
}

func TestSegmentCommand(t *testing.T) {
	needModel(t)
	frames, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "frames", "satellite", "*.png"))
	if len(frames) < 2 {
		t.Fatalf("satellite sample frames missing: %v", frames)
	}
	out := t.TempDir()
	code, stdout, errOut := runCLI(append([]string{"segment", "--model", model, "--json", "--out", out}, frames[:2]...)...)
	if code != 0 {
		t.Fatalf("segment: %d %s", code, errOut)
	}
	sc := bufio.NewScanner(strings.NewReader(stdout))
	n := 0
	for sc.Scan() {
		var r struct {
			File          string
			Coverage, MS  float64
			SegmentMS     float64 `json:"segment_ms"`
			SegmentCPU    float64 `json:"segment_cpu_ms"`
			Windows       int
			Width, Height int
			Mask, Overlay string
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if r.File != frames[n] || r.Width != 256 || r.Height != 256 || r.Coverage < 0 || r.Coverage > 1 || r.MS <= 0 ||
			r.SegmentMS <= 0 || r.SegmentMS > r.MS || r.SegmentCPU <= 0 || r.Windows != 1 {
			t.Fatalf("line %d: %+v", n, r)
		}
		for _, p := range []string{r.Mask, r.Overlay} {
			if st, err := os.Stat(p); err != nil || st.Size() == 0 {
				t.Fatalf("output %s: %v", p, err)
			}
		}
		n++
	}
	if n != 2 {
		t.Fatalf("%d JSON lines", n)
	}
	if code, _, _ := runCLI("segment", "--model", model, "main.go"); code != 1 {
		t.Fatalf("a non-image should fail the command: %d", code)
	}
}

// TestRunOnceAndSpoolCommands runs the --once flow in-process: copy the
// satellite samples, run --once offline with the satellite model, then
// inspect the spool. TestMakeRun runs `make run` itself.
func TestRunOnceAndSpoolCommands(t *testing.T) {
	needModel(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.MkdirAll(in, 0o755)
	frames, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "frames", "satellite", "*.png"))
	if len(frames) == 0 {
		t.Fatal("no satellite sample frames")
	}
	n := 0
	for _, f := range frames {
		b, _ := os.ReadFile(f)
		os.WriteFile(filepath.Join(in, filepath.Base(f)), b, 0o644)
		n++
	}
	absModel, _ := filepath.Abs(model)
	cfg := filepath.Join(dir, "run.yaml")
	os.WriteFile(cfg, []byte("device: {id: once-1, state_dir: "+dir+"/state}\nsource: {dir: {path: "+in+", settle: 50ms}}\n"+
		"segment: {model: "+absModel+", overlay_dir: "+dir+"/overlays}\nspool: {dir: "+dir+"/spool, min_free_bytes: 0}\nlog: {level: warn}\n"), 0o644)
	code, out, errOut := runCLI("run", "--config", cfg, "--once")
	if code != 0 {
		t.Fatalf("run --once: %d\n%s\n%s", code, out, errOut)
	}
	if strings.Count(out, "offline") != 1 || strings.Count(out, "spooled id") != n || !strings.Contains(out, "overlays: ") ||
		!strings.Contains(out, "status:   http://127.0.0.1:9464/") || !strings.Contains(out, "coverage") {
		t.Fatalf("run --once output:\n%s", out)
	}
	ovl, _ := filepath.Glob(filepath.Join(dir, "overlays", "*.png"))
	if len(ovl) != n {
		t.Fatalf("%d overlays for %d frames", len(ovl), n)
	}
	code, out, _ = runCLI("spool", "stats", "--json", filepath.Join(dir, "spool"))
	var st struct{ Frames int }
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Frames != n {
		t.Fatalf("spool stats: %d %q", code, out)
	}
	if code, out, _ := runCLI("spool", "check", filepath.Join(dir, "spool")); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("spool check: %d %q", code, out)
	}
	code, out, _ = runCLI("spool", "check", "--json", filepath.Join(dir, "spool"))
	var rep struct {
		OK      bool `json:"ok"`
		Records int  `json:"records"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || !rep.OK || rep.Records != n {
		t.Fatalf("spool check --json: %d %q", code, out)
	}
	// Run again: nothing new, nothing spooled twice.
	code, out, _ = runCLI("run", "--config", cfg, "--once")
	if code != 0 || strings.Contains(out, "spooled id") || !strings.Contains(out, "0 frame(s)") {
		t.Fatalf("second run: %d\n%s", code, out)
	}
}

// TestSecondSignalExitsAtOnce: the first SIGTERM starts the shutdown, a
// second one exits at once (a child process stands in for an agent whose
// shutdown hangs).
func TestSecondSignalExitsAtOnce(t *testing.T) {
	if os.Getenv("FOREST_AGENT_SIGNAL_CHILD") == "1" {
		ctx, _ := signalContext(slog.New(slog.DiscardHandler))
		os.Stdout.WriteString("ready\n")
		<-ctx.Done()
		os.Stdout.WriteString("shutting down\n")
		select {} // a shutdown that never ends
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSecondSignalExitsAtOnce$")
	cmd.Env = append(os.Environ(), "FOREST_AGENT_SIGNAL_CHILD=1")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(stdout)
	expect := func(want string) {
		line, err := r.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != want {
			t.Fatalf("child said %q (%v), want %q", line, err, want)
		}
	}
	expect("ready")
	cmd.Process.Signal(syscall.SIGTERM)
	expect("shutting down")
	t0 := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	go io.Copy(io.Discard, r)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 || time.Since(t0) > 2*time.Second {
		t.Fatalf("after the second signal: %v after %s", err, time.Since(t0))
	}
}
