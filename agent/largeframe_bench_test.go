package agent

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/disintegration/imaging"

	"github.com/forestwatch/forest/segment"
)

// TestLargeFrames is issue 21's benchmark: streams of camera JPEGs at the
// sizes drones and masts take (12 MP, 20 MP, 48 MP) through the real
// binary with the device's default config (firmware/agent.yaml's segment
// and encode sections), one process per size. It reports the peak RSS
// (VmHWM); the time per frame against decode + segment alone on the same
// frame in this process (same model, threads and tiling), timed right
// after the agent spooled it, as the median of those per-frame ratios;
// and each stage's share (forest_agent_stage_seconds). Bars: ≤ 150 MB and
// ≤ 1.2× for 12 MP; a 48-MP frame (over segment.max_pixels) is refused
// before decoding, with its reason, and memory stays bounded.
//
// The frames are mosaics of the OAM-TCD aerial tiles in ../shared/data
// (real canopy, about 30 cm per pixel) saved as camera JPEGs (quality 90,
// 4:2:0). It takes minutes, so it runs only with FOREST_AGENT_RSS=1
// (make bench sets it).
func TestLargeFrames(t *testing.T) {
	if os.Getenv("FOREST_AGENT_RSS") == "" {
		t.Skip("set FOREST_AGENT_RSS=1 to run (several minutes)")
	}
	needModel(t)
	tiles, _ := filepath.Glob("../../shared/data/aerial-trees/oam-tcd-640/images/*.jpg")
	if len(tiles) == 0 {
		t.Fatal("no OAM-TCD tiles under ../../shared/data/aerial-trees/oam-tcd-640/images")
	}
	t.Setenv("FOREST_DEVICE_ID", "bench")
	def, err := LoadConfig("../firmware/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	model := deviceModel(t, def)
	bin := buildBinary(t)
	for _, c := range []struct {
		name   string
		w, h   int
		frames int
		refuse bool
	}{
		{"12MP", 4000, 3000, 12, false},
		{"20MP", 5472, 3648, 4, false},
		{"48MP", 8000, 6000, 1, true},
	} {
		dir := t.TempDir()
		in := filepath.Join(dir, "in")
		os.MkdirAll(in, 0o755)
		var frames [][]byte
		for i := range c.frames {
			frames = append(frames, mosaicJPEG(t, tiles, c.w, c.h, i))
		}
		var ref *segment.Model
		if !c.refuse {
			ref = loadReference(t, model, def)
		}
		listen := freeAddr(t)
		cfg := filepath.Join(dir, "agent.yaml")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`device: {id: bench, state_dir: %[1]s/state}
source: {type: dir, dir: {path: %[2]s, settle: 50ms, after: delete}}
segment: {model: %[3]s, threads: %[5]d, tiling: %[6]s, max_pixels: %[7]d}
encode: {mode: %[8]s, min_ssim: %[9]v}
spool: {dir: %[1]s/spool, min_free_bytes: 0}
http: {listen: "%[4]s"}
log: {level: debug}
`, dir, in, model, listen, def.Segment.Threads, def.Segment.Tiling, def.Segment.MaxPixels, def.Encode.Mode, def.Encode.MinSSIM)), 0o644)
		var stderr bytes.Buffer
		cmd := exec.Command(bin, "run", "--config", cfg)
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		base := "http://" + listen
		// One frame at a time: the agent takes frame i, then decode +
		// segment alone runs on the same frame in this process, so the two
		// times of a pair are seconds apart and the machine's drifting load
		// weighs on both alike.
		var raw []float64
		t0 := time.Now()
		for i, b := range frames {
			os.WriteFile(filepath.Join(in, fmt.Sprintf("DJI_%04d.JPG", i)), b, 0o644)
			for {
				if c.refuse {
					if _, err := os.Stat(filepath.Join(in, "failed", "DJI_0000.JPG.reason.txt")); err == nil {
						break
					}
				} else if metric(t, base, "forest_agent_frames_spooled_total") >= float64(i+1) {
					break
				}
				if time.Since(t0) > 20*time.Minute {
					t.Fatalf("%s: frame %d of %d not spooled in 20 minutes", c.name, i+1, c.frames)
				}
				time.Sleep(200 * time.Millisecond)
			}
			if ref != nil {
				raw = append(raw, decodeSegmentMs(t, ref, def, b))
			}
		}
		hwm := float64(procKB(cmd.Process.Pid, "VmHWM")) / 1024
		stages := map[string]float64{}
		var total float64
		for _, s := range []string{"decode", "segment", "encode", "mask", "put"} {
			stages[s] = metric(t, base, fmt.Sprintf(`forest_agent_stage_seconds_sum{stage=%q}`, s))
			total += stages[s]
		}
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if c.refuse {
			reason, _ := os.ReadFile(filepath.Join(in, "failed", "DJI_0000.JPG.reason.txt"))
			t.Logf("%s (%dx%d): refused: %s; peak RSS %.0f MB", c.name, c.w, c.h, strings.TrimSpace(string(reason)), hwm)
			if !strings.Contains(string(reason), "max_pixels") {
				t.Errorf("%s: reason %q does not name max_pixels", c.name, reason)
			}
			if hwm > 150 {
				t.Errorf("%s: peak RSS %.0f MB while refusing a frame", c.name, hwm)
			}
			continue
		}
		// Per-frame times from the agent's own log, in the order the frames
		// were given; the median keeps the first pair's warm-up out of the figure.
		var pipe, ratios []float64
		for i, m := range regexp.MustCompile(`msg="frame spooled".* ms=(\d+)`).FindAllStringSubmatch(stderr.String(), -1) {
			v, _ := strconv.ParseFloat(m[1], 64)
			pipe = append(pipe, v)
			if i < len(raw) {
				ratios = append(ratios, v/raw[i])
			}
		}
		if len(pipe) != c.frames {
			t.Fatalf("%s: %d frame times in the log, want %d", c.name, len(pipe), c.frames)
		}
		share := func(s string) float64 { return 100 * stages[s] / total }
		ratio := median(ratios)
		t.Logf("%s (%dx%d, %d frames, model %s, tiling %s): peak RSS (VmHWM) %.0f MB; per frame: pipeline median %.0f ms, decode+segment alone %.0f ms, median ratio of the pairs %.2f (%.2f-%.2f); shares: decode %.0f%%, segment %.0f%%, encode %.0f%%, mask %.0f%%, put %.0f%%",
			c.name, c.w, c.h, c.frames, filepath.Base(model), def.Segment.Tiling, hwm, median(pipe), median(raw), ratio, slices.Min(ratios), slices.Max(ratios),
			share("decode"), share("segment"), share("encode"), share("mask"), share("put"))
		if c.name == "12MP" {
			if hwm > 150 {
				t.Errorf("12 MP: peak RSS %.0f MB exceeds the 150 MB bar", hwm)
			}
			if ratio > 1.2 {
				t.Errorf("12 MP: pipeline %.2f× decode+segment, bar 1.2×", ratio)
			}
		}
	}
}

// loadReference loads the agent's model with its settings, for
// decodeSegmentMs; the test closes it.
func loadReference(t *testing.T, model string, def *Config) *segment.Model {
	tiling, _ := segment.ParseTiling(def.Segment.Tiling)
	m, err := segment.Load(model, segment.Options{Threads: def.Segment.Threads, Tiling: tiling})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// decodeSegmentMs times segment.Decode + Model.Segment alone on one frame.
func decodeSegmentMs(t *testing.T, m *segment.Model, def *Config, frame []byte) float64 {
	t0 := time.Now()
	f, err := segment.Decode(frame, def.Segment.MaxPixels)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Segment(f.Image); err != nil {
		t.Fatal(err)
	}
	return float64(time.Since(t0).Microseconds()) / 1000
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// mosaicJPEG paves a w×h frame with the aerial tiles, starting at tile k,
// and encodes it as a camera would (JPEG quality 90, 4:2:0).
func mosaicJPEG(t *testing.T, tiles []string, w, h, k int) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y += 640 {
		for x := 0; x < w; x += 640 {
			src, err := imaging.Open(tiles[k%len(tiles)])
			if err != nil {
				t.Fatal(err)
			}
			k++
			img = imaging.Paste(img, src, image.Pt(x, y))
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
