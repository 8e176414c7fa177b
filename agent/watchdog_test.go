package agent

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPoisonFileUnderWatchdog runs the real binary under a stand-in for
// systemd: a notify socket and a 500 ms watchdog, and a SIGABRT and a
// restart when the keep-alives stop, as Restart=always with WatchdogSec
// does. Between two ordinary frames (256² tiles, tens of milliseconds
// each) sits one that hangs the agent past its 200 ms watchdog: a 36-MP
// PNG that takes a second or more to decode alone. Without
// attempt counting the agent would take it first after every restart and
// never get past it. With source.max_attempts 2 it is killed twice, then
// refused: moved to failed/ with a reason file, and capture goes on.
func TestPoisonFileUnderWatchdog(t *testing.T) {
	needModel(t)
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.MkdirAll(in, 0o755)
	tile := sampleFrames(t)[0]
	copyFile(t, tile, filepath.Join(in, "a.png"))
	poison := image.NewNRGBA(image.Rect(0, 0, 6000, 6000))
	for y := range 6000 {
		for x := range 6000 {
			poison.SetNRGBA(x, y, color.NRGBA{uint8(x), uint8(y), uint8(x ^ y), 255})
		}
	}
	f, err := os.Create(filepath.Join(in, "poison.png"))
	if err != nil {
		t.Fatal(err)
	}
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(f, poison); err != nil {
		t.Fatal(err)
	}
	f.Close()
	copyFile(t, tile, filepath.Join(in, "z.png"))
	// Oldest first: a, then the poison, then z.
	for i, n := range []string{"a.png", "poison.png", "z.png"} {
		at := time.Now().Add(time.Duration(i-10) * time.Minute)
		os.Chtimes(filepath.Join(in, n), at, at)
	}
	model, _ := filepath.Abs(modelPath)
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`device: {id: wd-1, state_dir: %[1]s/state}
source: {type: dir, max_attempts: 2, dir: {path: %[2]s, settle: 20ms, after: move}}
segment: {model: %[3]s, threads: 1}
encode: {mode: jpeg, min_ssim: 0}
spool: {dir: %[1]s/spool, min_free_bytes: 0}
http: {listen: ""}
log: {level: warn}
`, dir, in, model)), 0o644)
	bin := buildBinary(t)

	sock := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The agent withholds WATCHDOG=1 once a frame is busy for longer than
	// the timeout, so the poison is killed about 300 ms into it. JPEG at a
	// fixed quality keeps the ordinary frames far below that (the default
	// WebP search compiles its encoder in the first frame).
	const watchdog = 200 * time.Millisecond
	kills := 0
	for life := 0; ; life++ {
		_, errA := os.Stat(filepath.Join(in, "done", "a.png"))
		_, errZ := os.Stat(filepath.Join(in, "done", "z.png"))
		_, errP := os.Stat(filepath.Join(in, "failed", "poison.png"))
		if errA == nil && errZ == nil && errP == nil {
			break
		}
		if life > 6 {
			_, errD := os.Stat(filepath.Join(in, "done", "poison.png"))
			t.Fatalf("after %d lives and %d watchdog kills: a %v, z %v, poison %v (in done/: %v)", life, kills, errA, errZ, errP, errD == nil)
		}
		cmd := exec.Command(bin, "run", "--config", cfg)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, fmt.Sprintf("WATCHDOG_USEC=%d", watchdog.Microseconds()), "WATCHDOG_PID=")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		// systemd: the watchdog runs from READY=1; no WATCHDOG=1 for
		// longer than WatchdogSec gets the service a SIGABRT.
		var last time.Time
		buf := make([]byte, 256)
	watch:
		for {
			select {
			case <-exited:
				break watch
			default:
			}
			conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if n, err := conn.Read(buf); err == nil {
				if msg := string(buf[:n]); strings.Contains(msg, "READY=1") || strings.Contains(msg, "WATCHDOG=1") {
					last = time.Now()
				}
			}
			if !last.IsZero() && time.Since(last) > watchdog {
				cmd.Process.Signal(syscall.SIGABRT)
				<-exited
				kills++
				break watch
			}
			if _, err := os.Stat(filepath.Join(in, "done", "z.png")); err == nil {
				cmd.Process.Signal(syscall.SIGTERM)
				<-exited
				break watch
			}
		}
		time.Sleep(100 * time.Millisecond) // RestartSec
	}
	if kills != 2 {
		t.Errorf("%d watchdog kills, want 2 (source.max_attempts)", kills)
	}
	reason, err := os.ReadFile(filepath.Join(in, "failed", "poison.png.reason.txt"))
	if err != nil || !strings.Contains(string(reason), "max_attempts") {
		t.Fatalf("reason file: %q %v", reason, err)
	}
	t.Logf("given up after %d watchdog kills: %s", kills, strings.TrimSpace(string(reason)))
}
