// Package wire defines the message a forest-agent publishes for each frame
// and forest-cloud consumes, and the small status report an agent
// publishes about itself (Status, status.go): the one owner of those formats, of the frame-id
// format (FrameID) and of the rules for names that end up in object keys
// (SanitiseName, Ext). Its golden messages in testdata/ are read by both
// sides' tests through package wiretest.
//
// The body is the image bytes themselves (JPEG, PNG or WebP), followed by
// the mask PNG; never base64 or JSON. Everything else travels in AMQP
// properties and headers, described in PROTOCOL.md beside this file. The
// schema is versioned by the AMQP type property ("forest.frame.v2.0"):
// Encode writes version 2; Decode reads versions 1 (the mask in a header,
// as devices before version 2 send it) and 2, refuses an unknown major
// version with a *VersionError and accepts newer minor versions, ignoring
// headers it does not know.
//
// The package uses the standard library only and knows nothing of AMQP
// client libraries: Message is a transport-neutral view of one AMQP message
// that the publisher and the consumer map to their library's types. Encode
// and Decode are pure functions, safe for concurrent use.
package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Schema version of the messages this package writes.
const (
	Major = 2
	Minor = 0
)

// minMajor is the oldest major version Decode reads.
const minMajor = 1

// typePrefix starts the AMQP type property: typePrefix + "1.0".
const typePrefix = "forest.frame.v"

// Header names. They are part of the protocol: never rename one.
const (
	HeaderDevice      = "device"
	HeaderSeq         = "seq"
	HeaderCaptured    = "captured_at"
	HeaderSHA256      = "sha256"
	HeaderWidth       = "width"
	HeaderHeight      = "height"
	HeaderCoverage    = "coverage"
	HeaderModel       = "model"
	HeaderImageBytes  = "image_bytes"
	HeaderMask        = "mask" // version 1 only: the mask PNG
	HeaderMaskSHA256  = "mask_sha256"
	HeaderSource      = "source"
	HeaderSourceType  = "source_type"
	HeaderClockSynced = "clock_synced"
	HeaderGPSLat      = "gps_lat"
	HeaderGPSLon      = "gps_lon"
	HeaderGPSAlt      = "gps_alt"
	HeaderCameraMake  = "camera_make"
	HeaderCameraModel = "camera_model"
)

// Content types of the body.
const (
	JPEG = "image/jpeg"
	PNG  = "image/png"
	WebP = "image/webp"
)

// MaxMaskBytes bounds the mask header of a version 1 message. Version 2
// carries the mask in the body, which the consumer bounds as a whole.
const MaxMaskBytes = 1 << 20

// MaxPixels is the largest frame (width × height) forest-agent takes
// (segment.max_pixels) and forest-cloud accepts (consumer.max_pixels) by
// default: one number, so that with default settings no frame a device
// spooled is dead-lettered for its size.
const MaxPixels = 40_000_000

// Message is one AMQP message, independent of any client library. Header
// values are string, int64, float64, []byte or bool, the types every AMQP
// field table holds.
type Message struct {
	ContentType string
	MessageID   string
	Timestamp   time.Time
	AppID       string
	Type        string
	UserID      string
	Headers     map[string]any
	Body        []byte
}

// Frame is one captured, segmented frame as it travels from device to cloud.
type Frame struct {
	// ID is the stable frame id, the same on every retry: it becomes the
	// message id and the S3 object name.
	ID string
	// Device is the device id; the broker user that publishes it must be
	// allowed to speak for it.
	Device string
	// Seq is the device's frame sequence number.
	Seq uint64
	// Captured is when the frame was taken (EXIF time when present).
	Captured time.Time
	// ContentType is JPEG, PNG or WebP.
	ContentType string
	// Image is the transmitted image encoding.
	Image []byte
	// ImageSHA256 is the lowercase hex SHA-256 of Image. Encode computes it
	// when empty and trusts it otherwise, so that a sender can hash a frame
	// once, when it is captured, and carry that checksum end to end.
	// Decode sets it after checking it against the body.
	ImageSHA256 string
	// Width and Height are the transmitted image's size in pixels.
	Width, Height int
	// Coverage is the forest fraction of the frame, 0 to 1.
	Coverage float64
	// Model identifies the segmentation model (name and version).
	Model string
	// Mask is the forest mask as a PNG (255 forest, 0 other).
	Mask []byte
	// MaskSHA256 is the lowercase hex SHA-256 of Mask; Decode sets it after
	// checking it, Encode computes it.
	MaskSHA256 string
	// Source names what the frame was captured from: a file name, a
	// camera URL or a command, as SanitiseName accepts it (see CleanName).
	// Empty when unknown.
	Source string
	// SourceType is the kind of source: "dir", "http" or "exec"; empty
	// when unknown.
	SourceType string
	// ClockUnsynced says the device's clock was not known to be right when
	// it captured the frame (a device without a real-time clock, before
	// time synchronisation): Captured may be far off.
	ClockUnsynced bool
	// GPS is the position from the frame's EXIF, if any.
	GPS *GPS
	// Camera is the camera from the frame's EXIF, if any.
	Camera *Camera
	// Agent is the publishing program and version ("forest-agent/1.2.0").
	Agent string
	// User is the AMQP user that published the frame (validated by
	// RabbitMQ when set on publish).
	User string
	// Sent is when the message was built.
	Sent time.Time
}

// GPS is a WGS84 position.
type GPS struct {
	Lat, Lon float64
	// Alt is metres above sea level; HasAlt says whether it is known.
	Alt    float64
	HasAlt bool
}

// Camera names the camera that took the frame.
type Camera struct {
	Make, Model string
}

// Type returns the AMQP type property for this package's schema version.
func Type() string { return typePrefix + strconv.Itoa(Major) + "." + strconv.Itoa(Minor) }

// Sum returns the lowercase hex SHA-256 of b, as carried in the headers.
func Sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Encode builds the message for f. It fails when a required field is
// missing or out of range.
func Encode(f *Frame) (Message, error) {
	if err := validate(f); err != nil {
		return Message{}, err
	}
	sum := f.ImageSHA256
	if sum == "" {
		sum = Sum(f.Image)
	}
	h := map[string]any{
		HeaderDevice:     f.Device,
		HeaderSeq:        int64(f.Seq),
		HeaderCaptured:   f.Captured.UTC().Format(time.RFC3339Nano),
		HeaderSHA256:     sum,
		HeaderImageBytes: int64(len(f.Image)),
		HeaderWidth:      int64(f.Width),
		HeaderHeight:     int64(f.Height),
		HeaderCoverage:   f.Coverage,
		HeaderModel:      f.Model,
	}
	body := f.Image
	if len(f.Mask) > 0 {
		h[HeaderMaskSHA256] = Sum(f.Mask)
		body = make([]byte, 0, len(f.Image)+len(f.Mask))
		body = append(append(body, f.Image...), f.Mask...)
	}
	if f.Source != "" {
		h[HeaderSource] = f.Source
	}
	if f.SourceType != "" {
		h[HeaderSourceType] = f.SourceType
	}
	h[HeaderClockSynced] = !f.ClockUnsynced
	if g := f.GPS; g != nil {
		h[HeaderGPSLat], h[HeaderGPSLon] = g.Lat, g.Lon
		if g.HasAlt {
			h[HeaderGPSAlt] = g.Alt
		}
	}
	if c := f.Camera; c != nil {
		if c.Make != "" {
			h[HeaderCameraMake] = c.Make
		}
		if c.Model != "" {
			h[HeaderCameraModel] = c.Model
		}
	}
	sent := f.Sent
	if sent.IsZero() {
		sent = time.Now()
	}
	return Message{
		ContentType: f.ContentType,
		MessageID:   f.ID,
		Timestamp:   sent.UTC().Truncate(time.Second),
		AppID:       f.Agent,
		Type:        Type(),
		UserID:      f.User,
		Headers:     h,
		Body:        body,
	}, nil
}

func validate(f *Frame) error {
	switch {
	case f.ID == "":
		return &FieldError{Field: "message_id", Reason: "missing"}
	case !validID(f.ID):
		return &FieldError{Field: "message_id", Reason: "must be 1-128 characters of [A-Za-z0-9._-]"}
	case f.Device == "":
		return &FieldError{Field: HeaderDevice, Reason: "missing"}
	case !validID(f.Device):
		return &FieldError{Field: HeaderDevice, Reason: "must be 1-128 characters of [A-Za-z0-9._-]"}
	case f.ContentType != JPEG && f.ContentType != PNG && f.ContentType != WebP:
		return &FieldError{Field: "content_type", Reason: fmt.Sprintf("must be %s, %s or %s (got %q)", JPEG, PNG, WebP, f.ContentType)}
	case len(f.Image) == 0:
		return &FieldError{Field: "body", Reason: "empty"}
	case f.Captured.IsZero():
		return &FieldError{Field: HeaderCaptured, Reason: "missing"}
	case f.Width <= 0 || f.Height <= 0:
		return &FieldError{Field: HeaderWidth, Reason: fmt.Sprintf("image size must be positive (got %dx%d)", f.Width, f.Height)}
	case math.IsNaN(f.Coverage) || f.Coverage < 0 || f.Coverage > 1:
		return &FieldError{Field: HeaderCoverage, Reason: fmt.Sprintf("must be within 0..1 (got %v)", f.Coverage)}
	case f.ImageSHA256 != "" && !hex64(f.ImageSHA256):
		return &FieldError{Field: HeaderSHA256, Reason: "must be 64 lowercase hex digits"}
	case f.Source != "" && !validName(f.Source):
		return &FieldError{Field: HeaderSource, Reason: "not a safe name (see wire.CleanName)"}
	case f.SourceType != "" && !validSourceType(f.SourceType):
		return &FieldError{Field: HeaderSourceType, Reason: fmt.Sprintf("must be 1-16 characters of [a-z] (got %q)", f.SourceType)}
	}
	if g := f.GPS; g != nil && (g.Lat < -90 || g.Lat > 90 || g.Lon < -180 || g.Lon > 180) {
		return &FieldError{Field: HeaderGPSLat, Reason: fmt.Sprintf("position out of range (%v, %v)", g.Lat, g.Lon)}
	}
	return nil
}

// validID reports whether s is safe as a device id or frame id: it becomes
// part of routing keys and S3 keys.
func validID(s string) bool {
	if len(s) == 0 || len(s) > 128 || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validSourceType(s string) bool {
	if len(s) == 0 || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 'a' || s[i] > 'z' {
			return false
		}
	}
	return true
}

func hex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidID reports whether s may be used as a device id or frame id.
func ValidID(s string) bool { return validID(s) }

// Decode parses and checks a message of version 1 or 2: schema version,
// required fields, and the SHA-256 of the image and of the mask. Headers it
// does not know are ignored. Image and Mask share m.Body's memory.
func Decode(m Message) (*Frame, error) {
	major, err := checkType(m.Type)
	if err != nil {
		return nil, err
	}
	f := &Frame{
		ID:          m.MessageID,
		ContentType: m.ContentType,
		Image:       m.Body,
		Agent:       m.AppID,
		User:        m.UserID,
		Sent:        m.Timestamp,
	}
	h := headers(m.Headers)
	if f.Device, err = h.str(HeaderDevice, true); err != nil {
		return nil, err
	}
	seq, err := h.int(HeaderSeq, true)
	if err != nil {
		return nil, err
	}
	if seq < 0 {
		return nil, &FieldError{Field: HeaderSeq, Reason: "negative"}
	}
	f.Seq = uint64(seq)
	captured, err := h.str(HeaderCaptured, true)
	if err != nil {
		return nil, err
	}
	if f.Captured, err = time.Parse(time.RFC3339Nano, captured); err != nil {
		return nil, &FieldError{Field: HeaderCaptured, Reason: "not an RFC 3339 time"}
	}
	w, err := h.int(HeaderWidth, true)
	if err != nil {
		return nil, err
	}
	ht, err := h.int(HeaderHeight, true)
	if err != nil {
		return nil, err
	}
	if w > math.MaxInt32 || ht > math.MaxInt32 {
		return nil, &FieldError{Field: HeaderWidth, Reason: "too large"}
	}
	f.Width, f.Height = int(w), int(ht)
	if f.Coverage, err = h.float(HeaderCoverage, true); err != nil {
		return nil, err
	}
	if f.Model, err = h.str(HeaderModel, false); err != nil {
		return nil, err
	}
	if major == 1 {
		if f.Mask, err = h.bytes(HeaderMask); err != nil {
			return nil, err
		}
	} else {
		n, err := h.int(HeaderImageBytes, true)
		if err != nil {
			return nil, err
		}
		if n <= 0 || n > int64(len(m.Body)) {
			return nil, &FieldError{Field: HeaderImageBytes, Reason: fmt.Sprintf("must be within 1..%d, the body's length (got %d)", len(m.Body), n)}
		}
		f.Image = m.Body[:n:n]
		if n < int64(len(m.Body)) {
			f.Mask = m.Body[n:]
		}
		if f.Source, err = h.str(HeaderSource, false); err != nil {
			return nil, err
		}
		if f.SourceType, err = h.str(HeaderSourceType, false); err != nil {
			return nil, err
		}
		if v, ok := h[HeaderClockSynced]; ok {
			synced, ok := v.(bool)
			if !ok {
				return nil, &FieldError{Field: HeaderClockSynced, Reason: fmt.Sprintf("want a boolean, got %T", v)}
			}
			f.ClockUnsynced = !synced
		}
	}
	if f.ImageSHA256, err = checkSum(h, HeaderSHA256, f.Image); err != nil {
		return nil, err
	}
	if f.Mask != nil {
		if f.MaskSHA256, err = checkSum(h, HeaderMaskSHA256, f.Mask); err != nil {
			return nil, err
		}
	}
	if _, ok := h[HeaderGPSLat]; ok {
		g := &GPS{}
		if g.Lat, err = h.float(HeaderGPSLat, true); err != nil {
			return nil, err
		}
		if g.Lon, err = h.float(HeaderGPSLon, true); err != nil {
			return nil, err
		}
		if _, ok := h[HeaderGPSAlt]; ok {
			if g.Alt, err = h.float(HeaderGPSAlt, true); err != nil {
				return nil, err
			}
			g.HasAlt = true
		}
		f.GPS = g
	}
	mk, err := h.str(HeaderCameraMake, false)
	if err != nil {
		return nil, err
	}
	md, err := h.str(HeaderCameraModel, false)
	if err != nil {
		return nil, err
	}
	if mk != "" || md != "" {
		f.Camera = &Camera{Make: mk, Model: md}
	}
	if err := validate(f); err != nil {
		return nil, err
	}
	return f, nil
}

// checkSum checks that the header k holds the SHA-256 of b and returns it.
func checkSum(h headers, k string, b []byte) (string, error) {
	want, err := h.str(k, true)
	if err != nil {
		return "", err
	}
	got := Sum(b)
	if !strings.EqualFold(want, got) {
		return "", &ChecksumError{Field: k, Want: want, Got: got}
	}
	return got, nil
}

// checkType accepts "forest.frame.v<major>.<minor>" with a major version
// from minMajor to Major, and returns the major version.
func checkType(t string) (int, error) {
	if t == "" {
		return 0, &FieldError{Field: "type", Reason: "missing"}
	}
	v, ok := strings.CutPrefix(t, typePrefix)
	if !ok {
		return 0, &VersionError{Type: t}
	}
	maj, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(maj)
	if err != nil || n < minMajor || n > Major {
		return 0, &VersionError{Type: t}
	}
	return n, nil
}

type headers map[string]any

func (h headers) str(k string, required bool) (string, error) {
	v, ok := h[k]
	if !ok {
		if required {
			return "", &FieldError{Field: k, Reason: "missing"}
		}
		return "", nil
	}
	switch s := v.(type) {
	case string:
		return s, nil
	case []byte: // some clients send long strings as byte arrays
		return string(s), nil
	}
	return "", &FieldError{Field: k, Reason: fmt.Sprintf("want a string, got %T", v)}
}

func (h headers) int(k string, required bool) (int64, error) {
	v, ok := h[k]
	if !ok {
		if required {
			return 0, &FieldError{Field: k, Reason: "missing"}
		}
		return 0, nil
	}
	switch n := v.(type) {
	case int64:
		return n, nil
	case int32:
		return int64(n), nil
	case int16:
		return int64(n), nil
	case int8:
		return int64(n), nil
	case int:
		return int64(n), nil
	case uint8:
		return int64(n), nil
	case uint16:
		return int64(n), nil
	case uint32:
		return int64(n), nil
	}
	return 0, &FieldError{Field: k, Reason: fmt.Sprintf("want an integer, got %T", v)}
}

func (h headers) float(k string, required bool) (float64, error) {
	v, ok := h[k]
	if !ok {
		if required {
			return 0, &FieldError{Field: k, Reason: "missing"}
		}
		return 0, nil
	}
	var f float64
	switch n := v.(type) {
	case float64:
		f = n
	case float32:
		f = float64(n)
	default:
		i, err := h.int(k, true)
		if err != nil {
			return 0, &FieldError{Field: k, Reason: fmt.Sprintf("want a number, got %T", v)}
		}
		f = float64(i)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, &FieldError{Field: k, Reason: "not a finite number"}
	}
	return f, nil
}

func (h headers) bytes(k string) ([]byte, error) {
	v, ok := h[k]
	if !ok {
		return nil, nil
	}
	b, ok := v.([]byte)
	if !ok {
		return nil, &FieldError{Field: k, Reason: fmt.Sprintf("want bytes, got %T", v)}
	}
	if len(b) > MaxMaskBytes {
		return nil, &FieldError{Field: k, Reason: fmt.Sprintf("larger than %d bytes", MaxMaskBytes)}
	}
	return b, nil
}
