package segment

import (
	"compress/zlib"
	"fmt"
	"image"

	"github.com/forestwatch/forest/internal/fastpng"
)

// MaskPNG encodes a mask as an 8-bit grayscale PNG (0 and 255, any PNG
// reader's usual gray image): rows with the PNG "Up" filter (zero wherever
// the mask does not change from the row above) at zlib's default level,
// by package fastpng. On a 12-MP aerial mask that is as small as
// image/png's default encoding (2 % larger on the 256² satellite masks)
// and 1.6 times as fast (65 against 104 ms), and 20 % larger than its best
// compression at a 35th of the time: image/png tries five filters on
// every row.
func MaskPNG(mask *image.Gray) ([]byte, error) {
	if mask == nil || mask.Bounds().Empty() {
		return nil, ErrEmptyImage
	}
	data, err := fastpng.Gray(mask, zlib.DefaultCompression)
	if err != nil {
		return nil, fmt.Errorf("encode mask png: %w", err)
	}
	return data, nil
}

// Overlay returns a view of img for people: forest pixels (mask 255) are tinted green,
// the rest are half desaturated and dimmed to 80 %. The result has the mask's size;
// img is read from its bounds' origin. It returns nil if either argument is nil or their
// sizes differ.
func Overlay(img image.Image, mask *image.Gray) image.Image {
	if img == nil || mask == nil || img.Bounds().Dx() != mask.Bounds().Dx() || img.Bounds().Dy() != mask.Bounds().Dy() {
		return nil
	}
	b := mask.Bounds()
	w, h := b.Dx(), b.Dy()
	rgb := toRGB(img, nil)
	out := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		mrow := mask.Pix[mask.PixOffset(b.Min.X, b.Min.Y+y):][:w]
		src := rgb[y*w*3:][:w*3]
		dst := out.Pix[y*out.Stride:][:w*4]
		for x, mv := range mrow {
			r, g, bl := uint32(src[3*x]), uint32(src[3*x+1]), uint32(src[3*x+2])
			if mv >= 128 {
				// 50 % source, 50 % green (40,200,60).
				dst[4*x] = uint8((r + 40) / 2)
				dst[4*x+1] = uint8((g + 200) / 2)
				dst[4*x+2] = uint8((bl + 60) / 2)
			} else {
				l := (r*3 + g*6 + bl) / 10
				dst[4*x] = uint8((r + l) * 2 / 5)
				dst[4*x+1] = uint8((g + l) * 2 / 5)
				dst[4*x+2] = uint8((bl + l) * 2 / 5)
			}
			dst[4*x+3] = 255
		}
	}
	return out
}
