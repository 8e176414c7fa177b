package source

import "errors"

// Sentinel errors. Test for them with errors.Is.
var (
	// ErrCapture reports a capture that produced no usable image (a failed
	// command, an HTTP error, a non-image). It is counted and logged; the
	// source keeps running.
	ErrCapture = errors.New("capture failed")
	// ErrBadFrame reports capture data that is not a usable image (not an
	// image, too many pixels, empty). The source gives up on it.
	ErrBadFrame = errors.New("bad frame")
)
