// Package exiftest builds JPEG files carrying EXIF (camera, time, GPS and
// orientation), for tests of code that reads them.
package exiftest

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/jpeg"
	"testing"
)

// Options choose what Block writes besides its fixed fields.
type Options struct {
	// Orientation is the EXIF orientation (1-8); 0 leaves the tag out.
	Orientation uint16
	// Model is the camera model; "" means "Drone X1".
	Model string
}

// tiffBuilder writes a big- or little-endian TIFF/EXIF block for tests.
type tiffBuilder struct {
	bo ByteOrder
}

// ByteOrder is binary.BigEndian or binary.LittleEndian.
type ByteOrder interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

type tEntry struct {
	tag, typ uint16
	count    uint32
	data     []byte // raw value bytes in the builder's byte order
}

func (tb tiffBuilder) ascii(tag uint16, s string) tEntry {
	return tEntry{tag, 2, uint32(len(s) + 1), append([]byte(s), 0)}
}
func (tb tiffBuilder) short(tag uint16, v uint16) tEntry {
	b := make([]byte, 2)
	tb.bo.PutUint16(b, v)
	return tEntry{tag, 3, 1, b}
}
func (tb tiffBuilder) long(tag uint16, v uint32) tEntry {
	b := make([]byte, 4)
	tb.bo.PutUint32(b, v)
	return tEntry{tag, 4, 1, b}
}
func (tb tiffBuilder) rationals(tag uint16, v ...[2]uint32) tEntry {
	var b []byte
	for _, r := range v {
		b = tb.bo.AppendUint32(b, r[0])
		b = tb.bo.AppendUint32(b, r[1])
	}
	return tEntry{tag, 5, uint32(len(v)), b}
}

// ifd serialises entries at offset off; values longer than 4 bytes follow the IFD.
// It returns the bytes (to be placed at off).
func (tb tiffBuilder) ifd(off uint32, entries []tEntry) []byte {
	head := 2 + 12*len(entries) + 4
	var out, extra []byte
	out = tb.bo.AppendUint16(out, uint16(len(entries)))
	for _, e := range entries {
		out = tb.bo.AppendUint16(out, e.tag)
		out = tb.bo.AppendUint16(out, e.typ)
		out = tb.bo.AppendUint32(out, e.count)
		if len(e.data) <= 4 {
			v := make([]byte, 4)
			copy(v, e.data)
			out = append(out, v...)
		} else {
			out = tb.bo.AppendUint32(out, off+uint32(head+len(extra)))
			extra = append(extra, e.data...)
		}
	}
	out = tb.bo.AppendUint32(out, 0)
	return append(out, extra...)
}

// Block returns a TIFF block (the payload of an Exif APP1 segment after
// "Exif\x00\x00") in byte order bo with IFD0 (make "Forestwatch", model,
// orientation when not 0), an Exif IFD (DateTimeOriginal 2024:06:11
// 10:20:30 at -04:00) and a GPS IFD (9°36'18"S 59°42'W, 250.5 m).
func Block(bo ByteOrder, o Options) []byte {
	tb := tiffBuilder{bo}
	hdr := []byte("II*\x00\x08\x00\x00\x00")
	if bo == ByteOrder(binary.BigEndian) {
		hdr = []byte("MM\x00*\x00\x00\x00\x08")
	}
	// Lay out: IFD0 at 8, Exif IFD at 400, GPS IFD at 600.
	model := o.Model
	if model == "" {
		model = "Drone X1"
	}
	ents := []tEntry{tb.ascii(0x010F, "Forestwatch"), tb.ascii(0x0110, model)}
	if o.Orientation != 0 {
		ents = append(ents, tb.short(0x0112, o.Orientation))
	}
	ifd0 := tb.ifd(8, append(ents, tb.long(0x8769, 400), tb.long(0x8825, 600)))
	exif := tb.ifd(400, []tEntry{tb.ascii(0x9003, "2024:06:11 10:20:30"), tb.ascii(0x9011, "-04:00")})
	gps := tb.ifd(600, []tEntry{
		tb.ascii(1, "S"), tb.rationals(2, [2]uint32{9, 1}, [2]uint32{36, 1}, [2]uint32{1800, 100}),
		tb.ascii(3, "W"), tb.rationals(4, [2]uint32{59, 1}, [2]uint32{42, 1}, [2]uint32{0, 1}),
		{5, 1, 1, []byte{0}}, tb.rationals(6, [2]uint32{2505, 10}),
	})
	b := make([]byte, 800)
	copy(b, hdr)
	copy(b[8:], ifd0)
	copy(b[400:], exif)
	copy(b[600:], gps)
	return b
}

// JPEG encodes img as JPEG (quality 95) and inserts an APP1 Exif segment
// holding exif (see Block) after SOI.
func JPEG(t testing.TB, img image.Image, exif []byte) []byte {
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	j := buf.Bytes()
	seg := append([]byte("Exif\x00\x00"), exif...)
	app1 := []byte{0xFF, 0xE1, 0, 0}
	binary.BigEndian.PutUint16(app1[2:], uint16(len(seg)+2))
	out := append([]byte{}, j[:2]...)
	out = append(out, app1...)
	out = append(out, seg...)
	return append(out, j[2:]...)
}
