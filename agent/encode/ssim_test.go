package encode

import (
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/forestwatch/forest/segment"
)

func load(t testing.TB, path string) image.Image {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := segment.Decode(data, 0)
	if err != nil {
		t.Fatal(err)
	}
	return f.Image
}

// naiveSSIM is SSIM straight from the definition: for every window
// position, the 11×11 Gaussian-weighted means, variances and covariance
// in float64, then the mean of the index.
func naiveSSIM(a, b *Luma) float64 {
	var w [11][11]float64
	var sum float64
	for j := range 11 {
		for i := range 11 {
			dx, dy := float64(i-5), float64(j-5)
			w[j][i] = math.Exp(-(dx*dx + dy*dy) / (2 * 1.5 * 1.5))
			sum += w[j][i]
		}
	}
	var total float64
	n := 0
	for y := 0; y+11 <= a.H; y++ {
		for x := 0; x+11 <= a.W; x++ {
			var ma, mb, saa, sbb, sab float64
			for j := range 11 {
				for i := range 11 {
					k := w[j][i] / sum
					va, vb := float64(a.Pix[(y+j)*a.W+x+i]), float64(b.Pix[(y+j)*b.W+x+i])
					ma += k * va
					mb += k * vb
					saa += k * va * va
					sbb += k * vb * vb
					sab += k * va * vb
				}
			}
			c1, c2 := math.Pow(0.01*255, 2), math.Pow(0.03*255, 2)
			total += ((2*ma*mb + c1) * (2*(sab-ma*mb) + c2)) / ((ma*ma + mb*mb + c1) * (saa - ma*ma + sbb - mb*mb + c2))
			n++
		}
	}
	return total / float64(n)
}

// TestSSIMDefinition checks the streaming, separable float32 SSIM against
// the definition on real and synthetic pairs.
func TestSSIMDefinition(t *testing.T) {
	ref := LumaOf(load(t, "testdata/neon_192.png"))
	rng := rand.New(rand.NewPCG(1, 2))
	noisy := &Luma{Pix: make([]uint8, len(ref.Pix)), W: ref.W, H: ref.H}
	for i, v := range ref.Pix {
		noisy.Pix[i] = uint8(min(255, max(0, int(v)+rng.IntN(41)-20)))
	}
	flat := &Luma{Pix: make([]uint8, 40*30), W: 40, H: 30}
	for i := range flat.Pix {
		flat.Pix[i] = 200
	}
	ramp := &Luma{Pix: make([]uint8, 40*30), W: 40, H: 30}
	for i := range ramp.Pix {
		ramp.Pix[i] = uint8(i % 40 * 6)
	}
	for _, tc := range []struct {
		name string
		a, b *Luma
	}{
		{"jpeg q50", ref, LumaOf(load(t, "testdata/neon_192_q50.jpg"))},
		{"noise", ref, noisy},
		{"flat vs ramp", flat, ramp},
	} {
		got, want := SSIM(tc.a, tc.b), naiveSSIM(tc.a, tc.b)
		if math.Abs(got-want) > 1e-5 {
			t.Errorf("%s: SSIM %.6f, definition %.6f", tc.name, got, want)
		}
	}
	if s := SSIM(ref, ref); s != 1 {
		t.Errorf("SSIM of an image with itself = %v, want 1", s)
	}
	if s := SSIM(ref, flat); !math.IsNaN(s) {
		t.Errorf("SSIM of different sizes = %v, want NaN", s)
	}
}

// TestSSIMReference pins SSIM against scikit-image's on images decoded
// by Pillow (testdata/SOURCE.md): the luma conversion, the decoding of
// WebP's video-range Y'CbCr and the index itself.
func TestSSIMReference(t *testing.T) {
	ref := LumaOf(load(t, "testdata/neon_192.png"))
	for _, tc := range []struct {
		file   string
		format Format
		want   float64
		tol    float64
	}{
		// image/jpeg and libjpeg-turbo differ by a level in some pixels.
		{"testdata/neon_192_q50.jpg", JPEG, 0.91625, 5e-4},
		// dwebp -nofancy; Pillow's fancy upsampling gives 0.88372.
		{"testdata/neon_192_q50.webp", WebP, 0.88383, 1e-4},
	} {
		data, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		var l Luma
		if err := decodeLuma(tc.format, data, &l); err != nil {
			t.Fatal(err)
		}
		if got := SSIM(ref, &l); math.Abs(got-tc.want) > tc.tol {
			t.Errorf("%s: SSIM %.5f, scikit-image %.5f", tc.file, got, tc.want)
		}
	}
}

// TestWebPVideoRange proves WebP's luma is read as video range: a flat
// grey frame comes back at its own level, where a full-range reading of
// the same planes (image/color) is off by several levels.
func TestWebPVideoRange(t *testing.T) {
	for _, level := range []uint8{40, 128, 230} {
		img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
		for i := 0; i < len(img.Pix); i += 4 {
			img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = level, level, level, 255
		}
		data, err := encodeAt(WebP, img, 90)
		if err != nil {
			t.Fatal(err)
		}
		var l Luma
		if err := decodeLuma(WebP, data, &l); err != nil {
			t.Fatal(err)
		}
		var sum int
		for _, v := range l.Pix {
			sum += int(v)
		}
		if mean := float64(sum) / float64(len(l.Pix)); math.Abs(mean-float64(level)) > 1 {
			t.Errorf("grey %d comes back as %.1f", level, mean)
		}
	}
	// The same check fails through image/color's full-range conversion.
	c := color.YCbCr{Y: 16 + 219*230/255, Cb: 128, Cr: 128}
	if r, _, _, _ := c.RGBA(); math.Abs(float64(r>>8)-230) <= 1 {
		t.Fatal("image/color reads video range as it is; the check above proves nothing")
	}
}
