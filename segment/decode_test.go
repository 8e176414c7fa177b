package segment

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/exiftest"
)

func encodePNG(t testing.TB, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodeNotImage(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":     nil,
		"text":      []byte("hello, this is not an image"),
		"gif":       []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
		"bad png":   []byte("\x89PNG\r\n\x1a\nxxxxxxxxxxxxxxxx"),
		"bad jpeg":  []byte("\xff\xd8\xff\xe0garbage"),
		"truncated": encodePNG(t, image.NewGray(image.Rect(0, 0, 8, 8)))[:60],
	} {
		if _, err := Decode(data, 0); !errors.Is(err, ErrNotImage) {
			t.Errorf("%s: err %v, want ErrNotImage", name, err)
		}
	}
}

// bombPNG returns a PNG whose IHDR declares w×h pixels but holds no pixel data at all,
// so decoding it (rather than refusing it from the header) would fail with ErrNotImage.
func bombPNG(t testing.TB, w, h uint32) []byte {
	data := encodePNG(t, image.NewGray(image.Rect(0, 0, 1, 1)))
	binary.BigEndian.PutUint32(data[16:], w)
	binary.BigEndian.PutUint32(data[20:], h)
	binary.BigEndian.PutUint32(data[29:], crc32.ChecksumIEEE(data[12:29]))
	return data[:33]
}

func TestDecodeTooLarge(t *testing.T) {
	if _, err := Decode(bombPNG(t, 100000, 100000), 0); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("bomb: err %v, want ErrTooLarge", err)
	}
	data := encodePNG(t, image.NewGray(image.Rect(0, 0, 100, 100)))
	if _, err := Decode(data, 9999); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("100x100 with limit 9999: %v", err)
	}
	if f, err := Decode(data, 10000); err != nil || f.Width != 100 || f.Height != 100 || f.Format != "png" {
		t.Fatalf("100x100 with limit 10000: %v %+v", err, f)
	}
	if _, err := Decode(data, -1); err != nil {
		t.Fatalf("no limit: %v", err)
	}
}

// TestDecodePixelFormats decodes PNGs of every pixel format and checks the packed RGB the
// model sees against the colour each pixel decodes to.
func TestDecodePixelFormats(t *testing.T) {
	const w, h = 13, 7
	pal := color.Palette{color.NRGBA{10, 200, 30, 255}, color.NRGBA{250, 5, 90, 255}, color.NRGBA{0, 0, 0, 255}}
	imgs := map[string]image.Image{}
	gray := image.NewGray(image.Rect(0, 0, w, h))
	gray16 := image.NewGray16(image.Rect(0, 0, w, h))
	paletted := image.NewPaletted(image.Rect(0, 0, w, h), pal)
	nrgba := image.NewNRGBA(image.Rect(0, 0, w, h))
	nrgba64 := image.NewNRGBA64(image.Rect(0, 0, w, h))
	rgb := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			v := uint8(x*19 + y*7)
			gray.SetGray(x, y, color.Gray{v})
			gray16.SetGray16(x, y, color.Gray16{uint16(v)<<8 | 0x7f})
			paletted.SetColorIndex(x, y, uint8((x+y)%3))
			nrgba.SetNRGBA(x, y, color.NRGBA{v, 255 - v, uint8(x), uint8(40 + y*30)}) // with alpha
			nrgba64.SetNRGBA64(x, y, color.NRGBA64{uint16(v) << 8, 0xffff - uint16(v)<<8, 0x1234, 0xffff})
			rgb.SetRGBA(x, y, color.RGBA{v, uint8(y), 255 - v, 255})
		}
	}
	imgs["gray"], imgs["gray16"], imgs["paletted"], imgs["nrgba-alpha"], imgs["nrgba64"], imgs["rgb"] = gray, gray16, paletted, nrgba, nrgba64, rgb
	for name, src := range imgs {
		f, err := Decode(encodePNG(t, src), 0)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if f.Width != w || f.Height != h || f.Format != "png" || f.EXIF != nil {
			t.Fatalf("%s: frame %+v", name, f)
		}
		got := toRGB(f.Image, nil)
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				want := straightRGB(f.Image.At(x, y))
				i := (y*w + x) * 3
				if [3]byte(got[i:i+3]) != want {
					t.Fatalf("%s (%T) at %d,%d: %v, want %v", name, f.Image, x, y, got[i:i+3], want)
				}
			}
		}
	}
}

// straightRGB is the reference conversion: non-premultiplied colour, high byte.
func straightRGB(c color.Color) [3]byte {
	switch c := c.(type) {
	case color.NRGBA:
		return [3]byte{c.R, c.G, c.B}
	case color.NRGBA64:
		return [3]byte{byte(c.R >> 8), byte(c.G >> 8), byte(c.B >> 8)}
	}
	n := color.NRGBAModel.Convert(c).(color.NRGBA)
	return [3]byte{n.R, n.G, n.B}
}

func TestToRGBSubImagesAndYCbCr(t *testing.T) {
	for ratio := image.YCbCrSubsampleRatio444; ratio <= image.YCbCrSubsampleRatio410; ratio++ {
		m := image.NewYCbCr(image.Rect(0, 0, 21, 11), ratio)
		for i := range m.Y {
			m.Y[i] = uint8(i * 3)
		}
		for i := range m.Cb {
			m.Cb[i], m.Cr[i] = uint8(i*5), uint8(255-i*2)
		}
		checkToRGB(t, m)
		checkToRGB(t, m.SubImage(image.Rect(3, 2, 17, 9)))
		checkToRGB(t, m.SubImage(image.Rect(1, 1, 20, 10)))
		odd := image.NewYCbCr(image.Rect(-3, 5, 14, 16), ratio)
		for i := range odd.Y {
			odd.Y[i] = uint8(i * 7)
		}
		for i := range odd.Cb {
			odd.Cb[i], odd.Cr[i] = uint8(i*11), uint8(i*3)
		}
		checkToRGB(t, odd)
		checkToRGB(t, odd.SubImage(image.Rect(-1, 6, 9, 15)))
	}
	n := image.NewNRGBA(image.Rect(0, 0, 9, 9))
	for i := range n.Pix {
		n.Pix[i] = uint8(i)
		if i%4 == 3 {
			n.Pix[i] = 255
		}
	}
	checkToRGB(t, n.SubImage(image.Rect(2, 3, 7, 8)))
	checkToRGB(t, image.NewCMYK(image.Rect(0, 0, 3, 3))) // generic path
}

func checkToRGB(t *testing.T, img image.Image) {
	t.Helper()
	got := toRGB(img, nil)
	b := img.Bounds()
	i := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if want := straightRGB(img.At(x, y)); [3]byte(got[i:i+3]) != want {
				t.Fatalf("%T %v at %d,%d: %v, want %v", img, b, x, y, got[i:i+3], want)
			}
			i += 3
		}
	}
}

func TestDecodeWebP(t *testing.T) {
	data, err := os.ReadFile("testdata/blue-purple-pink.lossy.webp")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Decode(data, 0)
	if err != nil || f.Format != "webp" || f.Width == 0 {
		t.Fatalf("webp: %v %+v", err, f)
	}
	if _, err := Decode(data, 10); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("webp over limit: %v", err)
	}
}

func TestDecodeEXIF(t *testing.T) {
	// 32 wide, 16 tall: left half red, right half blue.
	img := image.NewNRGBA(image.Rect(0, 0, 32, 16))
	for y := 0; y < 16; y++ {
		for x := 0; x < 32; x++ {
			c := color.NRGBA{220, 20, 20, 255}
			if x >= 16 {
				c = color.NRGBA{20, 20, 220, 255}
			}
			img.SetNRGBA(x, y, c)
		}
	}
	for _, bo := range []exiftest.ByteOrder{binary.BigEndian, binary.LittleEndian} {
		f, err := Decode(exiftest.JPEG(t, img, exiftest.Block(bo, exiftest.Options{Orientation: 6})), 0)
		if err != nil {
			t.Fatal(err)
		}
		e := f.EXIF
		if e == nil {
			t.Fatalf("%v: no EXIF", bo)
		}
		wantTime := time.Date(2024, 6, 11, 14, 20, 30, 0, time.UTC)
		if e.Make != "Forestwatch" || e.Model != "Drone X1" || e.Orientation != 6 || !e.HasOffset || !e.DateTimeOriginal.Equal(wantTime) {
			t.Fatalf("%v: EXIF %+v", bo, e)
		}
		if e.GPS == nil || math.Abs(e.GPS.Latitude-(-(9+36/60.0+18/3600.0))) > 1e-9 || math.Abs(e.GPS.Longitude-(-(59+42/60.0))) > 1e-9 ||
			!e.GPS.HasAltitude || e.GPS.Altitude != 250.5 {
			t.Fatalf("%v: GPS %+v", bo, e.GPS)
		}
		// Orientation 6: stored pixels need a 90° clockwise turn; left (red) ends up on top.
		if f.Width != 16 || f.Height != 32 {
			t.Fatalf("%v: upright size %dx%d, want 16x32", bo, f.Width, f.Height)
		}
		top, bottom := straightRGB(f.Image.At(8, 4)), straightRGB(f.Image.At(8, 28))
		if top[0] < 150 || top[2] > 80 || bottom[2] < 150 || bottom[0] > 80 {
			t.Fatalf("%v: top %v bottom %v, want red on top, blue at the bottom", bo, top, bottom)
		}
	}
	// A JPEG without EXIF has none; a broken EXIF block is ignored, not fatal.
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, nil); err != nil {
		t.Fatal(err)
	}
	if f, err := Decode(buf.Bytes(), 0); err != nil || f.EXIF != nil || f.Format != "jpeg" || f.Width != 32 {
		t.Fatalf("plain jpeg: %v %+v", err, f)
	}
	broken := exiftest.Block(binary.BigEndian, exiftest.Options{Orientation: 6})[:20]
	if f, err := Decode(exiftest.JPEG(t, img, broken), 0); err != nil || f.EXIF != nil || f.Width != 32 {
		t.Fatalf("broken exif: %v %+v", err, f)
	}
}

// TestOrient checks every EXIF orientation against its definition: the stored pixel at
// (x,y) must appear where the orientation's transform puts it.
func TestOrient(t *testing.T) {
	const w, h = 3, 2
	src := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			src.SetNRGBA(x, y, color.NRGBA{uint8(x), uint8(y), 0, 255})
		}
	}
	// dest(x,y) for stored pixel (x,y), per the EXIF specification.
	maps := map[int]func(x, y int) (int, int){
		1: func(x, y int) (int, int) { return x, y },
		2: func(x, y int) (int, int) { return w - 1 - x, y },
		3: func(x, y int) (int, int) { return w - 1 - x, h - 1 - y },
		4: func(x, y int) (int, int) { return x, h - 1 - y },
		5: func(x, y int) (int, int) { return y, x },
		6: func(x, y int) (int, int) { return h - 1 - y, x },
		7: func(x, y int) (int, int) { return h - 1 - y, w - 1 - x },
		8: func(x, y int) (int, int) { return y, w - 1 - x },
	}
	for o, f := range maps {
		out := orient(src, o)
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				dx, dy := f(x, y)
				if c := straightRGB(out.At(dx, dy)); c[0] != uint8(x) || c[1] != uint8(y) {
					t.Fatalf("orientation %d: stored (%d,%d) found %v at (%d,%d)", o, x, y, c, dx, dy)
				}
			}
		}
	}
}
