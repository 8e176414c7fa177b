package segment

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"math"
	"runtime"
	"testing"
)

type runtimeMem struct{ total int64 }

func (r *runtimeMem) read() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.total = int64(ms.TotalAlloc)
}

// tinyRuns is the window count for a frame of w×h with the tiny model (32×32, overlap 4).
func tinyRuns(w, h int) int {
	return len(tilePositions(max(w, 32), 32, 4)) * len(tilePositions(max(h, 32), 32, 4))
}

// checker is a green checkerboard of side-px squares: G 220 (forest for the tiny model) or 30.
func checker(w, h, side int) *image.NRGBA {
	return greenRamp(w, h, func(x, y int) uint8 {
		if (x/side+y/side)%2 == 0 {
			return 220
		}
		return 30
	})
}

// maskDiff counts mask pixels that differ from the checkerboard's forest squares, ignoring
// pixels within margin of a square's edge.
func maskDiff(mask *image.Gray, side, margin int) int {
	bad := 0
	b := mask.Bounds()
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			if margin > 0 {
				dx, dy := x%side, y%side
				if dx < margin || dx >= side-margin || dy < margin || dy >= side-margin {
					continue
				}
			}
			want := uint8(0)
			if (x/side+y/side)%2 == 0 {
				want = 255
			}
			if mask.GrayAt(x, y).Y != want {
				bad++
			}
		}
	}
	return bad
}

// TestAutoTiling: the default mode runs windows at the frame's own scale, mirror-pads frames
// smaller than the model input instead of stretching them, and (the tiny model being
// per-pixel) reproduces the per-pixel threshold exactly whatever the window layout.
func TestAutoTiling(t *testing.T) {
	for _, c := range []struct {
		w, h, runs int
	}{
		{32, 32, 1}, {20, 50, 2}, {10, 10, 1}, {100, 45, 8}, {257, 33, 20}, {64, 20, 3},
	} {
		m := loadModel(t, "testdata/tiny.onnx", Options{Threads: 1})
		res, err := m.Segment(checker(c.w, c.h, 8))
		if err != nil {
			t.Fatal(err)
		}
		if bad := maskDiff(res.Mask, 8, 0); bad != 0 || res.Runs != c.runs || res.Scale != 1 {
			t.Errorf("%dx%d: %d pixels wrong, %d runs (want %d), scale %v", c.w, c.h, bad, res.Runs, c.runs, res.Scale)
		}
	}
}

// TestPixelSizeScaling: a frame whose pixel size is finer than the model's range is shrunk
// to the range's finer end before tiling, one within it is not, and a frame's own pixel size
// (SegmentFrame) wins over the configured one.
func TestPixelSizeScaling(t *testing.T) {
	props := tinyProps()
	props[KeyPixelSize] = "0.1,0.3"
	model := withMetadata(t, "testdata/tiny-nometa.onnx", props)
	img := checker(256, 192, 16)
	for _, c := range []struct {
		opt, frame float64
		scale      float64
	}{
		{0, 0, 1},        // unknown: at the frame's scale
		{0.2, 0, 1},      // within the range
		{0.096, 0, 1},    // within 5 % of it
		{0.025, 0, 0.25}, // 2.5 cm: shrunk 4x to 10 cm, 64x48
		{0.2, 0.05, 0.5}, // the frame's own 5 cm wins: 128x96
		{0.6, 0, 2},      // coarser than the range: enlarged to 30 cm
		{0.025, 0.2, 1},  // the frame says 20 cm
		{0, 0.025, 0.25},
	} {
		m := loadModel(t, model, Options{Threads: 1, PixelSize: c.opt})
		runs := tinyRuns(int(math.Round(256*c.scale)), int(math.Round(192*c.scale)))
		if info := m.Info(); info.PixelSizeMin != 0.1 || info.PixelSizeMax != 0.3 {
			t.Fatalf("pixel size range %v-%v", info.PixelSizeMin, info.PixelSizeMax)
		}
		res, err := m.SegmentFrame(&Frame{Image: img, PixelSize: c.frame})
		if err != nil {
			t.Fatal(err)
		}
		// Squares of 16 px shrunk 4x are 4 px: only pixels near square edges may differ.
		if bad := maskDiff(res.Mask, 16, 3); res.Scale != c.scale || res.Runs != runs || bad != 0 {
			t.Errorf("configured %v, frame %v: scale %v (want %v), %d runs (want %d), %d pixels wrong",
				c.opt, c.frame, res.Scale, c.scale, res.Runs, runs, bad)
		}
		if res.Mask.Bounds() != img.Bounds() {
			t.Errorf("mask %v, frame %v", res.Mask.Bounds(), img.Bounds())
		}
	}
	// Resize and Tile ignore the pixel size.
	for _, mode := range []Tiling{Resize, Tile} {
		m := loadModel(t, model, Options{Threads: 1, PixelSize: 0.025, Tiling: mode})
		res, err := m.Segment(img)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[Tiling]float64{Resize: 0, Tile: 1}[mode]; res.Scale != want {
			t.Errorf("%v: scale %v, want %v", mode, res.Scale, want)
		}
	}
}

// TestScaleForCap: enlarging for a coarse pixel size stops at 16 megapixels (or the frame's own
// size when larger).
func TestScaleForCap(t *testing.T) {
	m := &Model{info: Info{PixelSizeMin: 0.1, PixelSizeMax: 0.3}}
	for _, c := range []struct {
		px   float64
		w, h int
		want float64
	}{
		{0, 100, 100, 1},
		{0.3, 100, 100, 1},
		{3, 100, 100, 10},
		{3, 2000, 2000, 2}, // 4 MP may grow to 16 MP, not 400 MP
		{3, 5000, 5000, 1}, // already above 16 MP
		{0.01, 4000, 3000, 0.1},
	} {
		if got := m.scaleFor(c.px, c.w, c.h); got < c.want*0.999 || got > c.want*1.001 {
			t.Errorf("scaleFor(%v, %dx%d) = %v, want %v", c.px, c.w, c.h, got, c.want)
		}
	}
}

// TestNoDataNeverForest: pure white, pure black and transparent pixels are never forest,
// even where the model says so (the tiny model calls any pixel with green > 127.5 forest),
// and coverage counts what the mask holds.
func TestNoDataNeverForest(t *testing.T) {
	img := checker(64, 48, 8)
	for x := 0; x < 64; x++ {
		for y := 0; y < 6; y++ {
			img.SetNRGBA(x, y, color.NRGBA{255, 255, 255, 255}) // white border: forest to the model
		}
		img.SetNRGBA(x, 40, color.NRGBA{254, 253, 255, 255})
		img.SetNRGBA(x, 41, color.NRGBA{2, 1, 0, 255})
		img.SetNRGBA(x, 42, color.NRGBA{30, 200, 30, 0}) // transparent green
		img.SetNRGBA(x, 43, color.NRGBA{252, 255, 255, 255})
	}
	for _, mode := range []Tiling{Auto, Resize, Tile} {
		m := loadModel(t, "testdata/tiny.onnx", Options{Threads: 1, Tiling: mode})
		res, err := m.Segment(img)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for y := 0; y < 48; y++ {
			for x := 0; x < 64; x++ {
				v := res.Mask.GrayAt(x, y).Y
				if v == 255 {
					n++
				}
				if v == 255 && (y < 6 || (y >= 40 && y <= 42)) {
					t.Fatalf("%v: no-data pixel %d,%d is forest", mode, x, y)
				}
			}
		}
		if y43 := res.Mask.GrayAt(10, 43).Y; y43 != 255 {
			t.Errorf("%v: 252,255,255 is not no data, and its green is forest to the model: got %d", mode, y43)
		}
		if float64(n)/float64(64*48) != res.Coverage {
			t.Errorf("%v: coverage %v, mask %v", mode, res.Coverage, float64(n)/float64(64*48))
		}
	}
}

// TestTilingStreams: segmenting a large frame in Auto mode allocates neither a float score
// map of the frame nor a copy of its pixels: far less than 4 bytes per pixel.
func TestTilingStreams(t *testing.T) {
	m := loadModel(t, "testdata/tiny.onnx", Options{Threads: 1})
	img := checker(2048, 1536, 16)
	if _, err := m.Segment(img); err != nil { // buffers grow on the first frame
		t.Fatal(err)
	}
	var before, after runtimeMem
	before.read()
	res, err := m.Segment(img)
	if err != nil {
		t.Fatal(err)
	}
	after.read()
	mask := int64(2048 * 1536)
	if got := after.total - before.total; got > mask+mask/2 {
		t.Errorf("second 2048x1536 frame allocated %d bytes; the mask alone is %d", got, mask)
	}
	if bad := maskDiff(res.Mask, 16, 0); bad != 0 {
		t.Errorf("%d pixels wrong", bad)
	}
}

// TestConvertedRows: a frame that is not 8-bit RGBA (a JPEG's YCbCr, a sub-image of one,
// grey) is read through the row cache, a band of rows at a time; its masks must equal those
// of the same pixels as NRGBA in every mode: tiles at the frame's scale, tiles after
// resampling by pixel size, and resizing (separable kernel, 2×2 and larger boxes).
func TestConvertedRows(t *testing.T) {
	props := tinyProps()
	props[KeyPixelSize] = "0.1,0.3"
	model := withMetadata(t, "testdata/tiny-nometa.onnx", props)
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, checker(330, 301, 9), &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	f, err := Decode(buf.Bytes(), 0)
	if err != nil {
		t.Fatal(err)
	}
	ycc, ok := f.Image.(*image.YCbCr)
	if !ok {
		t.Fatalf("decoded %T, want *image.YCbCr", f.Image)
	}
	frames := map[string]image.Image{
		"ycbcr":     ycc,
		"sub-image": ycc.SubImage(image.Rect(3, 5, 259, 261)), // resized by 8×8 boxes
		"box":       ycc.SubImage(image.Rect(1, 1, 321, 289)), // by 10×9 boxes
		"2x2":       ycc.SubImage(image.Rect(7, 2, 71, 66)),   // by the 2×2 fast path
		"grey":      toGray(ycc),
	}
	for name, img := range frames {
		b := img.Bounds()
		rgb := toRGB(img, nil)
		ref := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
		for i := 0; i < b.Dx()*b.Dy(); i++ {
			copy(ref.Pix[4*i:], rgb[3*i:3*i+3])
			ref.Pix[4*i+3] = 255
		}
		for _, o := range []Options{
			{Tiling: Auto}, {Tiling: Auto, PixelSize: 0.025}, {Tiling: Resize},
		} {
			o.Threads = 1
			m := loadModel(t, model, o)
			got, err := m.Segment(img)
			if err != nil {
				t.Fatal(err)
			}
			want, err := m.Segment(ref)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Mask.Pix, want.Mask.Pix) || got.Coverage != want.Coverage || got.Coverage == 0 {
				t.Errorf("%s, %+v: coverage %v, as NRGBA %v; masks equal %v", name, o, got.Coverage, want.Coverage,
					bytes.Equal(got.Mask.Pix, want.Mask.Pix))
			}
		}
	}
}

func toGray(img image.Image) *image.Gray {
	b := img.Bounds()
	g := image.NewGray(b)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			g.Set(x, y, img.At(x, y))
		}
	}
	return g
}
