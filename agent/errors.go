package agent

import (
	"github.com/forestwatch/forest/agent/source"
	"github.com/forestwatch/forest/internal/config"
)

// Sentinel errors. Test for them with errors.Is.
var (
	// ErrConfig reports an invalid configuration. Errors of type *FieldError
	// match it.
	ErrConfig = config.ErrConfig
	// ErrCapture reports a capture that produced no usable image (see
	// source.ErrCapture).
	ErrCapture = source.ErrCapture
	// ErrBadFrame reports capture data that is not a usable image (see
	// source.ErrBadFrame).
	ErrBadFrame = source.ErrBadFrame
)

// FieldError names a configuration field and what is wrong with it. It
// matches ErrConfig with errors.Is.
type FieldError = config.FieldError
