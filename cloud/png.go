package cloud

import (
	"bytes"
	"compress/zlib"
	"image"
	"image/color"
	"image/png"

	"github.com/forestwatch/forest/internal/fastpng"
)

// encodePNG encodes a decoded legacy image as PNG for readers that need
// PNG (legacy.format: png), as cheaply as it can. The images of old devices
// are camera JPEGs, which decode to *image.YCbCr (or *image.Gray): those
// are written as 8-bit RGB (or gray) rows straight from the decoder's
// planes, each row with the PNG "up" filter, compressed with Huffman
// coding only (photographs have few repeated strings for LZ77 to find).
// For a 1024×768 photo that takes about 12 ms here (BenchmarkEncodePNG),
// against 90 ms for image/png's default (adaptive filters, zlib level 6)
// from RGBA and 345 ms from YCbCr, where it takes every pixel through
// color.Color; the file is 5–30 % larger. Other images (a GIF's palette, a
// WebP with alpha) go through image/png at its fastest level.
func encodePNG(img image.Image) ([]byte, error) {
	switch m := img.(type) {
	case *image.YCbCr:
		return fastpng.Encode(m.Rect, 3, zlib.HuffmanOnly, ycbcrRows(m))
	case *image.Gray:
		return fastpng.Gray(m, zlib.HuffmanOnly)
	}
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ycbcrRows returns the row filler of an RGB PNG of m: for the chroma
// subsamplings of JPEG files (4:4:4, 4:2:2, 4:2:0, 4:4:0) each row's
// chroma offsets are computed once and stepped, not asked per pixel.
func ycbcrRows(m *image.YCbCr) func(y int, row []byte) {
	var hs, vs int // chroma shifts
	switch m.SubsampleRatio {
	case image.YCbCrSubsampleRatio444:
	case image.YCbCrSubsampleRatio422:
		hs = 1
	case image.YCbCrSubsampleRatio420:
		hs, vs = 1, 1
	case image.YCbCrSubsampleRatio440:
		vs = 1
	default:
		return func(y int, row []byte) {
			yi := (y - m.Rect.Min.Y) * m.YStride
			for x, i := m.Rect.Min.X, 0; x < m.Rect.Max.X; x, i = x+1, i+3 {
				ci := m.COffset(x, y)
				row[i], row[i+1], row[i+2] = color.YCbCrToRGB(m.Y[yi+x-m.Rect.Min.X], m.Cb[ci], m.Cr[ci])
			}
		}
	}
	return func(y int, row []byte) {
		w := m.Rect.Dx()
		ys := m.Y[(y-m.Rect.Min.Y)*m.YStride:][:w]
		c0 := (y>>vs - m.Rect.Min.Y>>vs) * m.CStride
		for i, x := 0, m.Rect.Min.X; i < w; i, x = i+1, x+1 {
			ci := c0 + x>>hs - m.Rect.Min.X>>hs
			row[3*i], row[3*i+1], row[3*i+2] = color.YCbCrToRGB(ys[i], m.Cb[ci], m.Cr[ci])
		}
	}
}
