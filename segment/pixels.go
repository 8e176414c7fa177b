package segment

import (
	"image"
	"image/color"
)

// rowCache converts the rows of a frame that is not stored as 8-bit RGBA (a JPEG's YCbCr,
// grey, paletted, 16-bit) to packed RGB on demand and keeps the last few: row y in slot
// y%n. Tiled segmentation reads a band of rows at a time and resizing reads rows in
// order, so each row is converted about once, and a frame costs n rows instead of a full
// RGB copy (36 MB for a 12-MP frame).
type rowCache struct {
	img  image.Image
	b    image.Rectangle
	buf  []byte
	tags []int
}

// reset points the cache at img with n slots (more than any caller holds at once).
func (c *rowCache) reset(img image.Image, n int) {
	c.img, c.b = img, img.Bounds()
	w := c.b.Dx() * 3
	if cap(c.buf) < n*w {
		c.buf = make([]byte, n*w)
	}
	c.buf = c.buf[:n*w]
	if cap(c.tags) < n {
		c.tags = make([]int, n)
	}
	c.tags = c.tags[:n]
	for i := range c.tags {
		c.tags[i] = -1
	}
}

func (c *rowCache) get(y int) []byte {
	w := c.b.Dx() * 3
	slot := y % len(c.tags)
	row := c.buf[slot*w : (slot+1)*w]
	if c.tags[slot] != y {
		toRGBRect(c.img, image.Rect(c.b.Min.X, c.b.Min.Y+y, c.b.Max.X, c.b.Min.Y+y+1), row)
		c.tags[slot] = y
	}
	return row
}

// toRGB writes img as packed 8-bit RGB (3 bytes per pixel, row-major, origin at the
// image's Min) into buf, growing it if needed, and returns the slice. Common decoder
// output types are read straight from their Pix slices; anything else goes through
// color.Model conversion per pixel (correct, slower). Alpha is ignored: straight-alpha
// (NRGBA) colours are used as stored, premultiplied (RGBA) colours as stored.
// 16-bit samples keep their high byte.
func toRGB(img image.Image, buf []byte) []byte {
	return toRGBRect(img, img.Bounds(), buf)
}

// toRGBRect is toRGB for the part b of img's bounds.
func toRGBRect(img image.Image, b image.Rectangle, buf []byte) []byte {
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
