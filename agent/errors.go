package agent

import (
	"errors"

	"github.com/forestwatch/forest/internal/config"
)

// Sentinel errors. Test for them with errors.Is.
var (
	// ErrConfig reports an invalid configuration. Errors of type *FieldError
	// match it.
	ErrConfig = config.ErrConfig
	// ErrCapture reports a capture that produced no usable image (a failed
	// command, an HTTP error, a non-image). It is counted and logged; the
	// source keeps running.
	ErrCapture = errors.New("capture failed")
	// ErrBadFrame reports capture data that is not a usable image (not an
	// image, too many pixels, empty). The source gives up on it.
	ErrBadFrame = errors.New("bad frame")
)

// FieldError names a configuration field and what is wrong with it. It
// matches ErrConfig with errors.Is.
type FieldError = config.FieldError
