package cloud

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"strings"

	// Formats the legacy decoder accepts.
	_ "image/gif"
	_ "image/jpeg"
	_ "image/png"

	"github.com/forestwatch/forest/wire"
	_ "golang.org/x/image/webp"
)

// Legacy is a decoded legacy message, ready to store.
type Legacy struct {
	// Name is the image_name as sent (not yet sanitised).
	Name string
	// Image is what is stored: the image bytes as the device sent them,
	// or the image converted to PNG (LegacyOptions.PNG).
	Image []byte
	// ContentType and Ext are Image's MIME type and file extension
	// (without the dot): image/jpeg and jpg, image/png and png, image/gif
	// and gif, image/webp and webp.
	ContentType, Ext string
	// Format is the format of the received image (png, jpeg, gif, webp).
	Format        string
	Width, Height int
}

// LegacyOptions bound what DecodeLegacy accepts and say what it makes of
// the image. Zero limits mean the defaults (DefaultMaxMessageBytes,
// DefaultMaxPixels).
type LegacyOptions struct {
	MaxBytes  int
	MaxPixels int
	// PNG converts the image to PNG, as the old service did (a PNG is
	// kept as sent). Otherwise the image is kept as sent.
	PNG bool
}

// Defaults of the limits.
const (
	DefaultMaxMessageBytes = 32 << 20
	DefaultMaxPixels       = wire.MaxPixels
)

// legacyTypes maps the formats a legacy image may have to their content
// type and extension.
var legacyTypes = map[string][2]string{
	"jpeg": {"image/jpeg", "jpg"},
	"png":  {"image/png", "png"},
	"gif":  {"image/gif", "gif"},
	"webp": {"image/webp", "webp"},
}

type legacyMessage struct {
	Image         *string `json:"image"`
	ImageMetadata *struct {
		ImageName *string `json:"image_name"`
	} `json:"image_metadata"`
}

// legacyFields returns the base64 text of a legacy message's image and its
// image_name. The image is nearly all of the message (275 KB for a 200 KB
// JPEG): encoding/json would run each of its bytes through its scanner and
// copy it into a string. The fast path (legacyFast) finds it in place when
// the message is a plain object whose image string has no escape sequence,
// which base64 never needs; any other message is decoded by encoding/json,
// which has the last word on what is valid.
func legacyFields(body []byte) ([]byte, string, error) {
	if img, name, ok := legacyFast(body); ok {
		return img, name, nil
	}
	var m legacyMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, "", poison(ReasonBadJSON, fmt.Errorf("decode legacy json: %w", err))
	}
	if m.Image == nil {
		return nil, "", poison(ReasonBadJSON, fmt.Errorf("legacy message: field image missing"))
	}
	if m.ImageMetadata == nil || m.ImageMetadata.ImageName == nil {
		return nil, "", poison(ReasonBadJSON, fmt.Errorf("legacy message: field image_metadata.image_name missing"))
	}
	return []byte(*m.Image), *m.ImageMetadata.ImageName, nil
}

// legacyFast parses {"image": "<base64>", "image_metadata": {...}, ...}
// with the image string taken in place. It gives up (ok false) on anything
// it does not handle exactly as encoding/json would: escapes, control
// characters or non-ASCII bytes in a key or in the image string, a key that differs from
// "image" or "image_metadata" only in case (encoding/json matches field
// names case-insensitively), a repeated key, a missing field, a non-string
// image, or anything malformed. The values of other keys and
// image_metadata (small) are decoded by encoding/json.
func legacyFast(b []byte) (img []byte, name string, ok bool) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, "", false
	}
	var haveImg, haveName bool
	for i = skipWS(b, i+1); ; {
		key, next, ok := plainString(b, i)
		if !ok {
			return nil, "", false
		}
		if i = skipWS(b, next); i >= len(b) || b[i] != ':' {
			return nil, "", false
		}
		i = skipWS(b, i+1)
		switch k := string(key); {
		case k == "image" && !haveImg:
			if img, i, ok = plainString(b, i); !ok {
				return nil, "", false
			}
			haveImg = true
		case k == "image_metadata" && !haveName:
			var meta struct {
				ImageName *string `json:"image_name"`
			}
			n, err := decodeValue(b[i:], &meta)
			if err != nil || meta.ImageName == nil {
				return nil, "", false
			}
			i += n
			name, haveName = *meta.ImageName, true
		case strings.EqualFold(k, "image") || strings.EqualFold(k, "image_metadata"):
			return nil, "", false
		default:
			var v json.RawMessage
			n, err := decodeValue(b[i:], &v)
			if err != nil {
				return nil, "", false
			}
			i += n
		}
		i = skipWS(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i >= len(b) || b[i] != '}' {
			return nil, "", false
		}
		if skipWS(b, i+1) != len(b) || !haveImg || !haveName {
			return nil, "", false
		}
		return img, name, true
	}
}

// decodeValue decodes the JSON value at the start of b into v and returns
// how many bytes it took.
func decodeValue(b []byte, v any) (int, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(v); err != nil {
		return 0, err
	}
	return int(d.InputOffset()), nil
}

// plainString returns the contents of the JSON string starting at b[i] and
// the index after it, if it is plain ASCII: no escape sequence, no control
// character and no byte of 0x80 or more (encoding/json replaces invalid
// UTF-8 with U+FFFD, and matches non-ASCII keys by Unicode case folding;
// base64 and the keys the fast path looks for are ASCII).
func plainString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	end := bytes.IndexByte(b[i+1:], '"')
	if end < 0 {
		return nil, 0, false
	}
	s := b[i+1 : i+1+end]
	for _, c := range s {
		if c < 0x20 || c == '\\' || c >= 0x80 {
			return nil, 0, false
		}
	}
	return s, i + 2 + end, true
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// DecodeLegacy decodes a legacy message body
// ({"image": <base64>, "image_metadata": {"image_name": ...}}) and validates
// the image: its header is read first (image.DecodeConfig) and the pixel
// limit checked before anything else is done with it. Kept as sent, a JPEG
// or PNG is checked to be complete (every segment of a JPEG up to its end
// marker, every chunk's CRC of a PNG up to IEND) without decoding its
// pixels; a GIF or WebP is decoded. Converted to PNG, it is decoded. Every
// error is a *PoisonError with the reason.
func DecodeLegacy(body []byte, opts LegacyOptions) (*Legacy, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxMessageBytes
	}
	if opts.MaxPixels <= 0 {
		opts.MaxPixels = DefaultMaxPixels
	}
	if len(body) > opts.MaxBytes {
		return nil, poison(ReasonTooLarge, fmt.Errorf("message of %d bytes over %d: %w", len(body), opts.MaxBytes, ErrTooLarge))
	}
	b64, name, err := legacyFields(body)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, max(base64.StdEncoding.DecodedLen(len(b64)), base64.RawStdEncoding.DecodedLen(len(b64))))
	n, err := base64.StdEncoding.Decode(raw, b64)
	if err != nil {
		n, err = base64.RawStdEncoding.Decode(raw, b64)
		if err != nil {
			return nil, poison(ReasonBadBase64, fmt.Errorf("decode legacy image base64: %w", err))
		}
	}
	raw = raw[:n]
	if len(raw) == 0 {
		return nil, poison(ReasonNotImage, fmt.Errorf("legacy image empty: %w", ErrNotImage))
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(raw))
	if err != nil {
		return nil, poison(ReasonNotImage, fmt.Errorf("read legacy image header: %v: %w", err, ErrNotImage))
	}
	if err := checkPixels(cfg.Width, cfg.Height, opts.MaxPixels); err != nil {
		return nil, err
	}
	l := &Legacy{Name: name, Format: format, Width: cfg.Width, Height: cfg.Height}
	bad := func(err error) error {
		return poison(ReasonNotImage, fmt.Errorf("legacy %s image: %v: %w", format, err, ErrNotImage))
	}
	if !opts.PNG || format == "png" {
		switch format {
		case "jpeg":
			err = jpegComplete(raw)
		case "png":
			err = pngComplete(raw)
		default:
			_, _, err = image.Decode(bytes.NewReader(raw))
		}
		if err != nil {
			return nil, bad(err)
		}
		t := legacyTypes[format]
		l.Image, l.ContentType, l.Ext = raw, t[0], t[1]
		return l, nil
	}
	img, _, err := image.Decode(bytes.NewReader(raw))
	if err != nil {
		return nil, bad(err)
	}
	if l.Image, err = encodePNG(img); err != nil {
		return nil, bad(fmt.Errorf("encode as png: %w", err))
	}
	t := legacyTypes["png"]
	l.ContentType, l.Ext = t[0], t[1]
	return l, nil
}

func checkPixels(w, h, max int) error {
	if w <= 0 || h <= 0 {
		return poison(ReasonNotImage, fmt.Errorf("image size %dx%d: %w", w, h, ErrNotImage))
	}
	if int64(w)*int64(h) > int64(max) {
		return poison(ReasonTooLarge, fmt.Errorf("image of %dx%d pixels over %d: %w", w, h, max, ErrTooLarge))
	}
	return nil
}

var errTruncated = errors.New("truncated")

// jpegComplete walks a JPEG's marker segments and the entropy-coded data
// after each start of scan, and succeeds when it reaches the end-of-image
// marker: a JPEG cut short anywhere fails. Bytes after the end marker are
// allowed (some cameras append data).
func jpegComplete(b []byte) error {
	if len(b) < 4 || b[0] != 0xFF || b[1] != 0xD8 {
		return errors.New("no start-of-image marker")
	}
	i := 2
	for i+1 < len(b) {
		if b[i] != 0xFF {
			return fmt.Errorf("no marker at byte %d", i)
		}
		m := b[i+1]
		switch {
		case m == 0xFF: // fill byte
			i++
			continue
		case m == 0xD9: // end of image
			return nil
		case m >= 0xD0 && m <= 0xD7 || m == 0x01: // markers without a segment
			i += 2
			continue
		}
		if i+4 > len(b) {
			return errTruncated
		}
		n := int(b[i+2])<<8 | int(b[i+3])
		if n < 2 || i+2+n > len(b) {
			return errTruncated
		}
		i += 2 + n
		if m != 0xDA {
			continue
		}
		// Entropy-coded data: runs until a marker other than a stuffed
		// 0xFF00 or a restart marker.
		for {
			j := bytes.IndexByte(b[i:], 0xFF)
			if j < 0 || i+j+1 >= len(b) {
				return errTruncated
			}
			i += j
			if nx := b[i+1]; nx == 0x00 || nx >= 0xD0 && nx <= 0xD7 {
				i += 2
				continue
			}
			break
		}
	}
	return errTruncated
}

// pngComplete walks a PNG's chunks, checking each one's CRC, and succeeds
// when it reaches IEND.
func pngComplete(b []byte) error {
	const sig = "\x89PNG\r\n\x1a\n"
	if len(b) < len(sig) || string(b[:len(sig)]) != sig {
		return errors.New("no png signature")
	}
	for i := len(sig); ; {
		if i+12 > len(b) {
			return errTruncated
		}
		n := int64(binary.BigEndian.Uint32(b[i:]))
		if int64(i)+12+n > int64(len(b)) {
			return errTruncated
		}
		end := i + 8 + int(n)
		if crc32.ChecksumIEEE(b[i+4:end]) != binary.BigEndian.Uint32(b[end:]) {
			return fmt.Errorf("chunk %q: crc mismatch", b[i+4:i+8])
		}
		if string(b[i+4:i+8]) == "IEND" {
			return nil
		}
		i = end + 4
	}
}
