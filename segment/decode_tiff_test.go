package segment

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"image"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tiffExpect is one entry of testdata/tiff/expected.json (written by make.sh from GDAL and PROJ).
type tiffExpect struct {
	Width, Height int
	EPSG          int      `json:"epsg"`
	Lat           *float64 `json:"lat"`
	Lon           *float64 `json:"lon"`
	PixelSizeM    *float64 `json:"pixel_size_m"`
}

func readTIFFExpect(t *testing.T) map[string]tiffExpect {
	t.Helper()
	raw, err := os.ReadFile("testdata/tiff/expected.json")
	if err != nil {
		t.Fatal(err)
	}
	var exp map[string]tiffExpect
	if err := json.Unmarshal(raw, &exp); err != nil {
		t.Fatal(err)
	}
	return exp
}

// metresApart is the distance between two WGS84 positions, for errors of a few metres.
func metresApart(lat1, lon1, lat2, lon2 float64) float64 {
	dy := (lat1 - lat2) * 111_320
	dx := (lon1 - lon2) * 111_320 * math.Cos(lat1*math.Pi/180)
	return math.Hypot(dx, dy)
}

// TestDecodeTIFFVariants decodes every fixture GDAL wrote (strips and tiles; none, LZW with
// predictor, Deflate, PackBits, JPEG in YCbCr and RGB; chunky and planar; classic and BigTIFF;
// RGB, RGBA and grey) and compares the pixels with the PNG they were made from, and the GeoTIFF
// position with PROJ's.
func TestDecodeTIFFVariants(t *testing.T) {
	ref := decodeFile(t, "testdata/tiff/crop.png")
	refRGB := toRGB(ref, nil)
	exp := readTIFFExpect(t)
	if len(exp) < 9 {
		t.Fatalf("expected.json lists %d files", len(exp))
	}
	for name, e := range exp {
		t.Run(strings.TrimSuffix(name, ".tif"), func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata/tiff", name))
			if err != nil {
				t.Fatal(err)
			}
			f, err := Decode(data, 0)
			if strings.Contains(name, "refused") {
				if !errors.Is(err, ErrNotImage) || !strings.Contains(err.Error(), "bits per sample") {
					t.Fatalf("err %v, want ErrNotImage naming the bit depth", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.Format != "tiff" || f.Width != e.Width || f.Height != e.Height {
				t.Fatalf("format %s size %dx%d, want tiff %dx%d", f.Format, f.Width, f.Height, e.Width, e.Height)
			}
			got := toRGB(f.Image, nil)
			var maxDiff, sum float64
			for i := range got {
				want := refRGB[i]
				if strings.Contains(name, "gray") {
					want = refRGB[i/3*3+1] // the green band was written as grey
				}
				d := math.Abs(float64(got[i]) - float64(want))
				maxDiff = max(maxDiff, d)
				sum += d
			}
			mean := sum / float64(len(got))
			lossy := strings.Contains(name, "jpeg")
			if (!lossy && maxDiff != 0) || (lossy && mean > 2.5) {
				t.Errorf("pixels differ from the source: mean %.2f, max %.0f", mean, maxDiff)
			}
			if strings.Contains(name, "rgba") {
				n, ok := f.Image.(*image.NRGBA)
				if !ok {
					t.Fatalf("RGBA TIFF decoded as %T, want *image.NRGBA", f.Image)
				}
				if n.NRGBAAt(5, 30).A != 0 || n.NRGBAAt(50, 30).A != 255 {
					t.Errorf("alpha %d at x=5 (want 0), %d at x=50 (want 255)", n.NRGBAAt(5, 30).A, n.NRGBAAt(50, 30).A)
				}
			}
			switch {
			case e.Lat == nil:
				if f.EXIF != nil && f.EXIF.GPS != nil {
					t.Errorf("no georeferencing, but GPS %+v", f.EXIF.GPS)
				}
			default:
				if f.EXIF == nil || f.EXIF.GPS == nil {
					t.Fatalf("EPSG %d: no GPS", e.EPSG)
				}
				g := f.EXIF.GPS
				if m := metresApart(g.Latitude, g.Longitude, *e.Lat, *e.Lon); m > 1 {
					t.Errorf("EPSG %d: centre %.7f,%.7f is %.2f m from PROJ's %.7f,%.7f", e.EPSG, g.Latitude, g.Longitude, m, *e.Lat, *e.Lon)
				}
				want := 0.0
				if e.PixelSizeM != nil {
					want = *e.PixelSizeM
				} else { // geographic: 1e-6 degree
					want = 1e-6 * 111_319.49 * math.Sqrt(math.Cos(*e.Lat*math.Pi/180))
				}
				if math.Abs(f.PixelSize-want) > 0.001*want {
					t.Errorf("pixel size %.5f m, want %.5f", f.PixelSize, want)
				}
			}
		})
	}
}

// TestDecodeTIFFReal decodes the one real GeoTIFF of the shared data (JPEG-compressed YCbCr
// tiles, 25 cm, Amersfoort / RD New): the pixels against GDAL's decode of the same file (within
// JPEG decoder differences) and the centre against PROJ.
func TestDecodeTIFFReal(t *testing.T) {
	path := filepath.Join(sharedData, "neon-tree-crowns/test_tiled.tif")
	needFile(t, path)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Decode(data, 0)
	if err != nil {
		t.Fatal(err)
	}
	if f.Width != 1000 || f.Height != 1000 || f.PixelSize != 0.25 {
		t.Fatalf("%dx%d, pixel size %v; want 1000x1000, 0.25 m", f.Width, f.Height, f.PixelSize)
	}
	// PROJ (EPSG:28992 → 4326) for the centre, 127500 E 428125 N: 51.84103302, 4.98816086.
	if f.EXIF == nil || f.EXIF.GPS == nil {
		t.Fatal("no GPS from the GeoTIFF tags")
	}
	if m := metresApart(f.EXIF.GPS.Latitude, f.EXIF.GPS.Longitude, 51.84103302, 4.98816086); m > 1 {
		t.Errorf("centre %+v is %.2f m from PROJ's", f.EXIF.GPS, m)
	}
	// Mean of each channel over the image, as `gdalinfo -stats` (libjpeg) reports it for this
	// file, to within JPEG decoders' rounding.
	rgb := toRGB(f.Image, nil)
	var s [3]float64
	for i, v := range rgb {
		s[i%3] += float64(v)
	}
	n := float64(len(rgb) / 3)
	for c, want := range gdalMeans {
		if got := s[c] / n; math.Abs(got-want) > 0.5 {
			t.Errorf("channel %d mean %.2f, GDAL's decode %.2f", c, got, want)
		}
	}
}

// TestDecodeTIFFTooLarge checks that a TIFF header declaring too many pixels is refused before
// any pixel data is read (the file holds none).
func TestDecodeTIFFTooLarge(t *testing.T) {
	data := tiffHeader(binary.LittleEndian, 100000, 100000)
	if _, err := Decode(data, 0); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err %v, want ErrTooLarge", err)
	}
	if _, err := Decode(tiffHeader(binary.BigEndian, 10, 10), 0); !errors.Is(err, ErrNotImage) {
		t.Fatalf("10x10 without pixel data: err %v, want ErrNotImage", err)
	}
}

// tiffHeader returns a classic TIFF whose single strip of an RGB w×h image points at a few bytes.
func tiffHeader(bo binary.ByteOrder, w, h uint32) []byte {
	var b bytes.Buffer
	if bo == binary.LittleEndian {
		b.WriteString("II*\x00")
	} else {
		b.WriteString("MM\x00*")
	}
	binary.Write(&b, bo, uint32(8))
	type ent struct {
		tag, typ uint16
		n, v     uint32
	}
	ents := []ent{{256, 4, 1, w}, {257, 4, 1, h}, {258, 3, 1, 8}, {259, 3, 1, 1}, {262, 3, 1, 2},
		{273, 4, 1, 200}, {277, 3, 1, 3}, {278, 4, 1, h}, {279, 4, 1, 4}}
	binary.Write(&b, bo, uint16(len(ents)))
	for _, e := range ents {
		binary.Write(&b, bo, e.tag)
		binary.Write(&b, bo, e.typ)
		binary.Write(&b, bo, e.n)
		if e.typ == 3 { // SHORT: left-justified in the 4-byte field
			binary.Write(&b, bo, uint16(e.v))
			binary.Write(&b, bo, uint16(0))
		} else {
			binary.Write(&b, bo, e.v)
		}
	}
	binary.Write(&b, bo, uint32(0))
	for b.Len() < 204 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

// gdalMeans are the channel means `gdalinfo -stats` gives for test_tiled.tif (GDAL 3.6.2).
var gdalMeans = [3]float64{104.156, 116.644, 111.081}

// TestUTMToLatLon checks the UTM conversion against PROJ across zones, hemispheres, the
// equator, a zone's edge and high latitude.
func TestUTMToLatLon(t *testing.T) {
	// References from PROJ (pyproj 3.4, EPSG:326xx/327xx → 4326).
	for _, c := range []struct {
		e, n     float64
		zone     int
		south    bool
		lat, lon float64
	}{
		{751000, 4330000, 17, false, 39.0830333, -78.0982027},
		{500000, 0, 31, false, 0, 3},
		{166021.44, 0, 31, false, 0, 0},
		{500000, 8950000, 21, true, -9.4988102, -57},
		{323394.3, 5580000, 60, true, -39.9116957, 174.9337805},
		{440000, 7650000, 33, false, 68.9543170, 13.5027635},
	} {
		lat, lon := utmToLatLon(c.e, c.n, c.zone, c.south)
		if m := metresApart(lat, lon, c.lat, c.lon); m > 0.05 {
			t.Errorf("UTM %d%v %.1f %.1f: %.7f,%.7f is %.3f m from %.7f,%.7f", c.zone, c.south, c.e, c.n, lat, lon, m, c.lat, c.lon)
		}
	}
}

// TestDecodeTIFFJPEGBomb: a JPEG tile whose own header declares a huge image is refused
// before it is decoded.
func TestDecodeTIFFJPEGBomb(t *testing.T) {
	data, err := os.ReadFile("testdata/tiff/tile-jpeg-ycbcr-nad83.tif")
	if err != nil {
		t.Fatal(err)
	}
	sof := bytes.Index(data, []byte{0xFF, 0xC0, 0x00, 0x11, 0x08})
	if sof < 0 {
		t.Fatal("no baseline SOF in the fixture")
	}
	data = bytes.Clone(data)
	binary.BigEndian.PutUint16(data[sof+5:], 60000) // height
	binary.BigEndian.PutUint16(data[sof+7:], 60000) // width
	_, err = Decode(data, 0)
	if !errors.Is(err, ErrNotImage) || !strings.Contains(err.Error(), "60000x60000") {
		t.Fatalf("err %v, want ErrNotImage naming the 60000x60000 JPEG", err)
	}
}
