package encode

import (
	"errors"
	"image"
	"testing"
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
