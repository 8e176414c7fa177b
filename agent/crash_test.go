package agent

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forestwatch/forest/wire"
)

// TestDirCrashRestart SIGKILLs the real binary at random points while it
// takes files from a dir source, restarts it, and checks at the end that
// every file was spooled, under exactly one frame id, and that distinct
// files never share a frame id. Re-spooling a file under its same id is
// allowed only in the microseconds between Put's return and the journal
// write; the test counts such copies.
func TestDirCrashRestart(t *testing.T) {
	needModel(t)
	if testing.Short() {
		t.Skip("-short")
	}
	const files = 30
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.MkdirAll(in, 0o755)
	samples := sampleFrames(t)[:4] // the 256×256 tiles
	for i := 0; i < files; i++ {
		copyFile(t, samples[i%len(samples)], filepath.Join(in, fmt.Sprintf("f%03d.png", i)))
	}
	model, _ := filepath.Abs(modelPath)
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`device: {id: crash-1, state_dir: %[1]s/state}
source: {type: dir, dir: {path: %[2]s, settle: 20ms, after: move}}
segment: {model: %[3]s, threads: 1}
spool: {dir: %[1]s/spool, min_free_bytes: 0}
http: {listen: ""}
log: {level: warn}
`, dir, in, model)), 0o644)
	bin := buildBinary(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	kills := 0
	for life := 0; ; life++ {
		left, _ := filepath.Glob(filepath.Join(in, "*.png"))
		if len(left) == 0 {
			break
		}
		if life > 200 {
			t.Fatalf("%d files still not taken after 200 lives", len(left))
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
	q := openSpoolT(t, filepath.Join(dir, "spool"))
	recs, err := q.Next(10 * files)
	if err != nil {
		t.Fatal(err)
	}
	idsByFile := map[string]map[string]int{}
	fileByID := map[string]string{}
	for _, r := range recs {
		var m Meta
		if err := json.Unmarshal(r.Meta, &m); err != nil {
			t.Fatal(err)
		}
		id := wire.FrameID(m.Device, m.Seq)
		if idsByFile[m.Source] == nil {
			idsByFile[m.Source] = map[string]int{}
		}
		idsByFile[m.Source][id]++
		if f, ok := fileByID[id]; ok && f != m.Source {
			t.Fatalf("frame id %s used for %s and %s", id, f, m.Source)
		}
		fileByID[id] = m.Source
	}
	dups := 0
	for i := 0; i < files; i++ {
		src := fmt.Sprintf("dir:f%03d.png", i)
		ids := idsByFile[src]
		if len(ids) != 1 {
			t.Errorf("%s spooled under %d frame ids %v, want exactly one", src, len(ids), ids)
		}
		for _, n := range ids {
			dups += n - 1
		}
		if _, err := os.Stat(filepath.Join(in, "done", fmt.Sprintf("f%03d.png", i))); err != nil {
			t.Errorf("f%03d.png not in done/: %v", i, err)
		}
	}
	t.Logf("%d files, %d SIGKILLs, %d records, %d same-id copies", files, kills, len(recs), dups)
}
