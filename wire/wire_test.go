package wire_test

import (
	"bytes"
	"errors"
	"flag"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/forestwatch/forest/wire"
	"github.com/forestwatch/forest/wire/wiretest"
)

var update = flag.Bool("update", false, "rewrite the golden messages in testdata/")

// sample is a real Sentinel-2 tile (see testdata/SOURCE.md) scaled to 64×64.
func sample(t *testing.T) (jpg, pngMask []byte) {
	t.Helper()
	src := filepath.Join("..", "..", "shared", "data", "amazon-forest-rgb")
	load := func(p string) image.Image {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		img, err := png.Decode(f)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	img := load(filepath.Join(src, "images", "Amazon_1052_50_r0c0.png"))
	mask := load(filepath.Join(src, "masks", "Amazon_1052_50_r0c0.png"))
	small := image.NewRGBA(image.Rect(0, 0, 64, 64))
	smallMask := image.NewGray(image.Rect(0, 0, 64, 64))
	for y := range 64 {
		for x := range 64 {
			small.Set(x, y, img.At(x*4, y*4))
			smallMask.Set(x, y, color.GrayModel.Convert(mask.At(x*4, y*4)))
		}
	}
	var a, b bytes.Buffer
	if err := jpeg.Encode(&a, small, &jpeg.Options{Quality: 85}); err != nil {
		t.Fatal(err)
	}
	enc := png.Encoder{CompressionLevel: png.BestCompression}
	if err := enc.Encode(&b, smallMask); err != nil {
		t.Fatal(err)
	}
	return a.Bytes(), b.Bytes()
}

func frame(img, mask []byte) *wire.Frame {
	return &wire.Frame{
		ID:          "mast-01-000000000042",
		Device:      "mast-01",
		Seq:         42,
		Captured:    time.Date(2026, 6, 1, 10, 30, 0, 123e6, time.UTC),
		ContentType: wire.JPEG,
		Image:       img,
		Width:       64,
		Height:      64,
		Coverage:    0.5312,
		Model:       "forest-unet/1",
		Mask:        mask,
		GPS:         &wire.GPS{Lat: -9.6012, Lon: -59.7034, Alt: 231.5, HasAlt: true},
		Camera:      &wire.Camera{Make: "Raspberry Pi", Model: "Camera Module 3"},
		Agent:       "forest-agent/0.1.0",
		User:        "mast-01",
		Sent:        time.Date(2026, 6, 1, 10, 30, 5, 0, time.UTC),
		Source:      "DCIM/100MEDIA/DJI_0042.JPG",
		SourceType:  "dir",
	}
}

// toV1 rewrites a version 2 message as a device before version 2 sent it:
// the mask in a header, the body the image alone, no source.
func toV1(m wire.Message) wire.Message {
	v1 := clone(m)
	v1.Type = "forest.frame.v1.0"
	n := m.Headers[wire.HeaderImageBytes].(int64)
	v1.Body = m.Body[:n]
	if mask := m.Body[n:]; len(mask) > 0 {
		v1.Headers[wire.HeaderMask] = mask
	}
	for _, k := range []string{wire.HeaderImageBytes, wire.HeaderSource, wire.HeaderSourceType, wire.HeaderClockSynced} {
		delete(v1.Headers, k)
	}
	return v1
}

// TestGolden writes the golden messages with -update, and otherwise checks
// that they still decode as recorded: the contract with forest-cloud.
func TestGolden(t *testing.T) {
	if *update {
		writeGolden(t)
	}
	goldens, err := wiretest.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(goldens) < 5 {
		t.Fatalf("only %d golden messages", len(goldens))
	}
	for _, g := range goldens {
		t.Run(g.Name, func(t *testing.T) {
			f, err := wire.Decode(g.Message)
			switch g.WantError {
			case "":
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				if f.ID != g.Message.MessageID || f.Device == "" || len(f.Image) == 0 {
					t.Fatalf("decoded %+v", f)
				}
				if _, _, err := image.Decode(bytes.NewReader(f.Image)); err != nil {
					t.Fatalf("body is not an image: %v", err)
				}
				if f.Mask != nil {
					if _, err := png.Decode(bytes.NewReader(f.Mask)); err != nil {
						t.Fatalf("mask is not a PNG: %v", err)
					}
				}
				// Re-encoding a current-version message gives the same message.
				if g.Message.Type == wire.Type() {
					m, err := wire.Encode(f)
					if err != nil {
						t.Fatal(err)
					}
					if !reflect.DeepEqual(m, g.Message) {
						t.Fatalf("re-encoded message differs:\n got %+v\nwant %+v", m.Headers, g.Message.Headers)
					}
				}
			case "version":
				var ve *wire.VersionError
				if !errors.As(err, &ve) {
					t.Fatalf("got %v, want a VersionError", err)
				}
			case "checksum":
				var ce *wire.ChecksumError
				if !errors.As(err, &ce) {
					t.Fatalf("got %v, want a ChecksumError", err)
				}
			case "field":
				var fe *wire.FieldError
				if !errors.As(err, &fe) || fe.Field != g.WantField {
					t.Fatalf("got %v, want a FieldError on %s", err, g.WantField)
				}
			}
			if g.WantError != "" && !errors.Is(err, wire.ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
		})
	}
}

func writeGolden(t *testing.T) {
	img, mask := sample(t)
	put := func(name string, m wire.Message, wantErr, field string) {
		t.Helper()
		if err := wiretest.Write(wiretest.Golden{Name: name, Message: m, WantError: wantErr, WantField: field}); err != nil {
			t.Fatal(err)
		}
	}
	full, err := wire.Encode(frame(img, mask))
	if err != nil {
		t.Fatal(err)
	}
	put("v2-jpeg-full", full, "", "")

	min := frame(img, nil)
	min.GPS, min.Camera, min.Source, min.SourceType, min.ClockUnsynced = nil, nil, "", "", true
	var pb bytes.Buffer
	g := image.NewGray(image.Rect(0, 0, 8, 4))
	_ = png.Encode(&pb, g)
	min.Image, min.ContentType, min.Width, min.Height, min.ID, min.Seq = pb.Bytes(), wire.PNG, 8, 4, "mast-01-000000000043", 43
	minimal, err := wire.Encode(min)
	if err != nil {
		t.Fatal(err)
	}
	put("v2-png-minimal", minimal, "", "")

	future := clone(full)
	future.Type = "forest.frame.v2.3"
	future.Headers["future_header"] = "ignored by v2.0 readers"
	put("v2.3-newer-minor", future, "", "")

	v3 := clone(full)
	v3.Type = "forest.frame.v3.0"
	put("v3-unknown-major", v3, "version", "")

	bad := clone(full)
	bad.Body = append([]byte{}, bad.Body...)
	bad.Body[len(img)/2] ^= 0xff
	put("bad-body-checksum", bad, "checksum", "")

	badMask := clone(full)
	badMask.Body = append([]byte{}, badMask.Body...)
	badMask.Body[len(img)+len(mask)/2] ^= 0xff
	put("bad-mask-checksum", badMask, "checksum", "")

	noDev := clone(full)
	delete(noDev.Headers, wire.HeaderDevice)
	put("bad-missing-device", noDev, "field", wire.HeaderDevice)

	long := clone(full)
	long.Headers[wire.HeaderImageBytes] = int64(len(full.Body) + 1)
	put("bad-image-bytes", long, "field", wire.HeaderImageBytes)

	// What devices before version 2 send: forest-cloud reads both.
	put("v1-jpeg-full", toV1(full), "", "")
	put("v1-png-minimal", toV1(minimal), "", "")
	v17 := toV1(future)
	v17.Type = "forest.frame.v1.7"
	v17.Headers["future_header"] = "ignored by v1.0 readers"
	put("v1.7-newer-minor", v17, "", "")
}

func clone(m wire.Message) wire.Message {
	c := m
	c.Headers = map[string]any{}
	for k, v := range m.Headers {
		c.Headers[k] = v
	}
	return c
}

func TestRoundTrip(t *testing.T) {
	img := []byte("\xff\xd8 not checked by wire")
	f := frame(img, []byte("mask"))
	m, err := wire.Encode(f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := wire.Decode(m)
	if err != nil {
		t.Fatal(err)
	}
	f.Sent = f.Sent.Truncate(time.Second)
	f.ImageSHA256, f.MaskSHA256 = wire.Sum(img), wire.Sum(f.Mask)
	if !reflect.DeepEqual(got, f) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, f)
	}
	// The same frame as version 1 sent it: the same frame but the source.
	got, err = wire.Decode(toV1(m))
	if err != nil {
		t.Fatal(err)
	}
	f.Source, f.SourceType = "", ""
	if !reflect.DeepEqual(got, f) {
		t.Fatalf("version 1:\n got %+v\nwant %+v", got, f)
	}
	// Integers of any width decode, as AMQP clients differ.
	m.Headers[wire.HeaderWidth] = int32(64)
	m.Headers[wire.HeaderSeq] = int16(42)
	if _, err := wire.Decode(m); err != nil {
		t.Fatal(err)
	}
}

func TestEncodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*wire.Frame)
		field string
	}{
		{"no id", func(f *wire.Frame) { f.ID = "" }, "message_id"},
		{"id with slash", func(f *wire.Frame) { f.ID = "../x" }, "message_id"},
		{"no device", func(f *wire.Frame) { f.Device = "" }, wire.HeaderDevice},
		{"device with space", func(f *wire.Frame) { f.Device = "a b" }, wire.HeaderDevice},
		{"gif", func(f *wire.Frame) { f.ContentType = "image/gif" }, "content_type"},
		{"empty body", func(f *wire.Frame) { f.Image = nil }, "body"},
		{"no time", func(f *wire.Frame) { f.Captured = time.Time{} }, wire.HeaderCaptured},
		{"zero size", func(f *wire.Frame) { f.Width = 0 }, wire.HeaderWidth},
		{"coverage > 1", func(f *wire.Frame) { f.Coverage = 1.5 }, wire.HeaderCoverage},
		{"coverage NaN", func(f *wire.Frame) { f.Coverage = math.NaN() }, wire.HeaderCoverage},
		{"unsafe source", func(f *wire.Frame) { f.Source = "../x" }, wire.HeaderSource},
		{"source type", func(f *wire.Frame) { f.SourceType = "Dir" }, wire.HeaderSourceType},
		{"bad gps", func(f *wire.Frame) { f.GPS.Lat = 91 }, wire.HeaderGPSLat},
		{"bad given sha256", func(f *wire.Frame) { f.ImageSHA256 = "ABC" }, wire.HeaderSHA256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := frame([]byte("img"), nil)
			tc.edit(f)
			_, err := wire.Encode(f)
			var fe *wire.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("got %v, want a FieldError on %s", err, tc.field)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	good, err := wire.Encode(frame([]byte("img"), []byte("mask")))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*wire.Message)
		want any
	}{
		{"no type", func(m *wire.Message) { m.Type = "" }, &wire.FieldError{}},
		{"other schema", func(m *wire.Message) { m.Type = "legacy" }, &wire.VersionError{}},
		{"major 0", func(m *wire.Message) { m.Type = "forest.frame.v0.9" }, &wire.VersionError{}},
		{"seq as string", func(m *wire.Message) { m.Headers[wire.HeaderSeq] = "42" }, &wire.FieldError{}},
		{"negative seq", func(m *wire.Message) { m.Headers[wire.HeaderSeq] = int64(-1) }, &wire.FieldError{}},
		{"bad time", func(m *wire.Message) { m.Headers[wire.HeaderCaptured] = "yesterday" }, &wire.FieldError{}},
		{"coverage inf", func(m *wire.Message) { m.Headers[wire.HeaderCoverage] = math.Inf(1) }, &wire.FieldError{}},
		{"mask tampered", func(m *wire.Message) { m.Body = []byte("imgMASK") }, &wire.ChecksumError{}},
		{"mask without sum", func(m *wire.Message) { delete(m.Headers, wire.HeaderMaskSHA256) }, &wire.FieldError{}},
		{"no image_bytes", func(m *wire.Message) { delete(m.Headers, wire.HeaderImageBytes) }, &wire.FieldError{}},
		{"image_bytes 0", func(m *wire.Message) { m.Headers[wire.HeaderImageBytes] = int64(0) }, &wire.FieldError{}},
		{"image_bytes past the body", func(m *wire.Message) { m.Headers[wire.HeaderImageBytes] = int64(8) }, &wire.FieldError{}},
		{"image_bytes moved", func(m *wire.Message) { m.Headers[wire.HeaderImageBytes] = int64(4) }, &wire.ChecksumError{}},
		{"source as bytes array of ints", func(m *wire.Message) { m.Headers[wire.HeaderSource] = int64(3) }, &wire.FieldError{}},
		{"unsafe source", func(m *wire.Message) { m.Headers[wire.HeaderSource] = "/etc/passwd" }, &wire.FieldError{}},
		{"clock_synced as string", func(m *wire.Message) { m.Headers[wire.HeaderClockSynced] = "yes" }, &wire.FieldError{}},
		{"gps lat only", func(m *wire.Message) { m.Headers[wire.HeaderGPSLat] = 1.0; delete(m.Headers, wire.HeaderGPSLon) }, &wire.FieldError{}},
		{"body tampered", func(m *wire.Message) { m.Body = []byte("imGmask") }, &wire.ChecksumError{}},
		{"v1 mask tampered", func(m *wire.Message) { *m = toV1(*m); m.Headers[wire.HeaderMask] = []byte("MASK") }, &wire.ChecksumError{}},
		{"v1 mask as string", func(m *wire.Message) { *m = toV1(*m); m.Headers[wire.HeaderMask] = "mask" }, &wire.FieldError{}},
		{"v1 huge mask", func(m *wire.Message) {
			*m = toV1(*m)
			big := make([]byte, wire.MaxMaskBytes+1)
			m.Headers[wire.HeaderMask], m.Headers[wire.HeaderMaskSHA256] = big, wire.Sum(big)
		}, &wire.FieldError{}},
		{"major 3", func(m *wire.Message) { m.Type = "forest.frame.v3.0" }, &wire.VersionError{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := clone(good)
			tc.edit(&m)
			_, err := wire.Decode(m)
			if err == nil || !errors.Is(err, wire.ErrInvalid) {
				t.Fatalf("got %v", err)
			}
			target := reflect.New(reflect.TypeOf(tc.want)).Interface()
			if !errors.As(err, target) {
				t.Fatalf("got %T (%v), want %T", err, err, tc.want)
			}
		})
	}
}

// FuzzDecode feeds arbitrary header values and bodies to Decode: it must
// never panic, and whatever it accepts must re-encode.
func FuzzDecode(f *testing.F) {
	f.Add("forest.frame.v1.0", "dev", int64(1), "2026-01-01T00:00:00Z", []byte("body"), 0.5, []byte("mask"), int64(10))
	f.Add("forest.frame.v2.0", "dev", int64(1), "2026-01-01T00:00:00Z", []byte("body"), 0.5, []byte("mask"), int64(10))
	f.Add("forest.frame.v2", "", int64(-1), "", []byte{}, math.NaN(), []byte(nil), int64(0))
	f.Fuzz(func(t *testing.T, typ, dev string, seq int64, captured string, body []byte, cov float64, mask []byte, w int64) {
		m := wire.Message{
			Type: typ, MessageID: dev + "-1", ContentType: wire.JPEG, Body: body,
			Headers: map[string]any{
				wire.HeaderDevice: dev, wire.HeaderSeq: seq, wire.HeaderCaptured: captured,
				wire.HeaderSHA256: wire.Sum(body), wire.HeaderWidth: w, wire.HeaderHeight: w,
				wire.HeaderCoverage: cov, wire.HeaderModel: "m",
			},
		}
		if mask != nil {
			m.Headers[wire.HeaderMask] = mask // read by version 1
			m.Headers[wire.HeaderMaskSHA256] = wire.Sum(mask)
			m.Headers[wire.HeaderImageBytes] = int64(len(body)) // read by version 2
			m.Body = append(append([]byte(nil), body...), mask...)
		}
		fr, err := wire.Decode(m)
		if err != nil {
			if !errors.Is(err, wire.ErrInvalid) {
				t.Fatalf("error outside ErrInvalid: %v", err)
			}
			return
		}
		if _, err := wire.Encode(fr); err != nil {
			t.Fatalf("decoded frame does not re-encode: %v", err)
		}
	})
}

// TestGivenChecksumTravels: a checksum computed at capture is sent as is,
// so damage between capture and send shows at the consumer.
func TestGivenChecksumTravels(t *testing.T) {
	f := frame([]byte("captured bytes"), nil)
	f.ImageSHA256 = wire.Sum(f.Image)
	f.Image = []byte("captured bytEs") // damaged after the capture
	m, err := wire.Encode(f)
	if err != nil {
		t.Fatal(err)
	}
	var ce *wire.ChecksumError
	if _, err := wire.Decode(m); !errors.As(err, &ce) {
		t.Fatalf("decode of a damaged body: %v, want a ChecksumError", err)
	}
}
