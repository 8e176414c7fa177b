package segment

import (
	"fmt"
	"image"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/benchframe"
)

const shippedModel = "models/forest-unet-v1.onnx"

// benchFrame returns a w×h frame made of real tiles from testdata (repeated as needed).
func benchFrame(tb testing.TB, w, h int) *image.NRGBA {
	tb.Helper()
	tiles := realTiles(tb)
	out := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y += 256 {
		for x := 0; x < w; x += 256 {
			src := tiles[(x/256+y/256)%len(tiles)].img
			for yy := 0; yy < 256 && y+yy < h; yy++ {
				for xx := 0; xx < 256 && x+xx < w; xx++ {
					out.Set(x+xx, y+yy, src.At(src.Bounds().Min.X+xx, src.Bounds().Min.Y+yy))
				}
			}
		}
	}
	return out
}

// BenchmarkSegment compares Model.Segment with a bare onnxruntime_go Run on the same
// pre-built input tensor, interleaved in the same loop so that both see the same machine
// load. It reports the median of each and their ratio (x_bare; target ≤ 1.10). In Tile
// mode the bare time is multiplied by the number of windows.
func BenchmarkSegment(b *testing.B) {
	if _, err := os.Stat(shippedModel); err != nil {
		b.Skipf("shipped model missing: %v", err)
	}
	for _, c := range []struct {
		size    int
		threads int
		mode    Tiling
	}{
		{256, 1, Resize}, {256, 2, Resize}, {512, 1, Resize}, {512, 2, Resize}, {512, 1, Tile}, {512, 2, Tile},
	} {
		b.Run(fmt.Sprintf("%dx%d/threads=%d/%s", c.size, c.size, c.threads, c.mode), func(b *testing.B) {
			m := loadModel(b, shippedModel, Options{Threads: c.threads, Tiling: c.mode})
			frame := benchFrame(b, c.size, c.size)
			benchAgainstBare(b, m, frame)
		})
	}
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// rssBytes returns the process's resident set size from /proc/self/status.
func rssBytes(tb testing.TB) int64 {
	tb.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb * 1024
		}
	}
	tb.Skip("VmRSS not found")
	return 0
}

func settledRSS(tb testing.TB) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	return rssBytes(tb)
}

// TestNoRSSGrowth segments 10,000 frames with the shipped model and fails if resident
// memory grows by more than 8 MiB after warm-up. It takes a few minutes; -short skips it.
func TestNoRSSGrowth(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 inferences; skipped with -short")
	}
	if _, err := os.Stat(shippedModel); err != nil {
		t.Fatalf("shipped model missing: %v", err)
	}
	m := loadModel(t, shippedModel, Options{Threads: 1})
	frames := []image.Image{benchFrame(t, 256, 256), benchFrame(t, 300, 200)}
	for i := 0; i < 200; i++ {
		if _, err := m.Segment(frames[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	before := settledRSS(t)
	start := time.Now()
	const n = 10000
	for i := 0; i < n; i++ {
		if _, err := m.Segment(frames[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	after := settledRSS(t)
	t.Logf("RSS before %.1f MiB, after %d frames %.1f MiB (delta %+.2f MiB) in %v",
		float64(before)/(1<<20), n, float64(after)/(1<<20), float64(after-before)/(1<<20), time.Since(start).Round(time.Second))
	if after-before > 8<<20 {
		t.Fatalf("RSS grew by %.1f MiB over %d frames", float64(after-before)/(1<<20), n)
	}
}

// aerialFrame returns a w×h frame of real aerial imagery: the sample tile in testdata/aerial
// mirrored edge to edge (the tiling costs the same whatever the content).
func aerialFrame(tb testing.TB, w, h int) *image.NRGBA {
	tb.Helper()
	return benchframe.Mirrored(sampleTile(tb).img, w, h)
}

// BenchmarkSegmentAerial times the aerial model with the package's default tiling (Auto) on
// large frames of real aerial imagery, 2 ONNX Runtime threads, against ONNX Runtime alone on
// the same windows: a bare AdvancedSession.Run repeated once per window on the pre-built
// input tensor, interleaved with Segment in the same loop (as BenchmarkSegment) so both see
// the same machine load. x_bare is the ratio of the medians: what tiling, blending and
// thresholding add to the inferences. FOREST_BENCH_SIZES (e.g. "2048x2048") restricts the
// sizes (for runs under qemu).
func BenchmarkSegmentAerial(b *testing.B) {
	sizes := []string{"2048x2048", "4000x3000"}
	if s := os.Getenv("FOREST_BENCH_SIZES"); s != "" {
		sizes = strings.Split(s, ",")
	}
	for _, size := range sizes {
		var w, h int
		if _, err := fmt.Sscanf(size, "%dx%d", &w, &h); err != nil {
			b.Fatalf("size %q: %v", size, err)
		}
		b.Run(size+"/threads=2/auto", func(b *testing.B) {
			m := loadModel(b, aerialModel, Options{Threads: 2})
			frame := aerialFrame(b, w, h)
			benchAgainstBare(b, m, frame)
		})
	}
}

// benchAgainstBare times m.Segment(frame) against a bare AdvancedSession.Run repeated once
// per window the frame takes, on the pre-built input tensor, interleaved in one loop
// (alternating which goes first, so neither gets the warmer caches) so that both see the
// same machine load, and reports the medians, their ratio (x_bare), Segment's stages and
// the window count.
func benchAgainstBare(b *testing.B, m *Model, frame image.Image) {
	b.Helper()
	res, err := m.Segment(frame) // warm up, build the tensor and grow the buffers once
	if err != nil {
		b.Fatal(err)
	}
	runs := res.Runs
	bareRuns := func() time.Duration {
		t := time.Now()
		for r := 0; r < runs; r++ {
			if err := m.sess.Run(); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t)
	}
	var seg, bare, pre, inf, post []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 1 {
			bare = append(bare, bareRuns())
		}
		t0 := time.Now()
		res, err := m.Segment(frame)
		if err != nil {
			b.Fatal(err)
		}
		seg = append(seg, time.Since(t0))
		pre = append(pre, res.Preprocess)
		inf = append(inf, res.Inference)
		post = append(post, res.Postprocess)
		if res.Runs != runs {
			b.Fatalf("%d windows, then %d", runs, res.Runs)
		}
		if i%2 == 0 {
			bare = append(bare, bareRuns())
		}
	}
	b.StopTimer()
	ms, mb := median(seg), median(bare)
	b.ReportMetric(float64(ms.Microseconds())/1000, "segment_ms")
	b.ReportMetric(float64(mb.Microseconds())/1000, "bare_run_ms")
	b.ReportMetric(float64(ms)/float64(mb), "x_bare")
	b.ReportMetric(float64(median(pre).Microseconds())/1000, "pre_ms")
	b.ReportMetric(float64(median(inf).Microseconds())/1000, "inference_ms")
	b.ReportMetric(float64(median(post).Microseconds())/1000, "post_ms")
	b.ReportMetric(float64(runs), "windows")
}
