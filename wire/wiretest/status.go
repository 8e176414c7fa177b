package wiretest

import (
	"bytes"
	"encoding/json"
	"path/filepath"
)

// StatusDir is the absolute path of wire/testdata/status.
func StatusDir() string { return filepath.Join(Dir(), "status") }

// LoadStatus reads every golden status message, sorted by name. A
// message's body is its file's "body" compacted, exactly the bytes
// wire.EncodeStatus writes for the current version.
func LoadStatus() ([]Golden, error) {
	return load(StatusDir(), func(b json.RawMessage) ([]byte, error) {
		var body bytes.Buffer
		err := json.Compact(&body, b)
		return body.Bytes(), err
	})
}

// WriteStatus stores g as testdata/status/<g.Name>.json; its body must be
// JSON, and is kept readable.
func WriteStatus(g Golden) error { return write(StatusDir(), g, json.RawMessage(g.Message.Body)) }
