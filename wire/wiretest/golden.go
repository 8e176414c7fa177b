// Package wiretest reads and writes the golden wire messages kept in
// wire/testdata, so that the publisher's and the consumer's tests
// decode the very same messages.
package wiretest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	"github.com/forestwatch/forest/wire"
)

// Golden is one golden message with what decoding it must give.
type Golden struct {
	// Name is the file name without .json.
	Name    string       `json:"-"`
	Message wire.Message `json:"-"`
	// WantError is "", "version", "field" or "checksum".
	WantError string `json:"want_error,omitempty"`
	// WantField names the field a "field" error must name.
	WantField string `json:"want_field,omitempty"`
}

// file is the JSON form: header values keep their AMQP type.
type file struct {
	Properties struct {
		ContentType string    `json:"content_type,omitempty"`
		MessageID   string    `json:"message_id,omitempty"`
		Timestamp   time.Time `json:"timestamp"`
		AppID       string    `json:"app_id,omitempty"`
		Type        string    `json:"type,omitempty"`
		UserID      string    `json:"user_id,omitempty"`
	} `json:"properties"`
	Headers map[string]value `json:"headers"`
	Body    []byte           `json:"body"`
	Golden
}

type value struct {
	String  *string  `json:"string,omitempty"`
	Int64   *int64   `json:"int64,omitempty"`
	Float64 *float64 `json:"float64,omitempty"`
	Bytes   []byte   `json:"bytes,omitempty"`
	Bool    *bool    `json:"bool,omitempty"`
}

// Dir is the absolute path of wire/testdata.
func Dir() string {
	_, here, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(here), "..", "testdata")
}

// Load reads every golden message, sorted by name.
func Load() ([]Golden, error) {
	paths, err := filepath.Glob(filepath.Join(Dir(), "*.json"))
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
		var f file
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		g := f.Golden
		g.Name = filepath.Base(p[:len(p)-len(".json")])
		g.Message = wire.Message{
			ContentType: f.Properties.ContentType,
			MessageID:   f.Properties.MessageID,
			Timestamp:   f.Properties.Timestamp,
			AppID:       f.Properties.AppID,
			Type:        f.Properties.Type,
			UserID:      f.Properties.UserID,
			Headers:     map[string]any{},
			Body:        f.Body,
		}
		for k, v := range f.Headers {
			switch {
			case v.String != nil:
				g.Message.Headers[k] = *v.String
			case v.Int64 != nil:
				g.Message.Headers[k] = *v.Int64
			case v.Float64 != nil:
				g.Message.Headers[k] = *v.Float64
			case v.Bytes != nil:
				g.Message.Headers[k] = v.Bytes
			case v.Bool != nil:
				g.Message.Headers[k] = *v.Bool
			default:
				return nil, fmt.Errorf("%s: header %s has no typed value", p, k)
			}
		}
		out = append(out, g)
	}
	return out, nil
}

// Write stores g as testdata/<g.Name>.json.
func Write(g Golden) error {
	var f file
	m := g.Message
	f.Properties.ContentType, f.Properties.MessageID, f.Properties.Timestamp = m.ContentType, m.MessageID, m.Timestamp
	f.Properties.AppID, f.Properties.Type, f.Properties.UserID = m.AppID, m.Type, m.UserID
	f.Body = m.Body
	f.Golden = g
	f.Headers = map[string]value{}
	for k, v := range m.Headers {
		switch x := v.(type) {
		case string:
			f.Headers[k] = value{String: &x}
		case int64:
			f.Headers[k] = value{Int64: &x}
		case float64:
			f.Headers[k] = value{Float64: &x}
		case []byte:
			f.Headers[k] = value{Bytes: x}
		case bool:
			f.Headers[k] = value{Bool: &x}
		default:
			return fmt.Errorf("header %s: unsupported type %T", k, v)
		}
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(Dir(), g.Name+".json"), append(b, '\n'), 0o644)
}
