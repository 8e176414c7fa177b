package cloud

import (
	"bytes"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"image/png"
	"math/rand/v2"
	"testing"
)

// TestEncodePNG: the fast PNG writer keeps every pixel of a YCbCr image
// of each chroma subsampling, of a sub-image (non-zero origin, shared
// planes), of a gray image, and of the generic path, at odd sizes.
func TestEncodePNG(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	var imgs []image.Image
	for _, ratio := range []image.YCbCrSubsampleRatio{image.YCbCrSubsampleRatio444, image.YCbCrSubsampleRatio422,
		image.YCbCrSubsampleRatio420, image.YCbCrSubsampleRatio440, image.YCbCrSubsampleRatio411, image.YCbCrSubsampleRatio410} {
		m := image.NewYCbCr(image.Rect(0, 0, 37, 23), ratio)
		for _, p := range [][]byte{m.Y, m.Cb, m.Cr} {
			for i := range p {
				p[i] = uint8(r.Uint32())
			}
		}
		imgs = append(imgs, m, m.SubImage(image.Rect(3, 5, 30, 22)))
	}
	g := image.NewGray(image.Rect(2, 1, 19, 12))
	for i := range g.Pix {
		g.Pix[i] = uint8(r.Uint32())
	}
	imgs = append(imgs, g)
	pal := image.NewPaletted(image.Rect(0, 0, 9, 9), color.Palette{color.Black, color.White, color.RGBA{200, 10, 10, 255}})
	for i := range pal.Pix {
		pal.Pix[i] = uint8(r.IntN(3))
	}
	imgs = append(imgs, pal)
	for i, want := range imgs {
		b, err := encodePNG(want)
		if err != nil {
			t.Fatal(err)
		}
		got, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("image %d (%T %v): not a PNG: %v", i, want, want.Bounds(), err)
		}
		if got.Bounds().Size() != want.Bounds().Size() {
			t.Fatalf("image %d: size %v, want %v", i, got.Bounds().Size(), want.Bounds().Size())
		}
		wb, gb := want.Bounds(), got.Bounds()
		for y := range wb.Dy() {
			for x := range wb.Dx() {
				w := color.NRGBAModel.Convert(want.At(wb.Min.X+x, wb.Min.Y+y))
				g := color.NRGBAModel.Convert(got.At(gb.Min.X+x, gb.Min.Y+y))
				if w != g {
					t.Fatalf("image %d (%T) pixel %d,%d: %v, want %v", i, want, x, y, g, w)
				}
			}
		}
	}
}

// BenchmarkEncodePNG converts a 1024×768 4:2:0 JPEG's decoded image to PNG
// with encodePNG and, for reference, with image/png (default level, from
// the YCbCr image and from RGBA).
func BenchmarkEncodePNG(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 5))
	src := image.NewRGBA(image.Rect(0, 0, 1024, 768))
	for y := range 768 {
		for x := range 1024 {
			n := uint8(r.IntN(24))
			src.Set(x, y, color.RGBA{uint8(x/4) + n, uint8(y/3) + n, uint8((x+y)/7) + n, 255})
		}
	}
	var jb bytes.Buffer
	if err := jpeg.Encode(&jb, src, &jpeg.Options{Quality: 88}); err != nil {
		b.Fatal(err)
	}
	img, err := jpeg.Decode(bytes.NewReader(jb.Bytes()))
	if err != nil {
		b.Fatal(err)
	}
	rgba := image.NewRGBA(img.Bounds())
	draw.Draw(rgba, rgba.Bounds(), img, image.Point{}, draw.Src)
	for _, c := range []struct {
		name string
		f    func() ([]byte, error)
	}{
		{"encodePNG", func() ([]byte, error) { return encodePNG(img) }},
		{"image-png-ycbcr", func() ([]byte, error) { var w bytes.Buffer; err := png.Encode(&w, img); return w.Bytes(), err }},
		{"image-png-rgba", func() ([]byte, error) { var w bytes.Buffer; err := png.Encode(&w, rgba); return w.Bytes(), err }},
		{"jpeg-decode", func() ([]byte, error) { _, err := jpeg.Decode(bytes.NewReader(jb.Bytes())); return nil, err }},
	} {
		b.Run(c.name, func(b *testing.B) {
			var n int
			for b.Loop() {
				out, err := c.f()
				if err != nil {
					b.Fatal(err)
				}
				n = len(out)
			}
			b.ReportMetric(float64(n), "bytes")
		})
	}
}
