package agent

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// procKB reads a "Vm..." line of /proc/<pid>/status in KiB.
func procKB(pid int, key string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, ln := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(ln, key+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return -1
}

// TestRSS1000Frames runs the real binary with the device's default model
// (firmware/agent.yaml's), offline, spooling 1,000 frames (the shipped
// samples round-robin: four 256×256 Sentinel-2 tiles and one 1024×1024 NEON
// JPEG), and reports its peak RSS (VmHWM), with the default settings (2 ONNX
// Runtime threads, encode.mode auto; the system libwebp when installed, as
// the device package recommends). Target: ≤ 120 MB (BENCHMARKS.md). It takes
// about seven minutes, so it runs only with FOREST_AGENT_RSS=1 (make bench
// sets it).
func TestRSS1000Frames(t *testing.T) {
	if os.Getenv("FOREST_AGENT_RSS") == "" {
		t.Skip("set FOREST_AGENT_RSS=1 to run (several minutes)")
	}
	needModel(t)
	frames := 1000
	if n, err := strconv.Atoi(os.Getenv("FOREST_AGENT_RSS_FRAMES")); err == nil && n > 0 {
		frames = n
	}
	dir := t.TempDir()
	incoming := filepath.Join(dir, "incoming")
	os.MkdirAll(incoming, 0o755)
	samples := sampleFrames(t)
	for i := 0; i < frames; i++ {
		src := samples[i%len(samples)]
		copyFile(t, src, filepath.Join(incoming, fmt.Sprintf("f%04d%s", i, filepath.Ext(src))))
	}
	t.Setenv("FOREST_DEVICE_ID", "rss-1")
	def, err := LoadConfig("../firmware/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	model := deviceModel(t, def)
	listen := freeAddr(t)
	cfgPath := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`device: {id: rss-1, state_dir: %[1]s/state}
source: {type: dir, dir: {path: %[2]s, settle: 50ms, after: delete}}
segment: {model: %[3]s}
spool: {dir: %[1]s/spool, min_free_bytes: 0}
http: {listen: "%[4]s"}
log: {level: warn}
`, dir, incoming, model, listen)), 0o644)
	bin := buildBinary(t)
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Log(stderr.String())
		}
	}()
	base := "http://" + listen
	t0 := time.Now()
	var maxRSS int64
	for {
		if r := procKB(cmd.Process.Pid, "VmRSS"); r > maxRSS {
			maxRSS = r
		}
		if metric(t, base, "forest_agent_frames_spooled_total") >= float64(frames) {
			break
		}
		if time.Since(t0) > 20*time.Minute {
			t.Fatal("1000 frames not spooled in 20 minutes")
		}
		time.Sleep(200 * time.Millisecond)
	}
	elapsed := time.Since(t0)
	hwm := procKB(cmd.Process.Pid, "VmHWM")
	rss := procKB(cmd.Process.Pid, "VmRSS")
	spoolBytes := metric(t, base, "forest_agent_spool_bytes")
	t.Logf("GOMEMLIMIT=%q MALLOC_ARENA_MAX=%q", os.Getenv("GOMEMLIMIT"), os.Getenv("MALLOC_ARENA_MAX"))
	t.Logf("spooled %d frames in %s (%.1f frames/s); RSS now %.1f MB, sampled max %.1f MB, peak (VmHWM) %.1f MB; spool %.1f MB",
		frames, elapsed.Round(time.Second), float64(frames)/elapsed.Seconds(), float64(rss)/1024, float64(maxRSS)/1024, float64(hwm)/1024, spoolBytes/(1<<20))
	if hwm > 120*1024 {
		t.Errorf("peak RSS %.1f MB exceeds the 120 MB target", float64(hwm)/1024)
	}
}
