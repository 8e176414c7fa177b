package encode

import (
	"errors"
	"fmt"
	"image"
	"image/draw"
	"math"
)

// Options configure a Searcher.
type Options struct {
	// Format is the encoding. The zero value is WebP.
	Format Format
	// MinSSIM is the target: the encoding's SSIM (see SSIM) against the
	// image it encodes must be at least this. Within (0, 1).
	MinSSIM float64
	// MinQuality and MaxQuality bound the qualities tried (1-100). 0
	// means 1 and 100.
	MinQuality, MaxQuality int
	// Progress, when set, is called after each trial, so that a caller
	// watching for hung work (the agent's systemd watchdog) sees a long
	// search advance.
	Progress func()
	// SampleMaxPixels bounds what a trial encodes: an image with more
	// pixels is searched on a sample of it (a grid of 256×256 crops spread
	// over the whole image, about half this many pixels in all, with a
	// target sampleMargin above MinSSIM), and only the chosen quality is
	// encoded at full size. 0 searches on the whole image.
	SampleMaxPixels int
}

// Result is one frame's encoding.
type Result struct {
	// Data is the encoded image, ContentType its MIME type.
	Data        []byte
	ContentType string
	// Quality is the quality it was encoded at.
	Quality int
	// SSIM is its SSIM against the source image.
	SSIM float64
	// Met reports whether SSIM reaches Options.MinSSIM. When no quality up
	// to MaxQuality does, the result is the MaxQuality encoding.
	Met bool
	// Trials is how many qualities were encoded and measured.
	Trials int
	// Sampled reports that the search ran on a sample of the image
	// (Options.SampleMaxPixels): SSIM is the sample's, an estimate of the
	// image's.
	Sampled bool
}

// Searcher encodes frames at the lowest quality whose SSIM reaches a
// target. It starts each search at the quality the last frame needed, so
// that a camera's similar frames cost about two trial encodings each. A
// Searcher is not safe for concurrent use.
type Searcher struct {
	opts Options
	hint int
	// Reused between frames: the luma of the source and of a trial.
	ref, trial Luma
}

// ErrOptions reports unusable Options.
var ErrOptions = errors.New("encode: bad options")

// NewSearcher returns a Searcher for opts.
func NewSearcher(opts Options) (*Searcher, error) {
	if opts.MinQuality == 0 {
		opts.MinQuality = 1
	}
	if opts.MaxQuality == 0 {
		opts.MaxQuality = 100
	}
	switch {
	case opts.Format != WebP && opts.Format != JPEG:
		return nil, fmt.Errorf("%w: unknown format %v", ErrOptions, opts.Format)
	case !(opts.MinSSIM > 0 && opts.MinSSIM < 1):
		return nil, fmt.Errorf("%w: MinSSIM must be within (0,1) (got %v)", ErrOptions, opts.MinSSIM)
	case opts.MinQuality < 1 || opts.MaxQuality > 100 || opts.MinQuality > opts.MaxQuality:
		return nil, fmt.Errorf("%w: qualities must satisfy 1 <= min <= max <= 100 (got %d, %d)", ErrOptions, opts.MinQuality, opts.MaxQuality)
	}
	return &Searcher{opts: opts, hint: min(max(75, opts.MinQuality), opts.MaxQuality)}, nil
}

// Encode encodes img at the lowest quality in [MinQuality, MaxQuality]
// whose SSIM against img reaches MinSSIM. SSIM grows with quality only
// roughly (re-encoding a JPEG near its own quantisation steps gives
// bumps), so the search returns a quality q that passes while q-1 fails
// (or q is MinQuality), found by bracketing from the last frame's
// quality. Each trial encodes, decodes and measures the whole image.
func (s *Searcher) Encode(img image.Image) (*Result, error) {
	o := s.opts
	if b := img.Bounds(); o.SampleMaxPixels > 0 && b.Dx()*b.Dy() > o.SampleMaxPixels {
		return s.encodeSampled(img)
	}
	lumaInto(&s.ref, img)
	if s.ref.W < ssimWindow || s.ref.H < ssimWindow {
		// Smaller than one SSIM window: nothing to measure; send it at the
		// top quality.
		b, err := encodeAt(o.Format, img, o.MaxQuality)
		if err != nil {
			return nil, err
		}
		return &Result{Data: b, ContentType: o.Format.ContentType(), Quality: o.MaxQuality, SSIM: 1, Met: true, Trials: 1}, nil
	}
	var (
		fail, pass   = o.MinQuality - 1, o.MaxQuality + 1 // bracket: fail < answer <= pass
		failS, passS = math.NaN(), math.NaN()
		best         []byte
		trials, step int
		q            = min(max(s.hint, o.MinQuality), o.MaxQuality)
	)
	for {
		b, err := encodeAt(o.Format, img, q)
		if err != nil {
			return nil, err
		}
		if err := decodeLuma(o.Format, b, &s.trial); err != nil {
			return nil, err
		}
		trials++
		if o.Progress != nil {
			o.Progress()
		}
		if v := SSIM(&s.ref, &s.trial); v >= o.MinSSIM {
			pass, passS, best = q, v, b
		} else {
			fail, failS = q, v
		}
		if pass-fail <= 1 {
			break
		}
		q = s.next(fail, pass, failS, passS, &step)
	}
	if pass > o.MaxQuality {
		// Even the top quality misses the target: send that.
		s.hint = o.MaxQuality
		b, err := encodeAt(o.Format, img, o.MaxQuality)
		if err != nil {
			return nil, err
		}
		return &Result{Data: b, ContentType: o.Format.ContentType(), Quality: o.MaxQuality, SSIM: failS, Trials: trials}, nil
	}
	s.hint = pass
	return &Result{Data: best, ContentType: o.Format.ContentType(), Quality: pass, SSIM: passS, Met: true, Trials: trials}, nil
}

// next picks the next quality to try inside the open bracket (fail,
// pass). With both ends measured it interpolates the target between
// their SSIMs; with one end it steps away from it, doubling the step each
// time (1, 2, 4, ...), since a camera's next frame usually needs about
// the quality of the last.
func (s *Searcher) next(fail, pass int, failS, passS float64, step *int) int {
	lo, hi := s.opts.MinQuality, s.opts.MaxQuality
	if fail >= lo && pass <= hi {
		f := (s.opts.MinSSIM - failS) / (passS - failS)
		if !(f >= 0 && f <= 1) { // a bump: SSIM fell as quality rose
			f = 0.5
		}
		w := pass - fail
		q := fail + int(math.Ceil(f*float64(w)))
		// Stay a quarter of a wide bracket away from its ends, so that a
		// poor guess still shrinks it by a quarter.
		m := max(1, w/4)
		return min(max(q, fail+m), pass-m)
	}
	if *step == 0 {
		*step = 1
	} else {
		*step *= 2
	}
	if pass <= hi { // only passes so far: step down
		return max(pass-*step, lo)
	}
	return min(fail+*step, hi) // only failures: step up
}

// sampleSide is the side of the crops a sample is made of: a multiple of
// 16, so that crops line up with JPEG's and VP8's macroblocks.
const sampleSide = 256

// sampleMargin is added to the target when the search runs on a sample:
// a sample's SSIM estimates the frame's to within about this on aerial
// frames (TestSampledSearch).
const sampleMargin = 0.003

// encodeSampled searches the quality on a sample of img and encodes img at
// it: a search costs a few encodes of about SampleMaxPixels, not of the
// whole frame (12 MP frames: a second instead of several).
func (s *Searcher) encodeSampled(img image.Image) (*Result, error) {
	sample := Sample(img, s.opts.SampleMaxPixels/2)
	o := s.opts
	o.SampleMaxPixels = 0
	o.MinSSIM = min(o.MinSSIM+sampleMargin, 0.999)
	sub := Searcher{opts: o, hint: s.hint, ref: s.ref, trial: s.trial}
	r, err := sub.Encode(sample)
	s.hint, s.ref, s.trial = sub.hint, sub.ref, sub.trial
	if err != nil {
		return nil, err
	}
	data, err := encodeAt(o.Format, img, r.Quality)
	if err != nil {
		return nil, err
	}
	r.Data, r.Sampled = data, true
	return r, nil
}

// Sample returns a mosaic of 256×256 crops of img taken on an even grid
// over all of it, about maxPixels in all (at least one crop; img itself
// when it is no larger). Frames of one scene have the same texture
// everywhere; the grid catches what differs from corner to corner.
func Sample(img image.Image, maxPixels int) image.Image {
	b := img.Bounds()
	if b.Dx()*b.Dy() <= maxPixels || b.Dx() < sampleSide || b.Dy() < sampleSide {
		return img
	}
	n := max(1, maxPixels/(sampleSide*sampleSide))
	// cols × rows ≈ n, in the image's aspect.
	cols := max(1, int(math.Round(math.Sqrt(float64(n)*float64(b.Dx())/float64(b.Dy())))))
	rows := max(1, n/cols)
	out := image.NewNRGBA(image.Rect(0, 0, cols*sampleSide, rows*sampleSide))
	for r := range rows {
		for c := range cols {
			// The crop's corner, on a 16-pixel grid, spread evenly.
			x := b.Min.X + (b.Dx()-sampleSide)*(2*c+1)/(2*cols)/16*16
			y := b.Min.Y + (b.Dy()-sampleSide)*(2*r+1)/(2*rows)/16*16
			dst := image.Rect(c*sampleSide, r*sampleSide, (c+1)*sampleSide, (r+1)*sampleSide)
			draw.Draw(out, dst, img, image.Pt(x, y), draw.Src)
		}
	}
	return out
}
