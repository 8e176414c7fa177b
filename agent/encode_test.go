package agent

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"image"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/disintegration/imaging"

	"github.com/forestwatch/forest/agent/encode"
	"github.com/forestwatch/forest/internal/exiftest"
	"github.com/forestwatch/forest/segment"
)

// legacyBytes is the size of the old Python service's message for a file:
// {"image": <base64>, "image_metadata": {"image_name": ...}}.
func legacyBytes(name string, data []byte) int {
	b, _ := json.Marshal(map[string]any{
		"image":          base64.StdEncoding.EncodeToString(data),
		"image_metadata": map[string]any{"image_name": name},
	})
	return len(b)
}

// sharedData is the team's data set: $FOREST_SHARED_DATA, or
// ../shared/data beside the checkout.
func sharedData() string {
	if d := os.Getenv("FOREST_SHARED_DATA"); d != "" {
		return d
	}
	return "../../shared/data"
}

// sharedImages lists the images of the shared data set, or the shipped
// samples when it is absent.
func sharedImages(t testing.TB) []string {
	var files []string
	for _, g := range []string{
		"amazon-forest-rgb/images/*.png",
		"neon-tree-crowns/*.png",
		"neon-tree-crowns/*.jpg",
	} {
		m, _ := filepath.Glob(filepath.Join(sharedData(), g))
		files = append(files, m...)
	}
	if len(files) == 0 {
		files = sampleFrames(t)
	}
	return files
}

// TestEncodeBudget proves the default transmitted encoding (encode.mode
// auto, min_ssim 0.95) is at most half the legacy base64-JSON message at
// SSIM ≥ 0.95 (package encode's SSIM, on the decoded transmitted image) on
// every image of the shared data set (amazon tiles and NEON crops), with
// and without the mask PNG counted. The mask is striped here: its size
// does not depend on the model. Camera JPEGs at their native quality are
// measured through the whole pipeline by TestCameraBytes.
func TestEncodeBudget(t *testing.T) {
	cfg := Default().Encode
	files := sharedImages(t)
	var ratios, ratiosMask, ssims []float64
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		fr, err := segment.Decode(data, 0)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		mask := image.NewGray(image.Rect(0, 0, fr.Width, fr.Height))
		for i := range mask.Pix {
			if (i/fr.Width)%16 < 8 {
				mask.Pix[i] = 255
			}
		}
		enc, err := encodeFrame(cfg, data, fr, mask)
		if err != nil {
			t.Fatal(err)
		}
		s, err := encode.Measure(fr.Image, enc.Image, enc.ContentType)
		if err != nil {
			t.Fatal(err)
		}
		legacy := float64(legacyBytes(filepath.Base(f), data))
		r := float64(len(enc.Image)) / legacy
		rm := float64(len(enc.Image)+len(enc.Mask)) / legacy
		ratios, ratiosMask, ssims = append(ratios, r), append(ratiosMask, rm), append(ssims, s)
		if r > 0.5 || s < 0.95 {
			t.Errorf("%s: %d bytes = %.3f× legacy (%d), SSIM %.4f; want ≤ 0.5× at SSIM ≥ 0.95", filepath.Base(f), len(enc.Image), r, int(legacy), s)
		}
		if testing.Verbose() && !bytes.Equal(enc.Image, data) {
			t.Logf("%-50s %7d → %7d bytes (%.3f× legacy, with mask %.3f×) SSIM %.4f", filepath.Base(f), len(data), len(enc.Image), r, rm, s)
		}
	}
	med := func(v []float64) float64 { s := append([]float64(nil), v...); sort.Float64s(s); return s[len(s)/2] }
	mx := func(v []float64) float64 {
		m := 0.0
		for _, x := range v {
			m = math.Max(m, x)
		}
		return m
	}
	mn := func(v []float64) float64 {
		m := 1.0
		for _, x := range v {
			m = math.Min(m, x)
		}
		return m
	}
	t.Logf("%d images: bytes/legacy median %.3f max %.3f; with mask median %.3f max %.3f; SSIM median %.4f min %.4f",
		len(files), med(ratios), mx(ratios), med(ratiosMask), mx(ratiosMask), med(ssims), mn(ssims))
}

func TestEncodeModes(t *testing.T) {
	jpg, png := "", ""
	for _, f := range sampleFrames(t) {
		switch filepath.Ext(f) {
		case ".jpg":
			jpg = f
		case ".png":
			png = f
		}
	}
	load := func(p string) ([]byte, *segment.Frame, *image.Gray) {
		data, _ := os.ReadFile(p)
		fr, err := segment.Decode(data, 0)
		if err != nil {
			t.Fatal(err)
		}
		m := image.NewGray(image.Rect(0, 0, fr.Width, fr.Height))
		// Forest in a 40×30 block at (10,20).
		for y := 20; y < 50; y++ {
			for x := 10; x < 50; x++ {
				m.Pix[y*m.Stride+x] = 255
			}
		}
		return data, fr, m
	}
	cases := []struct {
		name    string
		file    string
		cfg     EncodeConfig
		raw     bool
		ct      string
		w, h    int
		checkSz bool
	}{
		{"keep png", png, EncodeConfig{Mode: "keep", Quality: 85}, true, "image/png", 256, 256, false},
		{"auto png", png, EncodeConfig{Mode: "auto", MinSSIM: 0.95}, false, "image/webp", 256, 256, false},
		{"auto png fixed quality", png, EncodeConfig{Mode: "auto", Quality: 85}, false, "image/webp", 256, 256, false},
		{"jpeg jpg", jpg, EncodeConfig{Mode: "jpeg", Quality: 60}, false, "image/jpeg", 1024, 1024, false},
		{"jpeg jpg ssim", jpg, EncodeConfig{Mode: "jpeg", MinSSIM: 0.95}, false, "image/jpeg", 1024, 1024, false},
		{"webp jpg", jpg, EncodeConfig{Mode: "webp", MinSSIM: 0.95}, false, "image/webp", 1024, 1024, false},
		{"keep jpg", jpg, EncodeConfig{Mode: "keep", Quality: 85}, true, "image/jpeg", 1024, 1024, false},
		{"max dimension", jpg, EncodeConfig{Mode: "auto", MinSSIM: 0.95, MaxDimension: 300}, false, "image/webp", 300, 300, true},
		{"crop", png, EncodeConfig{Mode: "auto", MinSSIM: 0.95, Crop: true}, false, "image/webp", 40, 30, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, fr, m := load(tc.file)
			enc, err := encodeFrame(tc.cfg, data, fr, m)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(enc.Image, data) != tc.raw || enc.ContentType != tc.ct || enc.Width != tc.w || enc.Height != tc.h {
				t.Fatalf("raw %v type %s size %dx%d; want raw %v %s %dx%d", bytes.Equal(enc.Image, data), enc.ContentType, enc.Width, enc.Height, tc.raw, tc.ct, tc.w, tc.h)
			}
			got, err := segment.Decode(enc.Image, 0)
			if err != nil || got.Width != tc.w || got.Height != tc.h {
				t.Fatalf("transmitted image decodes as %v, %v", got, err)
			}
			mk, err := segment.Decode(enc.Mask, 0)
			if err != nil || mk.Width != tc.w || mk.Height != tc.h {
				t.Fatalf("mask does not match the transmitted size: %v %v", mk, err)
			}
			if tc.name == "crop" {
				for _, v := range enc.MaskImg.Pix {
					if v != 255 {
						t.Fatal("cropped mask should be all forest")
					}
				}
			}
		})
	}
}

// TestAutoLargeFrames: in mode auto a frame over webp_max_pixels that came
// as an upright camera JPEG is sent as taken (no search, no re-encode);
// the same pixels as PNG, or as a JPEG stored sideways, are re-encoded as
// JPEG at the SSIM target; mode jpeg re-encodes the camera JPEG too.
func TestAutoLargeFrames(t *testing.T) {
	var src string
	for _, f := range sampleFrames(t) {
		if filepath.Ext(f) == ".jpg" {
			src = f
		}
	}
	small, err := imaging.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	big := imaging.Resize(small, 2400, 2000, imaging.Linear) // 4.8 MP
	var cam, pngb bytes.Buffer
	jpeg.Encode(&cam, big, &jpeg.Options{Quality: 90})
	png.Encode(&pngb, big)
	sideways := exiftest.JPEG(t, imaging.Rotate90(big), exiftest.Block(binary.LittleEndian, exiftest.Options{Orientation: 6}))
	auto := EncodeConfig{Mode: "auto", MinSSIM: 0.95, WebPMaxPixels: 4_000_000}
	for _, c := range []struct {
		name  string
		data  []byte
		cfg   EncodeConfig
		taken bool
	}{
		{"camera jpeg", cam.Bytes(), auto, true},
		{"png", pngb.Bytes(), auto, false},
		{"jpeg stored sideways", sideways, auto, false},
		{"mode jpeg", cam.Bytes(), EncodeConfig{Mode: "jpeg", MinSSIM: 0.95}, false},
	} {
		fr, err := segment.Decode(c.data, 0)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := encodeFrame(c.cfg, c.data, fr, image.NewGray(image.Rect(0, 0, fr.Width, fr.Height)))
		if err != nil {
			t.Fatal(err)
		}
		taken := bytes.Equal(enc.Image, c.data)
		if taken != c.taken || enc.ContentType != "image/jpeg" || enc.Width != 2400 || enc.Height != 2000 {
			t.Errorf("%s: sent as taken %v (want %v), %s %dx%d", c.name, taken, c.taken, enc.ContentType, enc.Width, enc.Height)
		}
		if !c.taken && enc.SSIM < 0.95 {
			t.Errorf("%s: re-encoded at SSIM %.4f", c.name, enc.SSIM)
		}
	}
}

// TestEncoderLabel: the status page names the WebP encoder in the modes that
// use one, and says how to get the faster one when it runs the fallback.
func TestEncoderLabel(t *testing.T) {
	name, why := encode.WebPEncoder()
	for _, mode := range []string{"jpeg", "keep"} {
		if l, by, _ := encoderLabel(mode); l != mode || by != "" {
			t.Errorf("mode %s: %q, %q", mode, l, by)
		}
	}
	for _, mode := range []string{"auto", "webp"} {
		l, by, _ := encoderLabel(mode)
		if by != name || !strings.HasPrefix(l, mode+" · WebP by "+name) {
			t.Errorf("mode %s: %q, %q; WebPEncoder says %q", mode, l, by, name)
		}
		if hint := strings.Contains(l, "install libwebp-dev"); hint != (why != nil) {
			t.Errorf("mode %s: %q: the install hint shown %v, encoder error %v", mode, l, hint, why)
		}
	}
}
