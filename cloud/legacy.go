package cloud

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/png"

	// Formats the legacy decoder accepts.
	_ "image/gif"
	_ "image/jpeg"

	_ "golang.org/x/image/webp"
)

// Legacy is a decoded legacy message, ready to store.
type Legacy struct {
	// Name is the image_name as sent (not yet sanitised).
	Name string
	// PNG is the image as PNG: the bytes as received when they were a PNG,
	// otherwise the decoded image re-encoded.
	PNG []byte
	// Format is the format of the received image (png, jpeg, gif, webp).
	Format        string
	Width, Height int
}

// LegacyLimits bound what DecodeLegacy accepts. Zero values mean the
// defaults (DefaultMaxMessageBytes, DefaultMaxPixels).
type LegacyLimits struct {
	MaxBytes  int
	MaxPixels int
}

// Defaults of the limits.
const (
	DefaultMaxMessageBytes = 32 << 20
	DefaultMaxPixels       = 32 << 20
)

type legacyMessage struct {
	Image         *string `json:"image"`
	ImageMetadata *struct {
		ImageName *string `json:"image_name"`
	} `json:"image_metadata"`
}

// DecodeLegacy decodes a legacy message body
// ({"image": <base64>, "image_metadata": {"image_name": ...}}) and validates
// the image: its header is read first (image.DecodeConfig) and the pixel
// limit checked before any pixels are decoded. Every error is a
// *PoisonError with the reason.
func DecodeLegacy(body []byte, lim LegacyLimits) (*Legacy, error) {
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = DefaultMaxMessageBytes
	}
	if lim.MaxPixels <= 0 {
		lim.MaxPixels = DefaultMaxPixels
	}
	if len(body) > lim.MaxBytes {
		return nil, poison(ReasonTooLarge, fmt.Errorf("message of %d bytes over %d: %w", len(body), lim.MaxBytes, ErrTooLarge))
	}
	var m legacyMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, poison(ReasonBadJSON, fmt.Errorf("decode legacy json: %w", err))
	}
	if m.Image == nil {
		return nil, poison(ReasonBadJSON, fmt.Errorf("legacy message: field image missing"))
	}
	if m.ImageMetadata == nil || m.ImageMetadata.ImageName == nil {
		return nil, poison(ReasonBadJSON, fmt.Errorf("legacy message: field image_metadata.image_name missing"))
	}
	raw, err := base64.StdEncoding.DecodeString(*m.Image)
	if err != nil {
		raw, err = base64.RawStdEncoding.DecodeString(*m.Image)
		if err != nil {
			return nil, poison(ReasonBadBase64, fmt.Errorf("decode legacy image base64: %w", err))
		}
	}
	if len(raw) == 0 {
		return nil, poison(ReasonNotImage, fmt.Errorf("legacy image empty: %w", ErrNotImage))
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(raw))
	if err != nil {
		return nil, poison(ReasonNotImage, fmt.Errorf("read legacy image header: %v: %w", err, ErrNotImage))
	}
	if err := checkPixels(cfg.Width, cfg.Height, lim.MaxPixels); err != nil {
		return nil, err
	}
	l := &Legacy{Name: *m.ImageMetadata.ImageName, Format: format, Width: cfg.Width, Height: cfg.Height}
	img, _, err := image.Decode(bytes.NewReader(raw))
	if err != nil {
		return nil, poison(ReasonNotImage, fmt.Errorf("decode legacy %s image: %v: %w", format, err, ErrNotImage))
	}
	if format == "png" {
		l.PNG = raw
		return l, nil
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, poison(ReasonNotImage, fmt.Errorf("encode legacy image as png: %v: %w", err, ErrNotImage))
	}
	l.PNG = buf.Bytes()
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
