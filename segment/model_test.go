package segment

import (
	"errors"
	"image"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

func TestTinySmoke(t *testing.T) {
	m := loadModel(t, "testdata/tiny.onnx", Options{Threads: 1})
	info := m.Info()
	if info.ID != "tiny-green" || info.Version != "0.0.1" || info.Width != 32 || info.Height != 32 ||
		!slices.Equal(info.Classes, []string{"forest"}) || info.ForestChannel != 0 || info.SizeMultiple != 8 {
		t.Fatalf("Info() = %+v", info)
	}
	// Green rises with x: forest (G > 127.5) exactly for x >= 16.
	img := greenRamp(32, 32, func(x, y int) uint8 { return uint8(x * 8) })
	res, err := m.Segment(img)
	if err != nil {
		t.Fatal(err)
	}
	if res.Mask.Bounds() != image.Rect(0, 0, 32, 32) {
		t.Fatalf("mask bounds %v", res.Mask.Bounds())
	}
	for y := 0; y < 32; y++ {
		for x := 0; x < 32; x++ {
			want := uint8(0)
			if x >= 16 {
				want = 255
			}
			if got := res.Mask.GrayAt(x, y).Y; got != want {
				t.Fatalf("mask(%d,%d) = %d, want %d", x, y, got, want)
			}
		}
	}
	if res.Coverage != 0.5 || res.Runs != 1 || res.Total <= 0 || res.Inference <= 0 {
		t.Fatalf("result %+v", res.Timings)
	}
	// Golden pre-processing through the real runtime: output = (G/255 - 0.5) / 0.5.
	for i, v := range m.outData {
		x := i % 32
		want := float32(x*8)/127.5 - 1
		if math.Abs(float64(v-want)) > 1e-5 {
			t.Fatalf("logit[%d] = %v, want %v", i, v, want)
		}
	}
}

func TestThresholdOption(t *testing.T) {
	// p = sigmoid(G/127.5-1) > 0.7  <=>  G > 127.5*(1+logit(0.7)) = 235.5 → x*8 >= 236 → x >= 30.
	m := loadModel(t, "testdata/tiny.onnx", Options{Threads: 1, Threshold: 0.7})
	res, err := m.Segment(greenRamp(32, 32, func(x, y int) uint8 { return uint8(x * 8) }))
	if err != nil {
		t.Fatal(err)
	}
	if want := 2.0 / 32; res.Coverage != want {
		t.Fatalf("coverage %v, want %v", res.Coverage, want)
	}
}

func TestTwoClassLogitsAndBGR(t *testing.T) {
	props := tinyProps()
	props[KeyClasses] = "non_forest,forest"
	m := loadModel(t, withMetadata(t, "testdata/tiny-2class-nometa.onnx", props), Options{Threads: 1})
	res, err := m.Segment(greenRamp(32, 32, func(x, y int) uint8 { return uint8(y * 8) }))
	if err != nil {
		t.Fatal(err)
	}
	if m.Info().ForestChannel != 1 || res.Coverage != 0.5 || res.Mask.GrayAt(0, 15).Y != 0 || res.Mask.GrayAt(0, 16).Y != 255 {
		t.Fatalf("forest channel %d coverage %v", m.Info().ForestChannel, res.Coverage)
	}

	// BGR: the model's channel 1 is still green; channel 0 would be blue.
	props = tinyProps()
	props[KeyChannelOrder] = "BGR"
	props[KeyMean] = "0,0.5,0"
	m2 := loadModel(t, withMetadata(t, "testdata/tiny-nometa.onnx", props), Options{Threads: 1})
	if _, err := m2.Segment(greenRamp(32, 32, func(x, y int) uint8 { return uint8(x * 8) })); err != nil {
		t.Fatal(err)
	}
	// Plane 0 must hold blue (y*13), normalised with mean 0.
	for i, v := range m2.planes[0] {
		y := i / 32
		if want := float32(uint8(y*13)) / 255 / 0.5; math.Abs(float64(v-want)) > 1e-5 {
			t.Fatalf("BGR plane0[%d] = %v, want %v", i, v, want)
		}
	}
}

func TestMissingMetadata(t *testing.T) {
	requireRuntime(t)
	_, err := Load("testdata/tiny-nometa.onnx", Options{})
	var me *MetadataError
	if !errors.Is(err, ErrMetadata) || !errors.As(err, &me) {
		t.Fatalf("Load without metadata: %v, want *MetadataError", err)
	}
	if !slices.Equal(me.Missing, requiredKeys) {
		t.Fatalf("missing %v, want %v", me.Missing, requiredKeys)
	}

	props := tinyProps()
	delete(props, KeyMean)
	delete(props, KeyOutputName)
	_, err = Load(withMetadata(t, "testdata/tiny-nometa.onnx", props), Options{})
	if !errors.As(err, &me) || !slices.Equal(me.Missing, []string{KeyOutputName, KeyMean}) {
		t.Fatalf("Load with partial metadata: %v", err)
	}
	for _, k := range []string{KeyOutputName, KeyMean} {
		if !contains(me.Error(), k) {
			t.Fatalf("error %q does not name %s", me.Error(), k)
		}
	}
}

// TestExtraInputRefused: a graph input the package does not feed is refused at Load, not
// left to fail every frame.
func TestExtraInputRefused(t *testing.T) {
	requireRuntime(t)
	_, err := Load("testdata/tiny-two-inputs.onnx", Options{})
	if !errors.Is(err, ErrUnsupportedModel) || !contains(err.Error(), `"frame_stats"`) {
		t.Fatalf("Load with an input the package does not feed: %v", err)
	}
}

func TestInvalidMetadata(t *testing.T) {
	requireRuntime(t)
	cases := []struct {
		key, value string
		want       error
	}{
		{KeyLayout, "NHWC", ErrMetadata},
		{KeyInputSize, "big", ErrMetadata},
		{KeyInputSize, "64x64", ErrUnsupportedModel}, // graph is 32x32
		{KeyStd, "0.5,0,0.5", ErrMetadata},
		{KeyMean, "0.5,0.5", ErrMetadata},
		{KeyOutput, "softmax", ErrMetadata},
		{KeyInputName, "pixels", ErrMetadata},
		{KeyOutputName, "mask", ErrMetadata},
		{KeyClasses, "non_forest,forest", ErrUnsupportedModel}, // graph has 1 output channel
		{KeyClasses, "trees", ErrMetadata},                     // no forest class, no forest_channel
		{KeySizeMultiple, "5", ErrMetadata},
		{KeyThreshold, "1.5", ErrMetadata},
	}
	for _, c := range cases {
		props := tinyProps()
		props[c.key] = c.value
		_, err := Load(withMetadata(t, "testdata/tiny-nometa.onnx", props), Options{})
		if !errors.Is(err, c.want) {
			t.Errorf("%s=%q: err %v, want %v", c.key, c.value, err, c.want)
		}
	}
}

func TestBadLibraryPath(t *testing.T) {
	requireRuntime(t)
	_, err := Load("testdata/tiny.onnx", Options{LibraryPath: filepath.Join(t.TempDir(), "libonnxruntime.so")})
	if !errors.Is(err, ErrRuntime) {
		t.Fatalf("Load with bad library: %v, want ErrRuntime", err)
	}
	// The failure must leave the runtime usable.
	loadModel(t, "testdata/tiny.onnx", Options{})
}

func TestLoadMissingFile(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "none.onnx"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err %v, want ErrNotExist", err)
	}
}

func TestSegmentErrors(t *testing.T) {
	m := loadModel(t, "testdata/tiny.onnx", Options{})
	if _, err := m.Segment(nil); !errors.Is(err, ErrEmptyImage) {
		t.Fatalf("nil image: %v", err)
	}
	if _, err := m.Segment(image.NewGray(image.Rect(0, 0, 0, 5))); !errors.Is(err, ErrEmptyImage) {
		t.Fatalf("empty image: %v", err)
	}
	m2, err := Load("testdata/tiny.onnx", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m2.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := m2.Segment(image.NewGray(image.Rect(0, 0, 4, 4))); !errors.Is(err, ErrClosed) {
		t.Fatalf("Segment after Close: %v", err)
	}
}

func TestRuntimeVersion(t *testing.T) {
	requireRuntime(t)
	v, path, err := RuntimeVersion("")
	if err != nil || v == "" || v[0] < '1' || v[0] > '9' {
		t.Fatalf("RuntimeVersion(\"\") = %q, %v", v, err)
	}
	t.Logf("ONNX Runtime %s from %s", v, path)
}

func TestConcurrentSegment(t *testing.T) {
	m := loadModel(t, "testdata/tiny.onnx", Options{Threads: 1})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for k := 0; k < 20; k++ {
				cut := 4 * (i + 1) // forest where x >= cut
				res, err := m.Segment(greenRamp(32, 32, func(x, y int) uint8 {
					if x >= cut {
						return 200
					}
					return 50
				}))
				if err != nil {
					errs <- err
					return
				}
				if want := float64(32-cut) / 32; res.Coverage != want {
					errs <- errors.New("coverage mixed up between concurrent calls")
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestResizeAndTile checks both strategies on frames of other sizes. The tiny model is
// per-pixel, so Tile mode must reproduce the per-pixel threshold exactly at any size,
// and Resize mode exactly on block-constant frames that are integer multiples.
func TestResizeAndTile(t *testing.T) {
	g := func(x, y int) uint8 {
		if (x/8+y/8)%2 == 0 {
			return 220
		}
		return 30
	}
	want := func(x, y int) uint8 {
		if g(x, y) > 127 {
			return 255
		}
		return 0
	}
	for _, c := range []struct {
		mode Tiling
		w, h int
		ov   int
	}{
		{Tile, 100, 45, 0}, {Tile, 64, 32, 0}, {Tile, 257, 33, 7}, {Tile, 32, 32, 0},
		{Resize, 64, 64, 0}, {Resize, 16, 16, 0}, {Resize, 32, 32, 0},
	} {
		m := loadModel(t, "testdata/tiny.onnx", Options{Threads: 1, Tiling: c.mode, TileOverlap: c.ov})
		// Resize 32→16 averages 2×2 blocks: use 16-pixel checker squares so they stay pure.
		gg, ww := g, want
		if c.w == 16 {
			gg = func(x, y int) uint8 { return g(x*2, y*2) }
			ww = func(x, y int) uint8 { return want(x*2, y*2) }
		}
		res, err := m.Segment(greenRamp(c.w, c.h, gg))
		if err != nil {
			t.Fatal(err)
		}
		if res.Mask.Bounds().Dx() != c.w || res.Mask.Bounds().Dy() != c.h {
			t.Fatalf("%v %dx%d: mask %v", c.mode, c.w, c.h, res.Mask.Bounds())
		}
		n := 0
		bad := 0
		for y := 0; y < c.h; y++ {
			for x := 0; x < c.w; x++ {
				v := res.Mask.GrayAt(x, y).Y
				if v == 255 {
					n++
				}
				if v != ww(x, y) {
					bad++
				}
			}
		}
		// Resize mode interpolates scores at block edges when upscaling; allow those.
		limit := 0
		if c.mode == Resize && c.w > 32 {
			limit = c.w * c.h / 16
		}
		if bad > limit {
			t.Errorf("%v %dx%d overlap %d: %d pixels differ from the reference", c.mode, c.w, c.h, c.ov, bad)
		}
		if got := float64(n) / float64(c.w*c.h); got != res.Coverage {
			t.Errorf("coverage %v, mask says %v", res.Coverage, got)
		}
		if c.mode == Tile && c.w == 100 && res.Runs != 4*2 {
			t.Errorf("100x45 in tiles of 32 overlapping 4: %d runs, want 8", res.Runs)
		}
	}
}

func contains(s, sub string) bool { return len(sub) == 0 || indexOf(s, sub) >= 0 }

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}
