package encode

import (
	"errors"
	"image"
	"os"
	"path/filepath"
	"testing"

	"github.com/disintegration/imaging"
)

// TestSearchLowestPassing proves the search's result: its own bytes
// decode to SSIM >= the target, and one quality lower does not reach it.
func TestSearchLowestPassing(t *testing.T) {
	img := load(t, "testdata/neon_192.png")
	ref := LumaOf(img)
	for _, f := range []Format{WebP, JPEG} {
		for _, target := range []float64{0.9, 0.95, 0.98} {
			s, err := NewSearcher(Options{Format: f, MinSSIM: target})
			if err != nil {
				t.Fatal(err)
			}
			r, err := s.Encode(img)
			if err != nil {
				t.Fatal(err)
			}
			measure := func(data []byte) float64 {
				var l Luma
				if err := decodeLuma(f, data, &l); err != nil {
					t.Fatal(err)
				}
				return SSIM(ref, &l)
			}
			if got := measure(r.Data); !r.Met || got < target || got != r.SSIM {
				t.Errorf("%v %.2f: q%d met %v SSIM %.4f (reported %.4f)", f, target, r.Quality, r.Met, got, r.SSIM)
			}
			if r.ContentType != f.ContentType() {
				t.Errorf("%v: content type %s", f, r.ContentType)
			}
			if r.Quality > 1 {
				lower, err := encodeAt(f, img, r.Quality-1)
				if err != nil {
					t.Fatal(err)
				}
				if v := measure(lower); v >= target {
					t.Errorf("%v %.2f: chose q%d but q%d reaches %.4f", f, target, r.Quality, r.Quality-1, v)
				}
			}
			t.Logf("%v target %.2f: q%d SSIM %.4f %d bytes, %d trials", f, target, r.Quality, r.SSIM, len(r.Data), r.Trials)
		}
	}
}

// TestSearchStartsFromLastQuality: the next frame of a camera starts at
// the quality the last one needed, so a like frame costs two trials.
func TestSearchStartsFromLastQuality(t *testing.T) {
	img := load(t, "testdata/neon_192.png")
	s, err := NewSearcher(Options{Format: JPEG, MinSSIM: 0.95})
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Encode(img)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Encode(img)
	if err != nil {
		t.Fatal(err)
	}
	if again.Quality != first.Quality || again.Trials > 2 {
		t.Errorf("second frame: q%d in %d trials; first q%d in %d", again.Quality, again.Trials, first.Quality, first.Trials)
	}
}

func TestSearchUnreachable(t *testing.T) {
	img := load(t, "testdata/neon_192.png")
	s, err := NewSearcher(Options{Format: WebP, MinSSIM: 0.999, MaxQuality: 10})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Encode(img)
	if err != nil {
		t.Fatal(err)
	}
	if r.Met || r.Quality != 10 || r.SSIM >= 0.999 || len(r.Data) == 0 {
		t.Errorf("unreachable target: met %v q%d SSIM %.4f", r.Met, r.Quality, r.SSIM)
	}
	tiny := image.NewNRGBA(image.Rect(0, 0, 5, 5))
	r, err = s.Encode(tiny)
	if err != nil || !r.Met || r.Quality != 10 {
		t.Errorf("image smaller than a window: %+v %v", r, err)
	}
}

func TestSearchOptions(t *testing.T) {
	for _, o := range []Options{{}, {MinSSIM: 1}, {MinSSIM: 0.9, MinQuality: 50, MaxQuality: 40}, {MinSSIM: 0.9, Format: 7}} {
		if _, err := NewSearcher(o); !errors.Is(err, ErrOptions) {
			t.Errorf("%+v: %v, want ErrOptions", o, err)
		}
	}
}

// TestSearchProgress: Progress is called after every trial, so that the
// agent's watchdog sees a long search advance.
func TestSearchProgress(t *testing.T) {
	img := load(t, "testdata/neon_192.png")
	calls := 0
	s, err := NewSearcher(Options{Format: JPEG, MinSSIM: 0.95, Progress: func() { calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Encode(img)
	if err != nil {
		t.Fatal(err)
	}
	if calls != r.Trials || calls < 2 {
		t.Errorf("%d progress calls for %d trials", calls, r.Trials)
	}
}

// TestSampledSearch: a 12-MP aerial frame (OAM-TCD tiles of
// ../shared/data, 30 cm per pixel, laid side by side, each scaled a little
// differently so that the sample cannot be the whole) is searched on a
// 2-MP sample; its full-frame SSIM still reaches the target, and the
// quality is within a step or two of what a full search finds.
func TestSampledSearch(t *testing.T) {
	tiles, _ := filepath.Glob("../../../shared/data/aerial-trees/oam-tcd-640/images/*.jpg")
	if len(tiles) < 12 {
		if os.Getenv("CI") != "" {
			t.Fatal("../shared/data/aerial-trees missing")
		}
		t.Skip("../shared/data/aerial-trees missing")
	}
	frame := image.NewNRGBA(image.Rect(0, 0, 4000, 3000))
	k := 0
	for y := 0; y < 3000; y += 640 {
		for x := 0; x < 4000; x += 640 {
			src, err := imaging.Open(tiles[k%len(tiles)])
			if err != nil {
				t.Fatal(err)
			}
			src = imaging.Resize(src, 640+k%3*8, 0, imaging.Lanczos)
			frame = imaging.Paste(frame, src, image.Pt(x, y))
			k++
		}
	}
	for _, f := range []Format{JPEG} {
		sampled, err := NewSearcher(Options{Format: f, MinSSIM: 0.95, SampleMaxPixels: 4_000_000})
		if err != nil {
			t.Fatal(err)
		}
		r, err := sampled.Encode(frame)
		if err != nil {
			t.Fatal(err)
		}
		full, err := Measure(frame, r.Data, r.ContentType)
		if err != nil {
			t.Fatal(err)
		}
		whole, _ := NewSearcher(Options{Format: f, MinSSIM: 0.95})
		ref, err := whole.Encode(frame)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%v: sampled search q%d (sample SSIM %.4f, frame %.4f, %d trials), full search q%d (%.4f)",
			f, r.Quality, r.SSIM, full, r.Trials, ref.Quality, ref.SSIM)
		if !r.Sampled || full < 0.95 || r.Quality > ref.Quality+3 {
			t.Errorf("%v: sampled %v, frame SSIM %.4f at q%d; want sampled, ≥ 0.95, at most 3 above the full search's q%d", f, r.Sampled, full, r.Quality, ref.Quality)
		}
	}
}

// TestSearchTransparent: a frame with transparent pixels (an orthomosaic's
// no-data border, a PNG with alpha) encodes as WebP with alpha, and its
// SSIM is measured as the reference's: composited on black.
func TestSearchTransparent(t *testing.T) {
	src := load(t, "testdata/neon_192.png")
	img := imaging.Clone(src) // *image.NRGBA
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Min.X+b.Dx()/4; x++ {
			img.Pix[img.PixOffset(x, y)+3] = 0
		}
	}
	s, err := NewSearcher(Options{Format: WebP, MinSSIM: 0.95})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Encode(img)
	if err != nil {
		t.Fatal(err)
	}
	var l Luma
	if err := decodeLuma(WebP, r.Data, &l); err != nil {
		t.Fatal(err)
	}
	if got := SSIM(LumaOf(img), &l); !r.Met || got < 0.95 {
		t.Errorf("q%d met %v SSIM %.4f", r.Quality, r.Met, got)
	}
	for x := range b.Dx() / 4 {
		if v := l.Pix[(b.Dy()/2)*l.W+x]; v > 2 {
			t.Fatalf("transparent pixel %d decodes to luma %d, want black", x, v)
		}
	}
}
