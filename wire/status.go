package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Status message: what a forest-agent reports about itself every
// uplink.status_interval, at start and at stop (PROTOCOL.md, "Status
// messages"). It travels through the frames' exchange with routing key
// StatusRoute(device), versioned by its own AMQP type
// ("forest.status.v1.0"); the body is a JSON Status.

// Status schema version this package writes.
const (
	StatusMajor = 1
	StatusMinor = 0
)

// statusPrefix starts the AMQP type of a status message.
const statusPrefix = "forest.status.v"

// StatusContentType is the content type of a status message's body.
const StatusContentType = "application/json"

// MaxStatusBytes bounds a status message's body. A status is 1 to 3 KB;
// the bound keeps a broken or hostile publisher from making the consumer
// parse megabytes.
const MaxStatusBytes = 64 << 10

// Bounds of a status's variable parts, checked by EncodeStatus (which
// truncates error texts to MaxStatusText) and DecodeStatus.
const (
	MaxStatusText    = 512 // bytes of an error text
	maxStatusName    = 128 // bytes of a version or model name
	maxStatusHours   = 48  // coverage hours
	maxStatusReasons = 16  // eviction or quarantine reasons
)

// States of an agent in a status message. Readers accept other states of
// 1 to 16 lowercase letters (a newer minor version may add some).
const (
	StatusStarting = "starting"
	StatusRunning  = "running"
	StatusStopping = "stopping"
)

// Status is one status report of a device. Times are UTC in RFC 3339;
// counts since start reset when the agent restarts.
type Status struct {
	// Device is the device id; the header "device" carries it too.
	Device string `json:"device"`
	// SentAt is the device's clock when the report was built; compared with
	// the receipt time it shows a wrong clock.
	SentAt time.Time `json:"sent_at"`
	// State is StatusStarting, StatusRunning or StatusStopping.
	State string `json:"state"`
	// IntervalSeconds is the agent's status interval: a reader may call the
	// device silent after a few intervals without a report.
	IntervalSeconds float64 `json:"interval_seconds"`
	// Version is the agent's version and Model the segmentation model id.
	Version string `json:"version"`
	Model   string `json:"model,omitempty"`
	// StartedAt is when the agent started.
	StartedAt time.Time `json:"started_at"`
	// ClockSynced says whether the device's clock is known to be right;
	// nil when the agent cannot tell.
	ClockSynced *bool          `json:"clock_synced,omitempty"`
	Spool       SpoolStatus    `json:"spool"`
	Link        LinkStatus     `json:"link"`
	Capture     CaptureStatus  `json:"capture"`
	Coverage    CoverageStatus `json:"coverage"`
	// Disk is the file system of the spool; nil when unknown.
	Disk *DiskStatus `json:"disk,omitempty"`
}

// SpoolStatus is the device's spool: what waits to be sent.
type SpoolStatus struct {
	// Frames and Bytes are stored and not yet confirmed by the broker.
	Frames int   `json:"frames"`
	Bytes  int64 `json:"bytes"`
	// MaxBytes is the spool's bound (spool.max_bytes).
	MaxBytes int64 `json:"max_bytes"`
	// OldestAt is when the oldest unsent frame was spooled; zero when the
	// spool is empty.
	OldestAt time.Time `json:"oldest_at,omitzero"`
	// Evicted counts frames evicted unsent over the life of the spool, by
	// reason (max_bytes, min_free, max_age).
	Evicted map[string]uint64 `json:"evicted,omitempty"`
	// Quarantined counts records set aside in the spool's quarantine over
	// the life of the spool, by reason (damaged, undecodable_meta,
	// undeliverable).
	Quarantined map[string]uint64 `json:"quarantined,omitempty"`
	// Published counts frames confirmed by the broker since start.
	Published uint64 `json:"published"`
}

// LinkStatus is the device's link to the broker.
type LinkStatus struct {
	// State is the link's state (connected, connecting, down, blocked) and
	// Since when it entered it.
	State string    `json:"state"`
	Since time.Time `json:"since,omitzero"`
	// Reconnects counts connections lost since start.
	Reconnects int `json:"reconnects"`
	// LastError is the most recent connection error, if any.
	LastError string `json:"last_error,omitempty"`
}

// CaptureStatus is the device's capture.
type CaptureStatus struct {
	// LastAt is when the source last produced an image.
	LastAt time.Time `json:"last_at,omitzero"`
	// Frames counts frames spooled since start.
	Frames uint64 `json:"frames"`
	// Failing counts consecutive failed captures, LastError the last one.
	Failing   int    `json:"failing,omitempty"`
	LastError string `json:"last_error,omitempty"`
}

// CoverageStatus summarises the forest coverage the device measured.
type CoverageStatus struct {
	// Last is the coverage of the last spooled frame; nil before the first.
	Last *float64 `json:"last,omitempty"`
	// Hours are the last hours with frames, oldest first, at most 48.
	Hours []CoverageHour `json:"hours,omitempty"`
}

// CoverageHour is the coverage of one clock hour's frames.
type CoverageHour struct {
	Start  time.Time `json:"start"`
	Frames int       `json:"frames"`
	Mean   float64   `json:"mean"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
}

// DiskStatus is the space of a file system.
type DiskStatus struct {
	FreeBytes  uint64 `json:"free_bytes"`
	TotalBytes uint64 `json:"total_bytes"`
}

// StatusType returns the AMQP type of the status messages this package
// writes.
func StatusType() string {
	return statusPrefix + strconv.Itoa(StatusMajor) + "." + strconv.Itoa(StatusMinor)
}

// IsStatus reports whether an AMQP type names a status message of any
// version.
func IsStatus(typ string) bool { return strings.HasPrefix(typ, statusPrefix) }

// StatusRoute returns the routing key of a device's status messages.
func StatusRoute(device string) string { return "status." + device }

// StatusMessageID returns the message id of a device's status sent at t:
// "<device>.status.<unix ms>".
func StatusMessageID(device string, t time.Time) string {
	return device + ".status." + strconv.FormatInt(t.UnixMilli(), 10)
}

// EncodeStatus builds the message of s, published by agent (the app id)
// as user (the AMQP user_id, "" to leave it unset). Error texts longer
// than MaxStatusText are cut; anything else out of bounds is an error.
func EncodeStatus(s *Status, agent, user string) (Message, error) {
	c := *s
	c.Link.LastError = cut(c.Link.LastError, MaxStatusText)
	c.Capture.LastError = cut(c.Capture.LastError, MaxStatusText)
	c.SentAt, c.StartedAt = c.SentAt.UTC(), c.StartedAt.UTC()
	if err := c.validate(); err != nil {
		return Message{}, err
	}
	body, err := json.Marshal(&c)
	if err != nil {
		return Message{}, &FieldError{Field: "body", Reason: err.Error()}
	}
	if len(body) > MaxStatusBytes {
		return Message{}, &FieldError{Field: "body", Reason: fmt.Sprintf("%d bytes, over %d", len(body), MaxStatusBytes)}
	}
	return Message{
		ContentType: StatusContentType,
		MessageID:   StatusMessageID(c.Device, c.SentAt),
		Timestamp:   c.SentAt.Truncate(time.Second),
		AppID:       agent,
		Type:        StatusType(),
		UserID:      user,
		Headers:     map[string]any{HeaderDevice: c.Device},
		Body:        body,
	}, nil
}

// DecodeStatus parses and checks a status message of major version 1. Its
// device header must name the device of its body. Fields and headers it
// does not know are ignored (a newer minor version adds some).
func DecodeStatus(m Message) (*Status, error) {
	if m.Type == "" {
		return nil, &FieldError{Field: "type", Reason: "missing"}
	}
	v, ok := strings.CutPrefix(m.Type, statusPrefix)
	maj, _, _ := strings.Cut(v, ".")
	if n, err := strconv.Atoi(maj); !ok || err != nil || n != StatusMajor {
		return nil, &VersionError{Type: m.Type, Reads: StatusType()}
	}
	if len(m.Body) > MaxStatusBytes {
		return nil, &FieldError{Field: "body", Reason: fmt.Sprintf("%d bytes, over %d", len(m.Body), MaxStatusBytes)}
	}
	dev, err := headers(m.Headers).str(HeaderDevice, true)
	if err != nil {
		return nil, err
	}
	var s Status
	if err := json.NewDecoder(bytes.NewReader(m.Body)).Decode(&s); err != nil {
		return nil, &FieldError{Field: "body", Reason: "not a status document: " + err.Error()}
	}
	if s.Device != dev {
		return nil, &FieldError{Field: HeaderDevice, Reason: fmt.Sprintf("header says %q, body says %q", dev, s.Device)}
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

func (s *Status) validate() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case s.Device == "":
		return bad("device", "missing")
	case !validID(s.Device):
		return bad("device", "must be 1-128 characters of [A-Za-z0-9._-]")
	case s.SentAt.IsZero():
		return bad("sent_at", "missing")
	case !validSourceType(s.State):
		return bad("state", "must be 1-16 characters of [a-z] (got %q)", s.State)
	case !finite(s.IntervalSeconds) || s.IntervalSeconds < 0:
		return bad("interval_seconds", "must be a number >= 0")
	case len(s.Version) > maxStatusName || !utf8.ValidString(s.Version):
		return bad("version", "longer than %d bytes or not UTF-8", maxStatusName)
	case len(s.Model) > maxStatusName || !utf8.ValidString(s.Model):
		return bad("model", "longer than %d bytes or not UTF-8", maxStatusName)
	case s.Spool.Frames < 0 || s.Spool.Bytes < 0 || s.Spool.MaxBytes < 0:
		return bad("spool", "negative count")
	case s.Link.Reconnects < 0 || s.Capture.Failing < 0:
		return bad("link.reconnects", "negative count")
	case len(s.Link.State) > 32:
		return bad("link.state", "longer than 32 bytes")
	case len(s.Link.LastError) > MaxStatusText || len(s.Capture.LastError) > MaxStatusText:
		return bad("last_error", "longer than %d bytes", MaxStatusText)
	case s.Coverage.Last != nil && !fraction(*s.Coverage.Last):
		return bad("coverage.last", "must be within 0..1")
	case len(s.Coverage.Hours) > maxStatusHours:
		return bad("coverage.hours", "more than %d hours", maxStatusHours)
	}
	for name, m := range map[string]map[string]uint64{"spool.evicted": s.Spool.Evicted, "spool.quarantined": s.Spool.Quarantined} {
		if len(m) > maxStatusReasons {
			return bad(name, "more than %d reasons", maxStatusReasons)
		}
		for r := range m {
			if !validReason(r) {
				return bad(name, "reason %q is not 1-32 characters of [a-z0-9_]", r)
			}
		}
	}
	for _, h := range s.Coverage.Hours {
		if h.Frames < 0 || !fraction(h.Mean) || !fraction(h.Min) || !fraction(h.Max) {
			return bad("coverage.hours", "hour %s out of range", h.Start.Format(time.RFC3339))
		}
	}
	return nil
}

func finite(f float64) bool   { return !math.IsNaN(f) && !math.IsInf(f, 0) }
func fraction(f float64) bool { return finite(f) && f >= 0 && f <= 1 }

func validReason(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// cut shortens s to at most n bytes on a rune boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
