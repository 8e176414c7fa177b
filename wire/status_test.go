package wire_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/forestwatch/forest/wire"
	"github.com/forestwatch/forest/wire/wiretest"
)

func ptr[T any](v T) *T { return &v }

// sampleStatus is a full status report, as an agent sends it.
func sampleStatus() *wire.Status {
	t0 := time.Date(2026, 6, 1, 10, 0, 0, 0, time.UTC)
	return &wire.Status{
		Device: "mast-01", SentAt: t0.Add(35 * time.Minute), State: wire.StatusRunning, IntervalSeconds: 300,
		Version: "0.4.0", Model: "forest-unet/1.2.0", StartedAt: t0.Add(-2 * time.Hour), ClockSynced: ptr(true),
		Spool: wire.SpoolStatus{
			Frames: 42, Bytes: 9_123_456, MaxBytes: 2 << 30, OldestAt: t0.Add(20 * time.Minute),
			Evicted:     map[string]uint64{"max_bytes": 3, "min_free": 0, "max_age": 1},
			Quarantined: map[string]uint64{"damaged": 1}, Published: 1234,
		},
		Link:    wire.LinkStatus{State: "connected", Since: t0.Add(30 * time.Minute), Reconnects: 2, LastError: "dial: connection refused"},
		Capture: wire.CaptureStatus{LastAt: t0.Add(34 * time.Minute), Frames: 1276},
		Coverage: wire.CoverageStatus{Last: ptr(0.61), Hours: []wire.CoverageHour{
			{Start: t0.Add(-time.Hour), Frames: 60, Mean: 0.58, Min: 0.41, Max: 0.66},
			{Start: t0, Frames: 34, Mean: 0.6, Min: 0.52, Max: 0.63},
		}},
		Disk: &wire.DiskStatus{FreeBytes: 5 << 30, TotalBytes: 16 << 30},
	}
}

// TestStatusGolden writes the golden status messages with -update, and
// otherwise checks that they decode as recorded: the contract with
// forest-cloud, whose tests read the same files.
func TestStatusGolden(t *testing.T) {
	if *update {
		writeStatusGolden(t)
	}
	goldens, err := wiretest.LoadStatus()
	if err != nil {
		t.Fatal(err)
	}
	if len(goldens) < 5 {
		t.Fatalf("only %d golden status messages", len(goldens))
	}
	for _, g := range goldens {
		t.Run(g.Name, func(t *testing.T) {
			s, err := wire.DecodeStatus(g.Message)
			switch g.WantError {
			case "":
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				if s.Device != g.Message.Headers[wire.HeaderDevice] || s.SentAt.IsZero() {
					t.Fatalf("decoded %+v", s)
				}
				if g.Message.Type == wire.StatusType() {
					m, err := wire.EncodeStatus(s, g.Message.AppID, g.Message.UserID)
					if err != nil {
						t.Fatal(err)
					}
					if !reflect.DeepEqual(m, g.Message) {
						t.Fatalf("re-encoded message differs:\n got %+v %s\nwant %+v %s", m, m.Body, g.Message, g.Message.Body)
					}
				}
			case "version":
				var ve *wire.VersionError
				if !errors.As(err, &ve) || !strings.Contains(err.Error(), wire.StatusType()) {
					t.Fatalf("got %v, want a VersionError naming %s", err, wire.StatusType())
				}
			case "field":
				var fe *wire.FieldError
				if !errors.As(err, &fe) || fe.Field != g.WantField {
					t.Fatalf("got %v, want a FieldError on %s", err, g.WantField)
				}
			default:
				t.Fatalf("unknown want_error %q", g.WantError)
			}
			if g.WantError != "" && !errors.Is(err, wire.ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
		})
	}
}

func writeStatusGolden(t *testing.T) {
	put := func(name string, m wire.Message, wantErr, field string) {
		t.Helper()
		if err := wiretest.WriteStatus(wiretest.Golden{Name: name, Message: m, WantError: wantErr, WantField: field}); err != nil {
			t.Fatal(err)
		}
	}
	full, err := wire.EncodeStatus(sampleStatus(), "forest-agent/0.4.0", "mast-01")
	if err != nil {
		t.Fatal(err)
	}
	put("v1-full", full, "", "")

	t0 := time.Date(2026, 6, 1, 9, 0, 0, 0, time.UTC)
	minimal, err := wire.EncodeStatus(&wire.Status{Device: "mast-02", SentAt: t0, State: wire.StatusStarting,
		Version: "0.4.0", StartedAt: t0, Link: wire.LinkStatus{State: "connected"}}, "forest-agent/0.4.0", "mast-02")
	if err != nil {
		t.Fatal(err)
	}
	put("v1-minimal", minimal, "", "")

	// A newer minor version: unknown fields and headers are ignored.
	future := clone(full)
	future.Type = "forest.status.v1.4"
	future.Headers["future_header"] = "ignored by v1.0 readers"
	var doc map[string]any
	if err := json.Unmarshal(full.Body, &doc); err != nil {
		t.Fatal(err)
	}
	doc["gnss"] = map[string]any{"fix": "3d", "satellites": 9}
	doc["state"] = "updating"
	future.Body, _ = json.Marshal(doc)
	put("v1.4-newer-minor", future, "", "")

	v2 := clone(full)
	v2.Type = "forest.status.v2.0"
	put("v2-unknown-major", v2, "version", "")

	other := clone(full)
	other.Headers[wire.HeaderDevice] = "mast-99"
	put("bad-device-mismatch", other, "field", wire.HeaderDevice)

	cov := clone(full)
	cov.Body = bytes.Replace(full.Body, []byte(`"last":0.61`), []byte(`"last":1.5`), 1)
	put("bad-coverage", cov, "field", "coverage.last")

	notJSON := clone(full)
	notJSON.Body = []byte(`"not a status"`)
	put("bad-body", notJSON, "field", "body")
}

func TestStatusRoundTrip(t *testing.T) {
	s := sampleStatus()
	s.Link.LastError = strings.Repeat("é", wire.MaxStatusText) // 2 bytes a rune: cut
	m, err := wire.EncodeStatus(s, "forest-agent/x", "mast-01")
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != "forest.status.v1.0" || m.ContentType != "application/json" || m.UserID != "mast-01" ||
		m.MessageID != "mast-01.status."+"1780310100000" {
		t.Fatalf("properties %+v", m)
	}
	got, err := wire.DecodeStatus(m)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.Link.LastError); n > wire.MaxStatusText || n < wire.MaxStatusText-1 || !strings.HasPrefix(s.Link.LastError, got.Link.LastError) {
		t.Fatalf("last error cut to %d bytes", n)
	}
	got.Link.LastError = s.Link.LastError
	if !reflect.DeepEqual(got, s) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, s)
	}
	// A large report: 24 hours of coverage (all the agent keeps), every
	// quarantine reason.
	big := sampleStatus()
	for h := range 24 {
		big.Coverage.Hours = append(big.Coverage.Hours, wire.CoverageHour{Start: big.SentAt.Add(-time.Duration(h) * time.Hour).Truncate(time.Hour),
			Frames: 3600, Mean: 0.123456789, Min: 0.0123456789, Max: 0.987654321})
	}
	big.Coverage.Hours = big.Coverage.Hours[len(big.Coverage.Hours)-24:]
	big.Spool.Quarantined = map[string]uint64{"damaged": 1, "undecodable_meta": 2, "undeliverable": 3}
	small, err := wire.EncodeStatus(sampleStatus(), "forest-agent/x", "mast-01")
	if err != nil {
		t.Fatal(err)
	}
	full, err := wire.EncodeStatus(big, "forest-agent/x", "mast-01")
	if err != nil {
		t.Fatal(err)
	}
	if len(small.Body) < 600 || len(full.Body) > 4096 {
		t.Fatalf("reports of %d and %d bytes; the docs say 1 to 3 KB", len(small.Body), len(full.Body))
	}
	t.Logf("status report: %d bytes with 2 hours of coverage, %d with 24 hours", len(small.Body), len(full.Body))
}

func TestStatusRefused(t *testing.T) {
	for name, mod := range map[string]func(*wire.Status){
		"no device":     func(s *wire.Status) { s.Device = "" },
		"unsafe device": func(s *wire.Status) { s.Device = "../x" },
		"no time":       func(s *wire.Status) { s.SentAt = time.Time{} },
		"bad state":     func(s *wire.Status) { s.State = "Running!" },
		"nan interval":  func(s *wire.Status) { s.IntervalSeconds = -1 },
		"bad reason":    func(s *wire.Status) { s.Spool.Evicted["Max Bytes"] = 1 },
		"hour range":    func(s *wire.Status) { s.Coverage.Hours[0].Max = 2 },
		"long model":    func(s *wire.Status) { s.Model = strings.Repeat("m", 200) },
	} {
		s := sampleStatus()
		mod(s)
		if _, err := wire.EncodeStatus(s, "a", "u"); !errors.Is(err, wire.ErrInvalid) {
			t.Errorf("%s: encode gave %v", name, err)
		}
	}
	m, err := wire.EncodeStatus(sampleStatus(), "a", "u")
	if err != nil {
		t.Fatal(err)
	}
	big := clone(m)
	big.Body = append(bytes.Repeat([]byte(" "), wire.MaxStatusBytes), m.Body...)
	if _, err := wire.DecodeStatus(big); !errors.Is(err, wire.ErrInvalid) {
		t.Fatalf("oversized body: %v", err)
	}
	frame := clone(m)
	frame.Type = wire.Type()
	if _, err := wire.DecodeStatus(frame); !errors.Is(err, wire.ErrInvalid) {
		t.Fatalf("a frame type: %v", err)
	}
	if !wire.IsStatus(m.Type) || wire.IsStatus(wire.Type()) {
		t.Fatal("IsStatus")
	}
}

// FuzzDecodeStatus: whatever body and type a status message has,
// DecodeStatus never panics, refuses with an ErrInvalid error or returns a
// status that EncodeStatus accepts and that decodes to itself again.
func FuzzDecodeStatus(f *testing.F) {
	goldens, err := wiretest.LoadStatus()
	if err != nil {
		f.Fatal(err)
	}
	for _, g := range goldens {
		dev, _ := g.Message.Headers[wire.HeaderDevice].(string)
		f.Add(g.Message.Type, dev, g.Message.Body)
	}
	f.Fuzz(func(t *testing.T, typ, dev string, body []byte) {
		m := wire.Message{Type: typ, Headers: map[string]any{wire.HeaderDevice: dev}, Body: body}
		s, err := wire.DecodeStatus(m)
		if err != nil {
			if !errors.Is(err, wire.ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			return
		}
		again, err := wire.EncodeStatus(s, "a", "u")
		if err != nil {
			t.Fatalf("decoded status does not encode: %v", err)
		}
		s2, err := wire.DecodeStatus(again)
		if err != nil {
			t.Fatalf("re-encoded status does not decode: %v", err)
		}
		if s2.Device != s.Device || !s2.SentAt.Equal(s.SentAt) || s2.Spool.Frames != s.Spool.Frames {
			t.Fatalf("round trip changed the status: %+v → %+v", s, s2)
		}
	})
}
