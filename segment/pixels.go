package segment

import (
	"image"
	"image/color"
)

// toRGB writes img as packed 8-bit RGB (3 bytes per pixel, row-major, origin at the
// image's Min) into buf, growing it if needed, and returns the slice. Common decoder
// output types are read straight from their Pix slices; anything else goes through
// color.Model conversion per pixel (correct, slower). Alpha is ignored: straight-alpha
// (NRGBA) colours are used as stored, premultiplied (RGBA) colours as stored.
// 16-bit samples keep their high byte.
func toRGB(img image.Image, buf []byte) []byte {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	n := w * h * 3
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	switch m := img.(type) {
	case *image.RGBA:
		rgbaRows(buf, m.Pix, m.Stride, m.PixOffset(b.Min.X, b.Min.Y), w, h, 1)
	case *image.NRGBA:
		rgbaRows(buf, m.Pix, m.Stride, m.PixOffset(b.Min.X, b.Min.Y), w, h, 1)
	case *image.RGBA64:
		rgbaRows(buf, m.Pix, m.Stride, m.PixOffset(b.Min.X, b.Min.Y), w, h, 2)
	case *image.NRGBA64:
		rgbaRows(buf, m.Pix, m.Stride, m.PixOffset(b.Min.X, b.Min.Y), w, h, 2)
	case *image.Gray:
		for y := 0; y < h; y++ {
			src := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):][:w]
			dst := buf[y*w*3:][:w*3]
			for x, v := range src {
				dst[3*x], dst[3*x+1], dst[3*x+2] = v, v, v
			}
		}
	case *image.Gray16:
		for y := 0; y < h; y++ {
			src := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):][:2*w]
			dst := buf[y*w*3:][:w*3]
			for x := 0; x < w; x++ {
				v := src[2*x]
				dst[3*x], dst[3*x+1], dst[3*x+2] = v, v, v
			}
		}
	case *image.Paletted:
		var lut [256][3]byte
		for i, c := range m.Palette {
			r, g, bb, _ := c.RGBA()
			lut[i] = [3]byte{byte(r >> 8), byte(g >> 8), byte(bb >> 8)}
		}
		for y := 0; y < h; y++ {
			src := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):][:w]
			dst := buf[y*w*3:][:w*3]
			for x, v := range src {
				p := lut[v]
				dst[3*x], dst[3*x+1], dst[3*x+2] = p[0], p[1], p[2]
			}
		}
	case *image.YCbCr:
		// Chroma is subsampled by xd horizontally and yd vertically (as in YCbCr.COffset).
		xd, yd := 1, 1
		switch m.SubsampleRatio {
		case image.YCbCrSubsampleRatio422:
			xd = 2
		case image.YCbCrSubsampleRatio420:
			xd, yd = 2, 2
		case image.YCbCrSubsampleRatio440:
			yd = 2
		case image.YCbCrSubsampleRatio411:
			xd = 4
		case image.YCbCrSubsampleRatio410:
			xd, yd = 4, 2
		}
		r := m.Rect
		for y := 0; y < h; y++ {
			dst := buf[y*w*3:][:w*3]
			yy := b.Min.Y + y
			yrow := m.Y[m.YOffset(b.Min.X, yy):][:w]
			cbase := (yy/yd-r.Min.Y/yd)*m.CStride - r.Min.X/xd
			for x, yv := range yrow {
				ci := cbase + (b.Min.X+x)/xd
				rr, g, bb := color.YCbCrToRGB(yv, m.Cb[ci], m.Cr[ci])
				dst[3*x], dst[3*x+1], dst[3*x+2] = rr, g, bb
			}
		}
	default:
		i := 0
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
				buf[i], buf[i+1], buf[i+2] = c.R, c.G, c.B
				i += 3
			}
		}
	}
	return buf
}

// rgbaRows copies 4-channel rows with bytes-per-sample bps (1 or 2, big-endian) to packed RGB.
func rgbaRows(dst, pix []byte, stride, off, w, h, bps int) {
	step := 4 * bps
	for y := 0; y < h; y++ {
		src := pix[off+y*stride:][:w*step]
		d := dst[y*w*3:][:w*3]
		for x := 0; x < w; x++ {
			s := src[x*step:]
			d[3*x], d[3*x+1], d[3*x+2] = s[0], s[bps], s[2*bps]
		}
	}
}
