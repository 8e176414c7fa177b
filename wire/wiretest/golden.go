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

// fileOf is the JSON form of a golden message whose body is kept as B:
// header values keep their AMQP type.
type fileOf[B any] struct {
	Properties struct {
		ContentType string    `json:"content_type,omitempty"`
		MessageID   string    `json:"message_id,omitempty"`
		Timestamp   time.Time `json:"timestamp"`
		AppID       string    `json:"app_id,omitempty"`
		Type        string    `json:"type,omitempty"`
		UserID      string    `json:"user_id,omitempty"`
	} `json:"properties"`
	Headers map[string]value `json:"headers"`
	Body    B                `json:"body"`
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
	return load(Dir(), func(b []byte) ([]byte, error) { return b, nil })
}

// Write stores g as testdata/<g.Name>.json.
func Write(g Golden) error { return write(Dir(), g, g.Message.Body) }

// load reads every golden message in dir, sorted by name; body gives a
// message's body from its file's.
func load[B any](dir string, body func(B) ([]byte, error)) ([]Golden, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
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
		var f fileOf[B]
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		mb, err := body(f.Body)
		if err != nil {
			return nil, fmt.Errorf("%s: body: %w", p, err)
		}
		g := f.Golden
		g.Name = filepath.Base(p[:len(p)-len(".json")])
		g.Message = wire.Message{
			ContentType: f.Properties.ContentType, MessageID: f.Properties.MessageID,
			Timestamp: f.Properties.Timestamp, AppID: f.Properties.AppID, Type: f.Properties.Type,
			UserID: f.Properties.UserID, Headers: map[string]any{}, Body: mb,
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

// write stores g as dir/<g.Name>.json with the body kept as body.
func write[B any](dir string, g Golden, body B) error {
	var f fileOf[B]
	m := g.Message
	f.Properties.ContentType, f.Properties.MessageID, f.Properties.Timestamp = m.ContentType, m.MessageID, m.Timestamp
	f.Properties.AppID, f.Properties.Type, f.Properties.UserID = m.AppID, m.Type, m.UserID
	f.Body = body
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
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, g.Name+".json"), append(b, '\n'), 0o644)
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
