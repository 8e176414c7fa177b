package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/internal/s3test"
	"github.com/forestwatch/forest/spool"
)

// TestDeviceSoak is a month of one unattended device, time-compressed
// (`make soak-device`: FOREST_SOAK_DEVICE_FRAMES=20000; one simulated hour
// lasts FOREST_SOAK_DEVICE_HOUR, default 2s, so a month is 24 minutes):
//
//   - a camera drops frames into the real forest-agent binary, as a dir
//     source with after: move, spool and files on one real 32 MiB disk
//     with an 8 MiB free-disk reserve: the disk is near full for most of
//     the month;
//   - the link is down 80 % of the time, in stretches of 2 to 10 hours;
//   - the agent runs under a stand-in for systemd: a 1 s watchdog that
//     aborts it when the keep-alives stop, and Restart=always;
//   - every 2,500th frame is a poison file, a 36-MP PNG that hangs the
//     agent past its watchdog;
//   - the camera holds back while 200 frames wait (its own buffer), as a
//     camera writing faster than a restarting agent reads would otherwise
//     fill the disk itself.
//
// Then the link comes up for good and the spool drains. The tally (also
// written to FOREST_E2E_TALLY) counts frames captured, delivered exactly
// once, evicted and quarantined by reason, poison files given up, peak
// disk use and peak RSS. Every frame is in S3 exactly once or counted as
// evicted by the spool; nothing is quarantined; every poison file ends in
// failed/.
func TestDeviceSoak(t *testing.T) {
	frames := envInt("FOREST_SOAK_DEVICE_FRAMES", 0)
	if frames == 0 {
		t.Skip("the device soak runs with FOREST_SOAK_DEVICE_FRAMES set (make soak-device)")
	}
	hour := 2 * time.Second
	if d, err := time.ParseDuration(os.Getenv("FOREST_SOAK_DEVICE_HOUR")); err == nil && d > 0 {
		hour = d
	}
	month := 30 * 24 * hour
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	bin := binaries(t)
	b := rabbittest.Start(t)
	srv := s3test.Start(t)
	s := &Stack{Dir: t.TempDir(), Bin: bin, Root: root, Broker: b, S3: srv, Bucket: srv.Bucket(t)}
	const device = "soak-1"
	disk := filepath.Join(s.Dir, device)
	os.MkdirAll(disk, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", disk).CombinedOutput(); err != nil {
		t.Fatalf("mount the device's disk (a tmpfs; needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", disk).Run() })
	// done/ keeps up to its default budget, more than the disk: it gives
	// way when the disk runs short.
	// Auto tiling, the device default: the 36-MP poison then runs in
	// hundreds of windows, seconds past the watchdog on any machine (with
	// resize it took about as long as the watchdog allows, and some lives
	// finished it).
	if err := s.Setup([]AgentOptions{{Device: device, SpoolMaxBytes: 20 << 20, SpoolMinFreeBytes: 8 << 20, Tiling: "auto"}}, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			dumpLogs(t, s)
		}
	})
	a := s.Agents[0]

	// systemd: the watchdog, and Restart=always.
	sock := filepath.Join(s.Dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const watchdog = time.Second
	a.Env = append(a.Env, "NOTIFY_SOCKET="+sock, fmt.Sprintf("WATCHDOG_USEC=%d", watchdog.Microseconds()))
	if err := s.Cloud.Start(); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { a.Supervise(ctx, 100*time.Millisecond, func(err error) { t.Error(err) }) })
	var aborts atomic.Int64
	wg.Go(func() {
		buf := make([]byte, 256)
		var last time.Time
		var lastPid int
		for ctx.Err() == nil {
			conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if n, err := conn.Read(buf); err == nil && (strings.Contains(string(buf[:n]), "WATCHDOG=1") || strings.Contains(string(buf[:n]), "READY=1")) {
				last = time.Now()
			}
			pid, running := a.Running()
			if pid != lastPid {
				lastPid, last = pid, time.Time{} // a new life: the watchdog starts at READY=1
			}
			if running && !last.IsZero() && time.Since(last) > watchdog {
				syscall.Kill(pid, syscall.SIGABRT)
				aborts.Add(1)
				last = time.Time{}
			}
		}
	})

	// The link: down 80 % of the time, in stretches of 2 to 10 hours.
	var downFor, upFor atomic.Int64
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(1, 2))
		for ctx.Err() == nil {
			down := time.Duration(2+rng.IntN(9)) * hour
			a.Refuse(true)
			a.Cut()
			sleep(ctx, down)
			downFor.Add(int64(down))
			up := down / 4
			a.Refuse(false)
			sleep(ctx, up)
			upFor.Add(int64(up))
		}
	})

	// Peak disk use and peak RSS, sampled.
	var peakDisk, peakRSS atomic.Int64
	wg.Go(func() {
		for ctx.Err() == nil {
			var st syscall.Statfs_t
			if syscall.Statfs(disk, &st) == nil {
				peakDisk.Store(max(peakDisk.Load(), int64(st.Blocks-st.Bfree)*st.Bsize))
			}
			if pid, ok := a.Running(); ok {
				peakRSS.Store(max(peakRSS.Load(), vmHWM(pid)))
			}
			sleep(ctx, 200*time.Millisecond)
		}
	})

	// The camera: frames at an even pace over the month, a poison file
	// every 2,500th. Like a real camera with its own buffer, it holds back
	// while the device has more than 200 frames waiting (when the agent is
	// restarting, or the machine is busy), and counts how long.
	src, err := LoadFrames(root, 256)
	if err != nil {
		t.Fatal(err)
	}
	poison := poisonPNG(t)
	captured := map[string]bool{}
	var poisons []string
	start := time.Now()
	var held time.Duration
	for i := range frames {
		if wait := time.Until(start.Add(month * time.Duration(i) / time.Duration(frames))); wait > 0 {
			time.Sleep(wait)
		}
		for t0 := time.Now(); ; time.Sleep(100 * time.Millisecond) {
			if pending, _ := os.ReadDir(a.Incoming); len(pending) < 200 {
				held += time.Since(t0)
				break
			}
		}
		if i%2500 == 1250 {
			name := fmt.Sprintf("poison-%05d.png", i)
			if _, err := Drop(a.Incoming, name, poison); err != nil {
				t.Fatal(err)
			}
			poisons = append(poisons, name)
		}
		f, err := src.Frame(i)
		if err != nil {
			t.Fatal(err)
		}
		sha, err := Drop(a.Incoming, fmt.Sprintf("f%06d.jpg", i), f)
		if err != nil {
			t.Fatalf("frame %d: the camera could not write (the agent must keep the disk usable): %v", i, err)
		}
		captured[sha] = true
	}
	captureTime := time.Since(start)

	// The link comes up for good; the spool drains.
	stop()
	wg.Wait()
	a.Refuse(false)
	ctx, stop = context.WithCancel(context.Background())
	wg.Go(func() { a.Supervise(ctx, 100*time.Millisecond, func(err error) { t.Error(err) }) })
	drained := waitDrained(t, s, 10*time.Minute)
	stop()
	wg.Wait()
	a.Stop(30 * time.Second)
	s.Cloud.Stop(30 * time.Second)
	if !drained {
		t.Error("the spool did not drain within 10 minutes of the link's return")
	}

	// Count.
	out, err := exec.Command(filepath.Join(bin, "forest-agent"), "spool", "stats", "--json", a.Spool).Output()
	if err != nil {
		t.Fatalf("spool stats: %v", err)
	}
	var st spool.Stats
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	stored, err := StoredFrames(context.Background(), s.S3.Client(), s.Bucket, "frames/")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, f := range stored {
		for _, p := range f.Problems {
			t.Errorf("%s: %s", f.Sidecar, p)
		}
		seen[f.ImageSHA256]++
	}
	var delivered, dups, missing int
	for sha := range captured {
		switch n := seen[sha]; {
		case n == 0:
			missing++
		case n == 1:
			delivered++
		default:
			dups++
		}
	}
	var evicted uint64
	for _, n := range st.Evictions {
		evicted += n
	}
	var quarantined uint64
	for _, n := range st.QuarantinedBy {
		quarantined += n
	}
	// A poison file given up is moved to failed/, which gives way when the
	// disk runs short: the agent's log says which it gave up.
	logText, _ := os.ReadFile(a.Log)
	failed := 0
	for _, p := range poisons {
		if strings.Contains(string(logText), p+": processing it began") {
			failed++
		}
	}
	logSummary(t, logText)
	down := float64(downFor.Load()) / float64(downFor.Load()+upFor.Load())
	dead := queueDepths(t, s)["forest.cloud.frames.dlq"]
	tally := fmt.Sprintf("TALLY TestDeviceSoak: simulated_days=30 hour=%s captured=%d delivered_once=%d duplicates=%d missing=%d "+
		"evicted=%v quarantined=%v poison_files=%d poison_given_up=%d watchdog_aborts=%d agent_starts=%d link_down=%.0f%% "+
		"peak_disk=%.1fMiB/32MiB peak_rss=%.0fMiB spool_left=%d dead_lettered=%d corrupt_renames=%d capture=%s camera_held=%s",
		hour, len(captured), delivered, dups, missing, st.Evictions, st.QuarantinedBy, len(poisons), failed, aborts.Load(), a.Starts(),
		100*down, float64(peakDisk.Load())/(1<<20), float64(peakRSS.Load())/(1<<20), st.Frames, dead, st.CorruptRenames, captureTime.Round(time.Second), held.Round(time.Second))
	t.Log(tally)
	reportTally(t, tally)
	if dups > 0 || uint64(missing) > evicted || quarantined > 0 || failed != len(poisons) || st.Frames != 0 || dead > 0 || st.CorruptRenames > 0 {
		t.Errorf("%d duplicates, %d missing for %d counted evictions, %d quarantined, %d of %d poison files given up, %d left in the spool",
			dups, missing, evicted, quarantined, failed, len(poisons), st.Frames)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// vmHWM returns the peak resident set of a process in bytes, 0 if unknown.
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// poisonPNG is a 36-MP PNG: it takes the agent seconds to decode and
// segment, more than its watchdog allows.
func poisonPNG(t *testing.T) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, 6000, 6000))
	for y := range 6000 {
		for x := range 6000 {
			img.SetNRGBA(x, y, color.NRGBA{uint8(x), uint8(y), uint8(x ^ y), 255})
		}
	}
	var b strings.Builder
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return []byte(b.String())
}

// logSummary logs how often each warning and error appears in an agent's
// JSON log.
func logSummary(t *testing.T, log []byte) {
	counts := map[string]int{}
	for _, line := range strings.Split(string(log), "\n") {
		var e struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &e) == nil && (e.Level == "WARN" || e.Level == "ERROR") {
			counts[e.Level+" "+e.Msg]++
		}
	}
	for m, n := range counts {
		t.Logf("agent log: %d × %s", n, m)
	}
}
