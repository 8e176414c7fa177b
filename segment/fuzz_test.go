package segment

import (
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"os"
	"testing"

	"github.com/forestwatch/forest/internal/exiftest"
)

// FuzzDecode checks that Decode never panics, never returns a frame above the pixel
// limit, and fails only with this package's sentinels.
func FuzzDecode(f *testing.F) {
	img := image.NewNRGBA(image.Rect(0, 0, 8, 6))
	img.SetNRGBA(1, 1, color.NRGBA{200, 10, 10, 255})
	f.Add(encodePNG(f, img))
	f.Add(exiftest.JPEG(f, img, exiftest.Block(binary.BigEndian, exiftest.Options{Orientation: 6})))
	f.Add(exiftest.JPEG(f, img, exiftest.Block(binary.LittleEndian, exiftest.Options{Orientation: 8})))
	f.Add(bombPNG(f, 5000, 5000))
	f.Add([]byte("RIFF\x00\x00\x00\x00WEBPVP8 "))
	f.Add(tiffHeader(binary.LittleEndian, 4, 4))
	for _, name := range []string{"tile-jpeg-ycbcr-nad83.tif", "tile-lzw-pred-4326.tif", "bigtiff-deflate-rd.tif", "strip-packbits-rgba-nogeo.tif"} {
		if data, err := os.ReadFile("testdata/tiff/" + name); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 1 << 20
		fr, err := Decode(data, limit)
		if err != nil {
			if !errors.Is(err, ErrNotImage) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrEmptyImage) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		if fr.Width*fr.Height > limit || fr.Width <= 0 || fr.Height <= 0 {
			t.Fatalf("frame %dx%d", fr.Width, fr.Height)
		}
		if b := fr.Image.Bounds(); b.Dx() != fr.Width || b.Dy() != fr.Height {
			t.Fatalf("bounds %v vs %dx%d", b, fr.Width, fr.Height)
		}
	})
}

// FuzzEXIF feeds arbitrary TIFF blocks to the EXIF parser, which must never panic.
func FuzzEXIF(f *testing.F) {
	f.Add(exiftest.Block(binary.BigEndian, exiftest.Options{Orientation: 6}))
	f.Add(exiftest.Block(binary.LittleEndian, exiftest.Options{Orientation: 3}))
	f.Add([]byte("MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := parseEXIF(b)
		if err == nil && e.Orientation != 0 && (e.Orientation < 1 || e.Orientation > 8) {
			t.Fatalf("orientation %d", e.Orientation)
		}
	})
}
