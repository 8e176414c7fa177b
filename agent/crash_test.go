package agent

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forestwatch/forest/wire"
)

// TestDirCrashRestart trickles files into a dir source while the real
// binary is SIGKILLed at random points and restarted, at least 30 times,
// and checks at the end that every file was spooled exactly once (one
// record, one frame id), that distinct files never share a frame id, and
// that every file was moved to done/.
func TestDirCrashRestart(t *testing.T) {
	needModel(t)
	if testing.Short() {
		t.Skip("-short")
	}
	const files, minKills = 80, 30
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.MkdirAll(in, 0o755)
	samples := sampleFrames(t)[:4] // the 256×256 tiles
	model, _ := filepath.Abs(modelPath)
	// A fixed-quality JPEG encode: lives of 150-850 ms must get frames
	// through, and the default WebP search (its WebAssembly compile in
	// the first frame and a few trial encodes per frame) is not what this test is
	// about.
	cfg := filepath.Join(dir, "agent.yaml")
	// The kills here hit whatever frame is in flight, several times the
	// same one on a slow machine: that is not the frame's fault, so
	// max_attempts is out of reach (TestPoisonFileUnderWatchdog covers it).
	os.WriteFile(cfg, []byte(fmt.Sprintf(`device: {id: crash-1, state_dir: %[1]s/state}
source: {type: dir, max_attempts: 1000, dir: {path: %[2]s, settle: 20ms, after: move}}
segment: {model: %[3]s, threads: 1}
encode: {mode: jpeg, min_ssim: 0}
spool: {dir: %[1]s/spool, min_free_bytes: 0}
http: {listen: ""}
log: {level: warn}
`, dir, in, model)), 0o644)
	bin := buildBinary(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))

	// The camera: a file every 0-150 ms, written under a temporary name and
	// renamed into place, as cameras and rsync do.
	var trickle sync.WaitGroup
	trickle.Go(func() {
		r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 8))
		for i := range files {
			tmp := filepath.Join(in, fmt.Sprintf(".f%03d.png.part", i))
			copyFile(t, samples[i%len(samples)], tmp)
			if err := os.Rename(tmp, filepath.Join(in, fmt.Sprintf("f%03d.png", i))); err != nil {
				t.Error(err)
			}
			time.Sleep(time.Duration(r.IntN(150)) * time.Millisecond)
		}
	})
	kills := 0
	for life := 0; ; life++ {
		left, _ := filepath.Glob(filepath.Join(in, "*.png"))
		done, _ := filepath.Glob(filepath.Join(in, "done", "*.png"))
		if len(left) == 0 && len(done) == files && kills >= minKills {
			break
		}
		if life > 300 {
			failed, _ := filepath.Glob(filepath.Join(in, "failed", "*"))
			t.Fatalf("after 300 lives: %d files not taken, %d in done/, failed/ holds %v", len(left), len(done), failed)
		}
		cmd := exec.Command(bin, "run", "--config", cfg)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(150+rng.IntN(700)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		kills++
		if strings.Contains(stderr.String(), "level=ERROR") {
			t.Logf("life %d stderr: %s", life, stderr.String())
		}
	}
	trickle.Wait()
	q := openSpoolT(t, filepath.Join(dir, "spool"))
	recs, err := q.Next(10 * files)
	if err != nil {
		t.Fatal(err)
	}
	records := map[string]int{}
	fileByID := map[string]string{}
	for _, r := range recs {
		var m Meta
		if err := json.Unmarshal(r.Meta, &m); err != nil {
			t.Fatal(err)
		}
		id := wire.FrameID(m.Device, m.seq(r.ID))
		records[m.Source]++
		if f, ok := fileByID[id]; ok {
			t.Errorf("frame id %s used for %s and %s", id, f, m.Source)
		}
		fileByID[id] = m.Source
	}
	for i := 0; i < files; i++ {
		if n := records[fmt.Sprintf("dir:f%03d.png", i)]; n != 1 {
			t.Errorf("f%03d.png spooled %d times, want exactly once", i, n)
		}
		if _, err := os.Stat(filepath.Join(in, "done", fmt.Sprintf("f%03d.png", i))); err != nil {
			t.Errorf("f%03d.png not in done/: %v", i, err)
		}
	}
	if len(recs) != files {
		t.Errorf("%d records for %d files", len(recs), files)
	}
	t.Logf("%d files trickled in, %d SIGKILLs, %d records", files, kills, len(recs))
}
