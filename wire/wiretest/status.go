package wiretest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/forestwatch/forest/wire"
)

// statusFile is the JSON form of a golden status message: its body is the
// status document itself, kept readable.
type statusFile struct {
	Properties struct {
		ContentType string    `json:"content_type,omitempty"`
		MessageID   string    `json:"message_id,omitempty"`
		Timestamp   time.Time `json:"timestamp"`
		AppID       string    `json:"app_id,omitempty"`
		Type        string    `json:"type,omitempty"`
		UserID      string    `json:"user_id,omitempty"`
	} `json:"properties"`
	Headers map[string]value `json:"headers"`
	Body    json.RawMessage  `json:"body"`
	Golden
}

// StatusDir is the absolute path of wire/testdata/status.
func StatusDir() string { return filepath.Join(Dir(), "status") }

// LoadStatus reads every golden status message, sorted by name. A
// message's body is its file's "body" compacted, exactly the bytes
// wire.EncodeStatus writes for the current version.
func LoadStatus() ([]Golden, error) {
	paths, err := filepath.Glob(filepath.Join(StatusDir(), "*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var out []Golden
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var f statusFile
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		var body bytes.Buffer
		if err := json.Compact(&body, f.Body); err != nil {
			return nil, fmt.Errorf("%s: body: %w", p, err)
		}
		g := f.Golden
		g.Name = filepath.Base(p[:len(p)-len(".json")])
		g.Message = wire.Message{
			ContentType: f.Properties.ContentType, MessageID: f.Properties.MessageID,
			Timestamp: f.Properties.Timestamp, AppID: f.Properties.AppID, Type: f.Properties.Type,
			UserID: f.Properties.UserID, Headers: map[string]any{}, Body: body.Bytes(),
		}
		for k, v := range f.Headers {
			x, err := v.any()
			if err != nil {
				return nil, fmt.Errorf("%s: header %s: %w", p, k, err)
			}
			g.Message.Headers[k] = x
		}
		out = append(out, g)
	}
	return out, nil
}

// WriteStatus stores g as testdata/status/<g.Name>.json; its body must be
// JSON.
func WriteStatus(g Golden) error {
	var f statusFile
	m := g.Message
	f.Properties.ContentType, f.Properties.MessageID, f.Properties.Timestamp = m.ContentType, m.MessageID, m.Timestamp
	f.Properties.AppID, f.Properties.Type, f.Properties.UserID = m.AppID, m.Type, m.UserID
	f.Body = m.Body
	f.Golden = g
	f.Headers = map[string]value{}
	for k, v := range m.Headers {
		tv, err := typed(v)
		if err != nil {
			return fmt.Errorf("header %s: %w", k, err)
		}
		f.Headers[k] = tv
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(StatusDir(), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(StatusDir(), g.Name+".json"), append(b, '\n'), 0o644)
}

func (v value) any() (any, error) {
	switch {
	case v.String != nil:
		return *v.String, nil
	case v.Int64 != nil:
		return *v.Int64, nil
	case v.Float64 != nil:
		return *v.Float64, nil
	case v.Bytes != nil:
		return v.Bytes, nil
	case v.Bool != nil:
		return *v.Bool, nil
	}
	return nil, fmt.Errorf("no typed value")
}

func typed(v any) (value, error) {
	switch x := v.(type) {
	case string:
		return value{String: &x}, nil
	case int64:
		return value{Int64: &x}, nil
	case float64:
		return value{Float64: &x}, nil
	case []byte:
		return value{Bytes: x}, nil
	case bool:
		return value{Bool: &x}, nil
	}
	return value{}, fmt.Errorf("unsupported type %T", v)
}
