package segment

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"strings"
	"time"

	"github.com/disintegration/imaging"
	"golang.org/x/image/webp"
)

// DefaultMaxPixels is the pixel limit Decode applies when maxPixels is 0 (40 megapixels).
const DefaultMaxPixels = 40_000_000

// Frame is a decoded image ready for Segment.
type Frame struct {
	// Image is the decoded image, already rotated/flipped upright per its EXIF orientation.
	Image image.Image
	// Format is "jpeg", "png", "webp" or "tiff".
	Format string
	// Width and Height are the upright image's size.
	Width, Height int
	// EXIF holds the metadata found in a JPEG's APP1 segment or a TIFF's tags, or nil. For a
	// GeoTIFF in a supported CRS (see Decode) EXIF.GPS is the centre of the image.
	EXIF *EXIF
	// PixelSize is the ground size of a pixel in metres when the file says it (a GeoTIFF in
	// metres or degrees), else 0. Model.SegmentFrame uses it.
	PixelSize float64
}

// EXIF is the subset of EXIF metadata the agent forwards with a frame.
type EXIF struct {
	// DateTimeOriginal is when the picture was taken; zero when absent. EXIF stores local
	// time without a zone: the location is taken from OffsetTimeOriginal when present,
	// else UTC is assumed.
	DateTimeOriginal time.Time
	// HasOffset reports whether DateTimeOriginal's zone came from OffsetTimeOriginal.
	HasOffset bool
	// Make and Model name the camera.
	Make, Model string
	// Orientation is the EXIF orientation tag (1..8; 0 when absent) of the stored pixels.
	// Frame.Image is already upright.
	Orientation int
	// GPS is the position the picture was taken at, or nil.
	GPS *GPS
}

// GPS is a position from EXIF GPS tags, in decimal degrees (WGS84, south and west
// negative) and metres.
type GPS struct {
	Latitude, Longitude float64
	// Altitude is metres above sea level (negative below); valid when HasAltitude.
	Altitude    float64
	HasAltitude bool
}

// Decode checks data's header, refuses it with ErrTooLarge when it declares more than
// maxPixels pixels (0 means DefaultMaxPixels, negative means no limit) before any pixel data
// is decoded, then decodes it, parses EXIF (JPEG, TIFF) and applies the EXIF orientation.
// Data that is not a JPEG, PNG, WebP or TIFF image gives ErrNotImage.
//
// TIFF: the first image of a baseline or BigTIFF file, 8 bits per sample, RGB (with or
// without an alpha sample), grey, or YCbCr JPEG; in strips or tiles, chunky or planar;
// uncompressed, LZW, Deflate, PackBits or JPEG compressed, with or without the horizontal
// predictor. A GeoTIFF's georeferencing gives Frame.PixelSize and, where its CRS is
// geographic (WGS84, NAD83, ETRS89, GDA), UTM on those datums, or the Dutch RD New, the
// WGS84 position of the image centre as EXIF.GPS (unless the file has EXIF GPS tags).
func Decode(data []byte, maxPixels int) (*Frame, error) {
	if maxPixels == 0 {
		maxPixels = DefaultMaxPixels
	}
	var tf *tiffFile
	cfg, format, err := decodeConfig(data, &tf)
	if err != nil {
		return nil, fmt.Errorf("decode image header: %w: %w", ErrNotImage, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, fmt.Errorf("decode image: %w: %dx%d", ErrEmptyImage, cfg.Width, cfg.Height)
	}
	if maxPixels > 0 && int64(cfg.Width)*int64(cfg.Height) > int64(maxPixels) {
		return nil, fmt.Errorf("decode image: %w: %dx%d is more than %d pixels", ErrTooLarge, cfg.Width, cfg.Height, maxPixels)
	}
	var img image.Image
	switch format {
	case "jpeg":
		img, err = jpeg.Decode(bytes.NewReader(data))
	case "png":
		img, err = png.Decode(bytes.NewReader(data))
	case "webp":
		img, err = webp.Decode(bytes.NewReader(data))
	case "tiff":
		img, err = tf.decode()
	}
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w: %w", format, ErrNotImage, err)
	}
	f := &Frame{Image: img, Format: format}
	switch format {
	case "jpeg":
		f.EXIF = jpegEXIF(data)
	case "tiff":
		f.EXIF, f.PixelSize = tiffEXIF(tf)
	}
	if f.EXIF != nil {
		f.Image = orient(img, f.EXIF.Orientation)
	}
	b := f.Image.Bounds()
	f.Width, f.Height = b.Dx(), b.Dy()
	return f, nil
}

// decodeConfig reads the image's header; for a TIFF it also returns the parsed file in *tf.
func decodeConfig(data []byte, tf **tiffFile) (image.Config, string, error) {
	switch {
	case bytes.HasPrefix(data, []byte("\xff\xd8")):
		c, err := jpeg.DecodeConfig(bytes.NewReader(data))
		return c, "jpeg", err
	case bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")):
		c, err := png.DecodeConfig(bytes.NewReader(data))
		return c, "png", err
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		c, err := webp.DecodeConfig(bytes.NewReader(data))
		return c, "webp", err
	case isTIFF(data):
		t, err := parseTIFF(data)
		if err != nil {
			return image.Config{}, "tiff", err
		}
		*tf = t
		return image.Config{Width: t.w, Height: t.h, ColorModel: color.NRGBAModel}, "tiff", nil
	}
	return image.Config{}, "", errors.New("unknown format (want jpeg, png, webp or tiff)")
}

// tiffEXIF returns the EXIF-style metadata of a TIFF (its IFD0 and EXIF/GPS sub-IFDs, as a
// camera writes them) with the GeoTIFF position as GPS when the file has no GPS tags, and the
// GeoTIFF's pixel size. EXIF is nil when the file carries none of it.
func tiffEXIF(t *tiffFile) (*EXIF, float64) {
	e, err := parseEXIF(t.data)
	if err != nil {
		e = &EXIF{}
	}
	g := t.geo()
	if e.GPS == nil && g.ok {
		e.GPS = &GPS{Latitude: g.lat, Longitude: g.lon}
	}
	if *e == (EXIF{}) {
		e = nil
	}
	return e, g.pixel
}

// orient returns img transformed so that it displays upright for EXIF orientation o.
func orient(img image.Image, o int) image.Image {
	switch o {
	case 2:
		return imaging.FlipH(img)
	case 3:
		return imaging.Rotate180(img)
	case 4:
		return imaging.FlipV(img)
	case 5:
		return imaging.Transpose(img)
	case 6:
		return imaging.Rotate270(img)
	case 7:
		return imaging.Transverse(img)
	case 8:
		return imaging.Rotate90(img)
	}
	return img
}

// jpegEXIF finds the APP1 "Exif" segment of a JPEG and parses it; nil when absent or
// unreadable (EXIF is advisory: a broken block never fails the decode).
func jpegEXIF(data []byte) *EXIF {
	i := 2
	for i+4 <= len(data) {
		if data[i] != 0xFF {
			return nil
		}
		marker := data[i+1]
		if marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01 || marker == 0xFF {
			i++
			continue
		}
		if marker == 0xDA || marker == 0xD9 { // start of scan / end of image
			return nil
		}
		n := int(binary.BigEndian.Uint16(data[i+2:]))
		if n < 2 || i+2+n > len(data) {
			return nil
		}
		seg := data[i+4 : i+2+n]
		if marker == 0xE1 && bytes.HasPrefix(seg, []byte("Exif\x00\x00")) {
			e, err := parseEXIF(seg[6:])
			if err != nil {
				return nil
			}
			return e
		}
		i += 2 + n
	}
	return nil
}

type tiff struct {
	b  []byte
	bo binary.ByteOrder
}

type ifdEntry struct {
	tag, typ uint16
	count    uint32
	val      []byte // the value bytes (inline or at offset)
}

var typeSize = map[uint16]int{1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}

func (t *tiff) ifd(off uint32) (map[uint16]ifdEntry, error) {
	if int64(off)+2 > int64(len(t.b)) {
		return nil, errors.New("ifd offset out of range")
	}
	n := int(t.bo.Uint16(t.b[off:]))
	p := int(off) + 2
	if p+12*n > len(t.b) {
		return nil, errors.New("ifd truncated")
	}
	out := make(map[uint16]ifdEntry, n)
	for k := 0; k < n; k++ {
		e := t.b[p+12*k : p+12*k+12]
		ent := ifdEntry{tag: t.bo.Uint16(e), typ: t.bo.Uint16(e[2:]), count: t.bo.Uint32(e[4:])}
		sz, ok := typeSize[ent.typ]
		if !ok || ent.count > 1<<16 {
			continue
		}
		total := sz * int(ent.count)
		if total <= 4 {
			ent.val = e[8 : 8+total]
		} else {
			o := int64(t.bo.Uint32(e[8:]))
			if o+int64(total) > int64(len(t.b)) {
				continue
			}
			ent.val = t.b[o : o+int64(total)]
		}
		out[ent.tag] = ent
	}
	return out, nil
}

func (t *tiff) str(e ifdEntry) string {
	return strings.TrimSpace(strings.TrimRight(string(e.val), "\x00"))
}

func (t *tiff) uint(e ifdEntry) (uint32, bool) {
	switch {
	case e.typ == 3 && len(e.val) >= 2:
		return uint32(t.bo.Uint16(e.val)), true
	case e.typ == 4 && len(e.val) >= 4:
		return t.bo.Uint32(e.val), true
	case e.typ == 1 && len(e.val) >= 1:
		return uint32(e.val[0]), true
	}
	return 0, false
}

func (t *tiff) rationals(e ifdEntry) []float64 {
	if e.typ != 5 && e.typ != 10 {
		return nil
	}
	out := make([]float64, 0, e.count)
	for i := 0; i+8 <= len(e.val); i += 8 {
		var num, den float64
		if e.typ == 5 {
			num, den = float64(t.bo.Uint32(e.val[i:])), float64(t.bo.Uint32(e.val[i+4:]))
		} else {
			num, den = float64(int32(t.bo.Uint32(e.val[i:]))), float64(int32(t.bo.Uint32(e.val[i+4:])))
		}
		if den == 0 {
			return nil
		}
		out = append(out, num/den)
	}
	return out
}

// EXIF and GPS tag numbers used below.
const (
	tagMake, tagModel, tagOrientation      = 0x010F, 0x0110, 0x0112
	tagExifIFD, tagGPSIFD                  = 0x8769, 0x8825
	tagDateTimeOriginal, tagOffsetOriginal = 0x9003, 0x9011
	tagGPSLatRef, tagGPSLat                = 1, 2
	tagGPSLonRef, tagGPSLon                = 3, 4
	tagGPSAltRef, tagGPSAlt                = 5, 6
)

// parseEXIF parses a TIFF-structured EXIF block (after the "Exif\0\0" header).
func parseEXIF(b []byte) (*EXIF, error) {
	if len(b) < 8 {
		return nil, errors.New("exif too short")
	}
	t := &tiff{b: b}
	switch string(b[:2]) {
	case "II":
		t.bo = binary.LittleEndian
	case "MM":
		t.bo = binary.BigEndian
	default:
		return nil, errors.New("bad tiff byte order")
	}
	if t.bo.Uint16(b[2:]) != 42 {
		return nil, errors.New("bad tiff magic")
	}
	ifd0, err := t.ifd(t.bo.Uint32(b[4:]))
	if err != nil {
		return nil, err
	}
	e := &EXIF{}
	if v, ok := ifd0[tagMake]; ok && v.typ == 2 {
		e.Make = t.str(v)
	}
	if v, ok := ifd0[tagModel]; ok && v.typ == 2 {
		e.Model = t.str(v)
	}
	if v, ok := ifd0[tagOrientation]; ok {
		if o, ok := t.uint(v); ok && o >= 1 && o <= 8 {
			e.Orientation = int(o)
		}
	}
	if v, ok := ifd0[tagExifIFD]; ok {
		if off, ok := t.uint(v); ok {
			if sub, err := t.ifd(off); err == nil {
				var dt, zone string
				if v, ok := sub[tagDateTimeOriginal]; ok && v.typ == 2 {
					dt = t.str(v)
				}
				if v, ok := sub[tagOffsetOriginal]; ok && v.typ == 2 {
					zone = t.str(v)
				}
				e.DateTimeOriginal, e.HasOffset = parseEXIFTime(dt, zone)
			}
		}
	}
	if v, ok := ifd0[tagGPSIFD]; ok {
		if off, ok := t.uint(v); ok {
			if g, err := t.ifd(off); err == nil {
				e.GPS = parseGPS(t, g)
			}
		}
	}
	return e, nil
}

func parseEXIFTime(dt, zone string) (time.Time, bool) {
	if dt == "" {
		return time.Time{}, false
	}
	if zone != "" {
		if ts, err := time.Parse("2006:01:02 15:04:05-07:00", dt+zone); err == nil {
			return ts, true
		}
	}
	ts, err := time.ParseInLocation("2006:01:02 15:04:05", dt, time.UTC)
	if err != nil {
		return time.Time{}, false
	}
	return ts, false
}

func parseGPS(t *tiff, g map[uint16]ifdEntry) *GPS {
	deg := func(tag uint16) (float64, bool) {
		v, ok := g[tag]
		if !ok {
			return 0, false
		}
		r := t.rationals(v)
		if len(r) != 3 {
			return 0, false
		}
		return r[0] + r[1]/60 + r[2]/3600, true
	}
	lat, ok1 := deg(tagGPSLat)
	lon, ok2 := deg(tagGPSLon)
	if !ok1 || !ok2 || math.IsNaN(lat) || math.IsNaN(lon) || lat > 90 || lon > 180 {
		return nil
	}
	if v, ok := g[tagGPSLatRef]; ok && strings.HasPrefix(strings.ToUpper(t.str(v)), "S") {
		lat = -lat
	}
	if v, ok := g[tagGPSLonRef]; ok && strings.HasPrefix(strings.ToUpper(t.str(v)), "W") {
		lon = -lon
	}
	p := &GPS{Latitude: lat, Longitude: lon}
	if v, ok := g[tagGPSAlt]; ok {
		if r := t.rationals(v); len(r) == 1 {
			p.Altitude, p.HasAltitude = r[0], true
			if ref, ok := g[tagGPSAltRef]; ok {
				if u, ok := t.uint(ref); ok && u == 1 {
					p.Altitude = -p.Altitude
				}
			}
		}
	}
	return p
}
