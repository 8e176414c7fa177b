package segment

import (
	"errors"
	"strings"
)

// Sentinel errors returned (wrapped) by this package. Test for them with errors.Is.
var (
	// ErrNotImage reports bytes that are not a decodable JPEG, PNG, WebP or TIFF image (or
	// a TIFF in a layout Decode does not read; the message says which).
	ErrNotImage = errors.New("not a supported image")
	// ErrTooLarge reports an image whose header declares more pixels than allowed.
	// It is returned before any pixel data is decoded.
	ErrTooLarge = errors.New("image too large")
	// ErrEmptyImage reports a nil image or one with zero width or height.
	ErrEmptyImage = errors.New("empty image")
	// ErrMetadata reports a model whose ONNX metadata does not describe its contract.
	// The concrete error is a *MetadataError naming the offending keys.
	ErrMetadata = errors.New("model metadata")
	// ErrUnsupportedModel reports a model whose inputs or outputs this package cannot drive
	// (for example a layout other than NCHW, or output and input sizes that differ).
	ErrUnsupportedModel = errors.New("unsupported model")
	// ErrRuntime reports that the ONNX Runtime shared library could not be loaded or
	// initialised.
	ErrRuntime = errors.New("onnx runtime unavailable")
	// ErrClosed reports use of a Model after Close.
	ErrClosed = errors.New("model closed")
)

// MetadataError describes missing or invalid keys in a model's ONNX metadata properties.
// It matches ErrMetadata with errors.Is.
type MetadataError struct {
	// Model is the path of the model file.
	Model string
	// Missing lists required keys that are absent, in a stable order.
	Missing []string
	// Invalid maps present keys to the reason their value was rejected.
	Invalid map[string]string
}

// Error returns a message naming every missing and invalid key.
func (e *MetadataError) Error() string {
	var b strings.Builder
	b.WriteString("model metadata")
	if e.Model != "" {
		b.WriteString(" of " + e.Model)
	}
	if len(e.Missing) > 0 {
		b.WriteString(": missing key(s) " + strings.Join(e.Missing, ", "))
	}
	if len(e.Invalid) > 0 {
		keys := make([]string, 0, len(e.Invalid))
		for k := range e.Invalid {
			keys = append(keys, k)
		}
		sortStrings(keys)
		b.WriteString(": invalid ")
		for i, k := range keys {
			if i > 0 {
				b.WriteString("; ")
			}
			b.WriteString(k + " (" + e.Invalid[k] + ")")
		}
	}
	return b.String()
}

// Is reports whether target is ErrMetadata.
func (e *MetadataError) Is(target error) bool { return target == ErrMetadata }
