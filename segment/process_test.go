package segment

import (
	"bytes"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"slices"
	"testing"
)

func TestKernelGolden(t *testing.T) {
	// 4 → 2: area average of pairs.
	k := newKernel(4, 2)
	if k.k != 2 || !slices.Equal(k.idx, []int32{0, 1, 2, 3}) || !slices.Equal(k.w, []float32{0.5, 0.5, 0.5, 0.5}) {
		t.Fatalf("4→2: %+v", k)
	}
	// 3 → 2: output 0 covers [0,1.5): 1/1.5 of pixel 0, 0.5/1.5 of pixel 1.
	k = newKernel(3, 2)
	want := []float32{2.0 / 3, 1.0 / 3, 1.0 / 3, 2.0 / 3}
	for i, w := range k.w {
		if math.Abs(float64(w-want[i])) > 1e-6 {
			t.Fatalf("3→2 weights %v, want %v", k.w, want)
		}
	}
	// 2 → 4: bilinear between centres, clamped at the edges.
	k = newKernel(2, 4)
	if !slices.Equal(k.idx, []int32{0, 1, 0, 1, 0, 1, 1, 1}) || !slices.Equal(k.w, []float32{1, 0, 0.75, 0.25, 0.25, 0.75, 1, 0}) {
		t.Fatalf("2→4: idx %v w %v", k.idx, k.w)
	}
	// Any ratio: weights of every output sum to 1.
	for _, c := range [][2]int{{1000, 256}, {256, 1000}, {513, 256}, {7, 3}, {1, 5}, {5, 1}} {
		k := newKernel(c[0], c[1])
		for i := 0; i < c[1]; i++ {
			var s float32
			for _, w := range k.w[i*k.k : (i+1)*k.k] {
				s += w
			}
			if math.Abs(float64(s-1)) > 1e-5 {
				t.Fatalf("%d→%d output %d weights sum to %v", c[0], c[1], i, s)
			}
		}
	}
}

func TestResampleRGBGolden(t *testing.T) {
	// 4×2 → 2×1, identity normalisation: each output is the mean of a 2×2 block.
	rgb := []byte{
		0, 10, 20, 4, 14, 24, 100, 0, 0, 200, 0, 0,
		8, 18, 28, 12, 22, 32, 100, 50, 0, 100, 50, 0,
	}
	planes := [3][]float32{make([]float32, 2), make([]float32, 2), make([]float32, 2)}
	src := pixels{pix: rgb, stride: 12, bpp: 3}
	resampleRGB(src, newKernel(4, 2), newKernel(2, 1), planes, [3]int{0, 1, 2}, [3]float32{1, 1, 1}, [3]float32{}, nil, nil)
	want := [3][]float32{{6, 125}, {16, 25}, {26, 0}}
	for p := range planes {
		if !slices.Equal(planes[p], want[p]) {
			t.Fatalf("planes %v, want %v", planes, want)
		}
	}
	// Normalisation a*v+b and BGR order.
	resampleRGB(src, newKernel(4, 2), newKernel(2, 1), planes, [3]int{2, 1, 0}, [3]float32{2, 2, 2}, [3]float32{-1, -1, -1}, nil, nil)
	if !slices.Equal(planes[0], []float32{51, -1}) || !slices.Equal(planes[2], []float32{11, 249}) {
		t.Fatalf("BGR planes %v", planes)
	}
}

func TestCopyRGBGolden(t *testing.T) {
	// 3×2 packed RGB, window 2×1 at (1,1), LUT v → v/2.
	rgb := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18}
	var lut [3][256]float32
	for p := range lut {
		for v := range lut[p] {
			lut[p][v] = float32(v)/2 + float32(p)*1000
		}
	}
	planes := [3][]float32{make([]float32, 2), make([]float32, 2), make([]float32, 2)}
	copyRGB(pixels{pix: rgb, stride: 9, bpp: 3}, 1, 1, 2, 1, planes, [3]int{0, 1, 2}, &lut)
	want := [3][]float32{{6.5, 8}, {1007, 1008.5}, {2007.5, 2009}}
	for p := range planes {
		if !slices.Equal(planes[p], want[p]) {
			t.Fatalf("planes %v, want %v", planes, want)
		}
	}
}

func TestMaskFromScoreGolden(t *testing.T) {
	score := []float32{-1, 1, 2, -2}
	dst := make([]byte, 4)
	n, _ := maskFromScore(score, 2, 2, 0, dst, 2, 2, 2, nil, nil, nil)
	if n != 2 || !slices.Equal(dst, []byte{0, 255, 255, 0}) {
		t.Fatalf("same size: %d %v", n, dst)
	}
	// 2×1 → 4×1 bilinear: scores -1, -0.5, 0.5, 1 → 0 0 255 255.
	dst = make([]byte, 4)
	n, _ = maskFromScore([]float32{-1, 1}, 2, 1, 0, dst, 4, 1, 4, newKernel(2, 4), newKernel(1, 1), nil)
	if n != 2 || !slices.Equal(dst, []byte{0, 0, 255, 255}) {
		t.Fatalf("upscaled: %d %v", n, dst)
	}
	// Threshold is strict: score == tau is not forest.
	if n := thresholdRect([]float32{0.5, 0.50001}, 2, 0.5, dst, 2, 2, 1); n != 1 || dst[0] != 0 || dst[1] != 255 {
		t.Fatalf("strict threshold: %v", dst[:2])
	}
}

func TestTilePositions(t *testing.T) {
	for _, c := range []struct {
		l, t, o int
		pos     []int
	}{
		{256, 256, 32, []int{0}},
		{100, 256, 32, []int{0}},
		{512, 256, 32, []int{0, 128, 256}},
		{480, 256, 32, []int{0, 224}},
		{300, 256, 0, []int{0, 44}},
	} {
		if pos := tilePositions(c.l, c.t, c.o); !slices.Equal(pos, c.pos) {
			t.Errorf("tilePositions(%d,%d,%d) = %v, want %v", c.l, c.t, c.o, pos, c.pos)
		}
	}
	// Invariants over many sizes: windows inside the axis and in order, overlap >= o, the
	// axis covered.
	for l := 33; l < 700; l += 17 {
		pos := tilePositions(l, 32, 4)
		for i, p := range pos {
			if p < 0 || p+32 > l || (i > 0 && (p <= pos[i-1] || pos[i-1]+32-p < 4)) {
				t.Fatalf("l=%d: pos %v", l, pos)
			}
		}
		if pos[0] != 0 || pos[len(pos)-1]+32 != l {
			t.Fatalf("l=%d: pos %v do not cover the axis", l, pos)
		}
	}
}

// TestAxisWeights checks the blending weights: they sum to 1 at every position, are 1 where
// a single window covers, ramp monotonically across each overlap, and give a window's edge
// pixel that it shares with a neighbour at most 1/(2o) of the weight before normalising.
func TestAxisWeights(t *testing.T) {
	for _, c := range []struct{ l, t, o int }{{512, 256, 32}, {257, 32, 7}, {33, 32, 4}, {700, 32, 4}, {300, 256, 32}, {4000, 256, 32}} {
		pos := tilePositions(c.l, c.t, c.o)
		w := axisWeights(pos, c.t, c.o)
		sum := make([]float64, c.l)
		cover := make([]int, c.l)
		for i, p := range pos {
			for x, v := range w[i] {
				if v < 0 || v > 1 {
					t.Fatalf("%+v: window %d weight %v at %d", c, i, v, x)
				}
				sum[p+x] += float64(v)
				cover[p+x]++
			}
		}
		for x, s := range sum {
			if math.Abs(s-1) > 1e-6 {
				t.Fatalf("%+v: weights sum to %v at %d", c, s, x)
			}
			if cover[x] == 1 {
				continue
			}
			// Inside an overlap the later window's weight rises with x.
			for i := 1; i < len(pos); i++ {
				p := pos[i]
				if x > p && x < pos[i-1]+c.t && w[i][x-p] < w[i][x-p-1]-1e-6 {
					t.Fatalf("%+v: window %d weight falls at %d", c, i, x)
				}
			}
		}
		if len(pos) > 1 && w[1][0] > float32(1/float64(c.o))+1e-6 {
			t.Errorf("%+v: shared edge pixel weighs %v", c, w[1][0])
		}
	}
}

// TestMirror checks the padding reflection, including pads longer than the frame.
func TestMirror(t *testing.T) {
	var got []int
	for c := 0; c < 9; c++ {
		got = append(got, mirror(c, 3))
	}
	if want := []int{0, 1, 2, 2, 1, 0, 0, 1, 2}; !slices.Equal(got, want) {
		t.Fatalf("mirror(0..8, 3) = %v, want %v", got, want)
	}
	if mirror(5, 1) != 0 {
		t.Fatal("mirror of a 1-pixel axis")
	}
}

func TestScoreThreshold(t *testing.T) {
	if v := scoreThreshold("logits", 1, 0.5); v != 0 {
		t.Fatalf("logit(0.5) = %v", v)
	}
	if v := scoreThreshold("logits", 2, 0.7); math.Abs(float64(v)-math.Log(0.7/0.3)) > 1e-6 {
		t.Fatalf("two-class logits: %v", v)
	}
	if v := scoreThreshold("logits", 3, 0.5); math.Abs(float64(v)-math.Log(0.5)) > 1e-6 {
		t.Fatalf("three-class logits: %v", v)
	}
	if v := scoreThreshold("probabilities", 3, 0.6); v != 0.6 {
		t.Fatalf("probabilities: %v", v)
	}
}

func TestMaskPNGAndOverlay(t *testing.T) {
	mask := image.NewGray(image.Rect(0, 0, 64, 48))
	for y := 0; y < 48; y++ {
		for x := 32; x < 64; x++ {
			mask.SetGray(x, y, color.Gray{255})
		}
	}
	data, err := MaskPNG(mask)
	if err != nil {
		t.Fatal(err)
	}
	back, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	g, ok := back.(*image.Gray)
	if !ok || !slices.Equal(g.Pix, mask.Pix) || len(data) > 200 {
		t.Fatalf("mask png round trip: %T, %d bytes", back, len(data))
	}
	// A mask with ragged edges, seen through a sub-image (stride wider than
	// the rows, origin not at 0,0): the same pixels come back, in about the
	// bytes image/png's default encoding takes.
	big := image.NewGray(image.Rect(0, 0, 700, 500))
	for y := 0; y < 500; y++ {
		for x := 0; x < 700; x++ {
			if (x-350)*(x-350)+(y-250)*(y-250)*2 < 200*200+(x*y*7919)%5000 {
				big.Pix[y*big.Stride+x] = 255
			}
		}
	}
	sub := big.SubImage(image.Rect(13, 7, 613, 407)).(*image.Gray)
	data, err = MaskPNG(sub)
	if err != nil {
		t.Fatal(err)
	}
	back, err = png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	want := image.NewGray(image.Rect(0, 0, 600, 400))
	draw.Draw(want, want.Bounds(), sub, sub.Bounds().Min, draw.Src)
	if g, ok := back.(*image.Gray); !ok || !slices.Equal(g.Pix, want.Pix) {
		t.Fatalf("sub-image mask png round trip: %T differs", back)
	}
	var std bytes.Buffer
	png.Encode(&std, sub)
	if len(data) > std.Len()*11/10 {
		t.Errorf("mask png %d bytes, image/png %d", len(data), std.Len())
	}
	if _, err := MaskPNG(nil); err == nil {
		t.Fatal("MaskPNG(nil) succeeded")
	}

	img := image.NewNRGBA(image.Rect(10, 10, 74, 58)) // non-zero origin
	for i := range img.Pix {
		img.Pix[i] = 100
	}
	ov := Overlay(img, mask)
	if ov.Bounds() != mask.Bounds() {
		t.Fatalf("overlay bounds %v", ov.Bounds())
	}
	forest, other := straightRGB(ov.At(40, 5)), straightRGB(ov.At(5, 5))
	if forest != [3]byte{70, 150, 80} || other != [3]byte{80, 80, 80} {
		t.Fatalf("overlay forest %v other %v", forest, other)
	}
	if Overlay(img, image.NewGray(image.Rect(0, 0, 3, 3))) != nil {
		t.Fatal("Overlay with mismatched sizes is not nil")
	}
}

// TestFastPathsMatchReference checks the integer box downscale against the general area
// resampler, and the edge-only mask interpolation against interpolating every pixel.
func TestFastPathsMatchReference(t *testing.T) {
	rnd := uint32(1)
	next := func() uint32 { rnd = rnd*1664525 + 1013904223; return rnd >> 24 }
	for _, c := range [][4]int{{64, 32, 32, 16}, {96, 48, 32, 16}, {64, 64, 32, 32}, {33, 17, 11, 17}} {
		sw, sh, dw, dh := c[0], c[1], c[2], c[3]
		for _, bpp := range []int{3, 4} {
			src := pixels{pix: make([]byte, sw*sh*bpp+bpp), off: bpp, stride: sw * bpp, bpp: bpp}
			for i := range src.pix {
				src.pix[i] = byte(next())
			}
			mk := func() [3][]float32 {
				return [3][]float32{make([]float32, dw*dh), make([]float32, dw*dh), make([]float32, dw*dh)}
			}
			want, got := mk(), mk()
			a, b := [3]float32{0.1, 0.2, 0.3}, [3]float32{-1, -2, -3}
			resampleRGB(src, newKernel(sw, dw), newKernel(sh, dh), want, [3]int{2, 1, 0}, a, b, nil, nil)
			if sw%dw != 0 || sh%dh != 0 {
				continue
			}
			boxDownscale(src, sw/dw, sh/dh, dw, dh, got, [3]int{2, 1, 0}, a, b)
			for p := range want {
				for i := range want[p] {
					if math.Abs(float64(want[p][i]-got[p][i])) > 1e-4 {
						t.Fatalf("%v bpp %d plane %d [%d]: box %v, area %v", c, bpp, p, i, got[p][i], want[p][i])
					}
				}
			}
		}
		// Masks: scores around tau=0.
		score := make([]float32, dw*dh)
		for i := range score {
			score[i] = float32(int(next())-128) / 64
			if i%7 < 4 {
				score[i] = 1 // uniform regions
			}
		}
		kx, ky := newKernel(dw, sw), newKernel(dh, sh)
		got := make([]byte, sw*sh)
		n, _ := maskFromScore(score, dw, dh, 0, got, sw, sh, sw, kx, ky, nil)
		count := 0
		for y := 0; y < sh; y++ {
			for x := 0; x < sw; x++ {
				var v float32
				for t := 0; t < ky.k; t++ {
					for u := 0; u < kx.k; u++ {
						v += ky.w[y*ky.k+t] * kx.w[x*kx.k+u] * score[int(ky.idx[y*ky.k+t])*dw+int(kx.idx[x*kx.k+u])]
					}
				}
				want := byte(0)
				if v > 0 {
					want = 255
					count++
				}
				if got[y*sw+x] != want {
					t.Fatalf("%v: mask(%d,%d) = %d, want %d (score %v)", c, x, y, got[y*sw+x], want, v)
				}
			}
		}
		if n != count {
			t.Fatalf("%v: count %d, want %d", c, n, count)
		}
	}
}

func BenchmarkMaskFromScore256to512(b *testing.B) {
	score := make([]float32, 256*256)
	for i := range score {
		score[i] = float32((i%256)/32%2*2 - 1) // vertical stripes: edges every 32 px
	}
	dst := make([]byte, 512*512)
	kx, ky := newKernel(256, 512), newKernel(256, 512)
	var side []byte
	for b.Loop() {
		_, side = maskFromScore(score, 256, 256, 0, dst, 512, 512, 512, kx, ky, side)
	}
}

func BenchmarkBoxDownscale512to256(b *testing.B) {
	src := pixels{pix: make([]byte, 512*512*4), stride: 512 * 4, bpp: 4}
	planes := [3][]float32{make([]float32, 256*256), make([]float32, 256*256), make([]float32, 256*256)}
	for b.Loop() {
		boxDownscale(src, 2, 2, 256, 256, planes, [3]int{0, 1, 2}, [3]float32{1, 1, 1}, [3]float32{})
	}
}
