package encode

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	_ "image/png" // decoder for Measure

	"github.com/gen2brain/webp"
	xwebp "golang.org/x/image/webp"
)

// Format is a transmitted image format.
type Format int

const (
	// WebP is lossy WebP (VP8), encoded by the system's libwebp when one
	// is installed and otherwise by libwebp 1.4 compiled to WebAssembly
	// (see WebPEncoder). It is the default: at the same SSIM it is
	// 17-36 % smaller than image/jpeg on aerial frames (BENCHMARKS.md).
	WebP Format = iota
	// JPEG is baseline 4:2:0 JPEG from the standard library's image/jpeg.
	JPEG
)

// String returns the configuration spelling of f.
func (f Format) String() string {
	switch f {
	case WebP:
		return "webp"
	case JPEG:
		return "jpeg"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// UnmarshalText accepts "webp" (or empty) and "jpeg".
func (f *Format) UnmarshalText(b []byte) error {
	switch string(b) {
	case "", "webp":
		*f = WebP
	case "jpeg":
		*f = JPEG
	default:
		return fmt.Errorf("format: must be webp or jpeg (got %q)", b)
	}
	return nil
}

// ContentType returns the MIME type of f.
func (f Format) ContentType() string {
	if f == JPEG {
		return "image/jpeg"
	}
	return "image/webp"
}

// WebPEncoder says which libwebp encodes WebP in this process: "system
// libwebp" when github.com/gen2brain/webp loaded libwebp.so and
// libwebpdemux.so (Debian's libwebp-dev), else "WebAssembly" with the
// reason. The system library encodes a 1-MP frame about 4 times faster
// and the agent peaks about 40 MB lower with it (BENCHMARKS.md); either
// one's output is checked by the same SSIM.
func WebPEncoder() (name string, why error) {
	if err := webp.Dynamic(); err != nil {
		return "WebAssembly", err
	}
	return "system libwebp", nil
}

// webpMethod is libwebp's effort (0 fast … 6 slow); 4 is its default.
const webpMethod = 4

// encodeAt encodes img in format f at quality q (1-100).
func encodeAt(f Format, img image.Image, q int) ([]byte, error) {
	var buf bytes.Buffer
	switch f {
	case JPEG:
		if err := jpeg.Encode(&buf, Opaque(img), &jpeg.Options{Quality: q}); err != nil {
			return nil, fmt.Errorf("encode jpeg at quality %d: %w", q, err)
		}
	default:
		if err := webp.Encode(&buf, img, webp.Options{Quality: q, Method: webpMethod}); err != nil {
			return nil, fmt.Errorf("encode webp at quality %d: %w", q, err)
		}
	}
	return buf.Bytes(), nil
}

// decodeLuma decodes data, encoded in format f, into l: the luma of the
// RGB a reader displays.
func decodeLuma(f Format, data []byte, l *Luma) error {
	switch f {
	case JPEG:
		img, err := jpeg.Decode(bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("decode own jpeg: %w", err)
		}
		lumaInto(l, img)
	default:
		// golang.org/x/image/webp returns VP8's Y'CbCr planes, which are
		// video range (Y' 16-235); read through image/color's full-range
		// conversion their RGB comes out darker and stretched. vp8Luma
		// converts them as libwebp does.
		img, err := xwebp.Decode(bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("decode own webp: %w", err)
		}
		switch m := img.(type) {
		case *image.YCbCr:
			vp8Luma(l, m)
		case *image.NYCbCrA:
			// A frame with transparent pixels (an orthomosaic's no-data):
			// composited on black, as lumaInto does with the reference.
			vp8Luma(l, &m.YCbCr)
			for y := 0; y < l.H; y++ {
				for x := 0; x < l.W; x++ {
					a := uint32(m.A[m.AOffset(m.Rect.Min.X+x, m.Rect.Min.Y+y)])
					if a != 0xff {
						p := &l.Pix[y*l.W+x]
						*p = uint8((uint32(*p)*a + 127) / 0xff)
					}
				}
			}
		default:
			return fmt.Errorf("decode own webp: got %T, want a lossy (Y'CbCr) image", img)
		}
	}
	return nil
}

// Opaque returns an opaque *image.NRGBA as the identical *image.RGBA
// (premultiplying by an alpha of 255 changes nothing), which image/jpeg
// encodes on its fast path instead of one interface call and allocation
// per pixel. Other images are returned as they are.
func Opaque(img image.Image) image.Image {
	n, ok := img.(*image.NRGBA)
	if !ok {
		return img
	}
	b := n.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		row := n.Pix[n.PixOffset(b.Min.X, y):][:4*b.Dx()]
		for i := 3; i < len(row); i += 4 {
			if row[i] != 0xff {
				return img
			}
		}
	}
	return &image.RGBA{Pix: n.Pix, Stride: n.Stride, Rect: n.Rect}
}

// Measure returns the SSIM of data, an image of the given content type
// (image/jpeg or image/webp), against ref, decoding it as a reader
// displays it (WebP in video range; see SSIM and LumaOf). PNG and other
// types are decoded with the standard library's registered decoders.
func Measure(ref image.Image, data []byte, contentType string) (float64, error) {
	var l Luma
	switch contentType {
	case JPEG.ContentType():
		if err := decodeLuma(JPEG, data, &l); err != nil {
			return 0, err
		}
	case WebP.ContentType():
		if err := decodeLuma(WebP, data, &l); err != nil {
			return 0, err
		}
	default:
		img, _, err := image.Decode(bytes.NewReader(data))
		if err != nil {
			return 0, fmt.Errorf("decode %s: %w", contentType, err)
		}
		lumaInto(&l, img)
	}
	return SSIM(LumaOf(ref), &l), nil
}
