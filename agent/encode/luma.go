package encode

import "image"

// Luma is an image's luma plane: Y' = 0.299 R + 0.587 G + 0.114 B
// (ITU-R BT.601, the Y of JPEG's YCbCr), rounded to 8 bits, computed from
// the image's RGB values as a reader displays them.
type Luma struct {
	Pix  []uint8
	W, H int
}

// LumaOf returns img's luma plane. *image.YCbCr, *image.RGBA,
// *image.NRGBA and *image.Gray are read directly; other types through
// their color model.
func LumaOf(img image.Image) *Luma {
	l := &Luma{}
	lumaInto(l, img)
	return l
}

// lumaInto is LumaOf into l, reusing its buffer.
func lumaInto(l *Luma, img image.Image) {
	b := img.Bounds()
	l.W, l.H = b.Dx(), b.Dy()
	if n := l.W * l.H; cap(l.Pix) >= n {
		l.Pix = l.Pix[:n]
	} else {
		l.Pix = make([]uint8, n)
	}
	y601 := func(r, g, bl int32) uint8 {
		// The fixed-point weights of color.RGBToYCbCr and image/jpeg.
		return uint8((19595*r + 38470*g + 7471*bl + 1<<15) >> 16)
	}
	switch m := img.(type) {
	case *image.YCbCr:
		// Y'CbCr → R'G'B' as image/color does (clamped to 8 bits), then
		// back to Y', so the luma is that of the pixels a reader shows
		// rather than the stored Y (they differ where RGB clamps).
		for y := 0; y < l.H; y++ {
			for x := 0; x < l.W; x++ {
				yi := m.YOffset(b.Min.X+x, b.Min.Y+y)
				ci := m.COffset(b.Min.X+x, b.Min.Y+y)
				r, g, bl := ycc2rgb(m.Y[yi], m.Cb[ci], m.Cr[ci])
				l.Pix[y*l.W+x] = y601(r, g, bl)
			}
		}
	case *image.RGBA:
		for y := 0; y < l.H; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):][:4*l.W]
			for x := 0; x < l.W; x++ {
				l.Pix[y*l.W+x] = y601(int32(row[4*x]), int32(row[4*x+1]), int32(row[4*x+2]))
			}
		}
	case *image.NRGBA:
		for y := 0; y < l.H; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):][:4*l.W]
			for x := 0; x < l.W; x++ {
				p := row[4*x : 4*x+4]
				if a := int32(p[3]); a != 0xff {
					// Composited on black, as the alpha-premultiplied
					// RGBA a reader converts to.
					l.Pix[y*l.W+x] = y601(int32(p[0])*a/0xff, int32(p[1])*a/0xff, int32(p[2])*a/0xff)
					continue
				}
				l.Pix[y*l.W+x] = y601(int32(p[0]), int32(p[1]), int32(p[2]))
			}
		}
	case *image.Gray:
		for y := 0; y < l.H; y++ {
			copy(l.Pix[y*l.W:][:l.W], m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):])
		}
	default:
		for y := 0; y < l.H; y++ {
			for x := 0; x < l.W; x++ {
				r, g, bl, _ := img.At(b.Min.X+x, b.Min.Y+y).RGBA()
				l.Pix[y*l.W+x] = y601(int32(r>>8), int32(g>>8), int32(bl>>8))
			}
		}
	}
}

// ycc2rgb is color.YCbCrToRGB without the color.Color interface.
func ycc2rgb(y, cb, cr uint8) (int32, int32, int32) {
	yy1 := int32(y) * 0x10101
	cb1 := int32(cb) - 128
	cr1 := int32(cr) - 128
	clamp := func(v int32) int32 {
		if uint32(v)&0xff000000 == 0 {
			return v >> 16
		}
		return ^(v >> 31) & 0xff
	}
	return clamp(yy1 + 91881*cr1), clamp(yy1 - 22554*cb1 - 46802*cr1), clamp(yy1 + 116130*cb1)
}

// vp8Luma sets l to the luma of a decoded lossy WebP: its Y'CbCr planes
// are video range (ITU-R BT.601, Y' 16-235), converted to RGB with
// libwebp's fixed-point formulas (src/dsp/yuv.h), each pixel with its
// nearest chroma sample. libwebp's default "fancy" upsampling
// interpolates chroma instead; the luma of the RGB depends on chroma only
// where a channel clips, so the two differ in a few pixels by one level.
func vp8Luma(l *Luma, m *image.YCbCr) {
	b := m.Bounds()
	l.W, l.H = b.Dx(), b.Dy()
	if n := l.W * l.H; cap(l.Pix) >= n {
		l.Pix = l.Pix[:n]
	} else {
		l.Pix = make([]uint8, n)
	}
	for y := 0; y < l.H; y++ {
		for x := 0; x < l.W; x++ {
			yy := int32(m.Y[m.YOffset(b.Min.X+x, b.Min.Y+y)])
			ci := m.COffset(b.Min.X+x, b.Min.Y+y)
			u, v := int32(m.Cb[ci]), int32(m.Cr[ci])
			yh := multHi(yy, 19077)
			r := clip8(yh + multHi(v, 26149) - 14234)
			g := clip8(yh - multHi(u, 6419) - multHi(v, 13320) + 8708)
			bl := clip8(yh + multHi(u, 33050) - 17685)
			l.Pix[y*l.W+x] = uint8((19595*r + 38470*g + 7471*bl + 1<<15) >> 16)
		}
	}
}

func multHi(v, c int32) int32 { return (v * c) >> 8 }

// clip8 is libwebp's VP8Clip8: 6 fractional bits, clamped to 0-255.
func clip8(v int32) int32 {
	const mask = (256 << 6) - 1
	if v&^mask == 0 {
		return v >> 6
	}
	if v < 0 {
		return 0
	}
	return 255
}
