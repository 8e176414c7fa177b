package agent

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"time"

	"github.com/disintegration/imaging"
	"github.com/gen2brain/webp"

	"github.com/forestwatch/forest/agent/encode"
	"github.com/forestwatch/forest/segment"
	"github.com/forestwatch/forest/wire"
)

// encoded is the transmitted form of one frame.
type encoded struct {
	Image         []byte
	ContentType   string
	Width, Height int
	Mask          []byte
	// Quality and SSIM describe a re-encode chosen for encode.min_ssim:
	// its quality and its SSIM against the upright frame (Quality 0 when
	// the camera's bytes are sent or the quality is fixed).
	Quality int
	SSIM    float64
	// Upright and MaskImg are the transmitted pixels and mask, for
	// thumbnails and overlays.
	Upright image.Image
	MaskImg *image.Gray
	// ImageTime and MaskTime are the time spent on the image and on the
	// mask PNG.
	ImageTime, MaskTime time.Duration
}

// encoder builds the transmitted form of frames per EncodeConfig. It keeps
// the search state of encode.min_ssim between frames (a camera's next
// frame usually needs the quality of the last), so one pipeline uses one
// encoder; it is not safe for concurrent use.
type encoder struct {
	cfg EncodeConfig
	// search holds a Searcher per format (nil without min_ssim), each
	// with its own memory of the last quality.
	search map[encode.Format]*encode.Searcher
}

// searchSample is the size above which a frame's quality is searched on a
// sample of it (encode.Options.SampleMaxPixels): above the 1-4 MP frames
// of the cameras the bandwidth bar was measured on, up to 12-48 MP drone
// frames.
const searchSample = 4_000_000

// newEncoder returns the encoder for a validated cfg. progress, when set,
// is called after each trial of a quality search.
func newEncoder(cfg EncodeConfig, progress func()) (*encoder, error) {
	e := &encoder{cfg: cfg}
	if cfg.MinSSIM > 0 {
		e.search = map[encode.Format]*encode.Searcher{}
		for _, f := range []encode.Format{encode.WebP, encode.JPEG} {
			s, err := encode.NewSearcher(encode.Options{Format: f, MinSSIM: cfg.MinSSIM, Progress: progress, SampleMaxPixels: searchSample})
			if err != nil {
				return nil, fmt.Errorf("%w: encode: %w", ErrConfig, err)
			}
			e.search[f] = s
		}
	}
	return e, nil
}

// format is the format of a re-encode of a frame of the given size: JPEG
// in modes jpeg and keep, WebP in mode webp, and in mode auto WebP up to
// webp_max_pixels and JPEG beyond (WebP costs about ten times JPEG's CPU;
// a camera's own JPEG or WebP of that size is sent as taken).
func (e *encoder) format(pixels int) encode.Format {
	switch {
	case e.cfg.Mode == "jpeg" || e.cfg.Mode == "keep":
		return encode.JPEG
	case e.cfg.Mode == "auto" && e.cfg.WebPMaxPixels > 0 && pixels > e.cfg.WebPMaxPixels:
		return encode.JPEG
	}
	return encode.WebP
}

// encodeFrame is a fresh encoder's frame, for tests.
func encodeFrame(cfg EncodeConfig, raw []byte, f *segment.Frame, mask *image.Gray) (*encoded, error) {
	e, err := newEncoder(cfg, nil)
	if err != nil {
		return nil, err
	}
	return e.frame(raw, f, mask)
}

// frame builds the transmitted image and the mask PNG.
//
// The image is re-encoded — as WebP in mode "auto" and "webp", as JPEG in
// mode "jpeg" — at the lowest quality whose SSIM against the upright
// frame reaches MinSSIM (package encode), or at the fixed Quality when
// MinSSIM is 0. Mode "auto" sends the camera's own bytes instead when they
// are no larger and need no rotation, resize or crop; "keep" sends the
// camera bytes unless they need rotation. MaxDimension and Crop apply to
// the image and mask alike, so the mask always has the transmitted image's
// size and pixel layout.
//
// A camera frame whose EXIF orientation is not 1 (pixels stored sideways
// or mirrored) is re-encoded upright even with "keep" (as JPEG): the mask
// is computed on the upright image, and a reader that ignores EXIF (most
// do) would pair the stored pixels with a mask turned the other way.
func (e *encoder) frame(raw []byte, f *segment.Frame, mask *image.Gray) (*encoded, error) {
	t0 := time.Now()
	cfg := e.cfg
	img := f.Image
	if cfg.Crop {
		if r := forestBounds(mask); !r.Empty() && r != mask.Bounds() {
			img = imaging.Crop(img, r)
			mask = grayOf(imaging.Crop(mask, r))
		}
	}
	if d := cfg.MaxDimension; d > 0 {
		b := img.Bounds()
		if b.Dx() > d || b.Dy() > d {
			img = imaging.Fit(img, d, d, imaging.Linear)
			nb := img.Bounds()
			mask = grayOf(imaging.Resize(mask, nb.Dx(), nb.Dy(), imaging.NearestNeighbor))
		}
	}
	b := img.Bounds()
	out := &encoded{Width: b.Dx(), Height: b.Dy(), Upright: img, MaskImg: mask}
	upright := f.EXIF == nil || f.EXIF.Orientation <= 1
	// TIFF is no wire format: such frames are always re-encoded.
	camera := upright && f.Format != "tiff" && (cfg.Mode == "keep" || (cfg.Mode == "auto" && img == f.Image))
	format := e.format(b.Dx() * b.Dy())
	switch {
	case camera && cfg.Mode == "keep":
	case camera && format == encode.JPEG && cfg.Mode == "auto" && f.Format != "png":
		// A large camera frame goes as taken: a re-encode would save about
		// a fifth of its bytes for more CPU than decoding and segmenting
		// it (BENCHMARKS.md, 12-MP frames).
	case e.search != nil:
		r, err := e.search[format].Encode(img)
		if err != nil {
			return nil, err
		}
		out.Image, out.ContentType, out.Quality, out.SSIM = r.Data, r.ContentType, r.Quality, r.SSIM
	default:
		var buf bytes.Buffer
		var err error
		if format == encode.JPEG {
			err = jpeg.Encode(&buf, encode.Opaque(img), &jpeg.Options{Quality: cfg.Quality})
			out.ContentType = wire.JPEG
		} else {
			err = webp.Encode(&buf, img, webp.Options{Quality: cfg.Quality})
			out.ContentType = wire.WebP
		}
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", out.ContentType, err)
		}
		out.Image = buf.Bytes()
	}
	// auto: the camera's bytes win when they are no larger than the
	// re-encode.
	if camera && (out.Image == nil || len(raw) <= len(out.Image)) {
		out.Image, out.Quality, out.SSIM = raw, 0, 0
		switch f.Format {
		case "jpeg":
			out.ContentType = wire.JPEG
		case "png":
			out.ContentType = wire.PNG
		default:
			out.ContentType = wire.WebP
		}
	}
	t1 := time.Now()
	m, err := segment.MaskPNG(mask)
	if err != nil {
		return nil, fmt.Errorf("encode mask: %w", err)
	}
	out.Mask = m
	out.ImageTime, out.MaskTime = t1.Sub(t0), time.Since(t1)
	return out, nil
}

// forestBounds returns the bounding box of the mask's forest pixels.
func forestBounds(m *image.Gray) image.Rectangle {
	b := m.Bounds()
	r := image.Rectangle{}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		row := m.Pix[m.PixOffset(b.Min.X, y):][:b.Dx()]
		for x, v := range row {
			if v >= 128 {
				r = r.Union(image.Rect(b.Min.X+x, y, b.Min.X+x+1, y+1))
			}
		}
	}
	return r
}

// grayOf converts an image to a 0-origin *image.Gray.
func grayOf(img image.Image) *image.Gray {
	b := img.Bounds()
	g := image.NewGray(image.Rect(0, 0, b.Dx(), b.Dy()))
	if n, ok := img.(*image.NRGBA); ok {
		for y := 0; y < b.Dy(); y++ {
			row := n.Pix[n.PixOffset(b.Min.X, b.Min.Y+y):]
			for x := 0; x < b.Dx(); x++ {
				g.Pix[y*g.Stride+x] = row[4*x]
			}
		}
		return g
	}
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			r, _, _, _ := img.At(b.Min.X+x, b.Min.Y+y).RGBA()
			g.Pix[y*g.Stride+x] = uint8(r >> 8)
		}
	}
	return g
}

// thumbnail returns a JPEG of the mask overlay no larger than side pixels.
func thumbnail(img image.Image, mask *image.Gray, side int) []byte {
	b := img.Bounds()
	if b.Dx() > side || b.Dy() > side {
		img = imaging.Fit(img, side, side, imaging.Box)
		nb := img.Bounds()
		mask = grayOf(imaging.Resize(mask, nb.Dx(), nb.Dy(), imaging.NearestNeighbor))
	}
	ov := segment.Overlay(img, mask)
	if ov == nil {
		return nil
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, encode.Opaque(ov), &jpeg.Options{Quality: 80}); err != nil {
		return nil
	}
	return buf.Bytes()
}

// encoderLabel describes encode.mode for the status page ("auto · WebP by system libwebp"),
// names the WebP encoder it uses ("" in modes jpeg and keep) and says why that is the
// WebAssembly fallback, if it is.
func encoderLabel(mode string) (label, webpBy string, fallback error) {
	if mode != "auto" && mode != "webp" {
		return mode, "", nil
	}
	webpBy, shown, fallback := webpEncoder()
	return mode + " · WebP by " + shown, webpBy, fallback
}

// webpEncoder names the WebP encoder this process uses, the same with a
// hint at the faster one when it runs the WebAssembly fallback, and why.
func webpEncoder() (name, shown string, fallback error) {
	name, fallback = encode.WebPEncoder()
	if fallback != nil {
		return name, name + " (slower: install libwebp-dev)", fallback
	}
	return name, name, nil
}
