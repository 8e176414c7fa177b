package wire

import (
	"errors"
	"fmt"
)

// ErrInvalid is matched (errors.Is) by every error Decode and Encode return
// for a message that breaks the protocol.
var ErrInvalid = errors.New("invalid frame message")

// VersionError reports a message whose schema major version this package does
// not know.
type VersionError struct {
	Type string
	// Reads is the schema this build reads; "" means the frame schema.
	Reads string
}

func (e *VersionError) Error() string {
	reads := e.Reads
	if reads == "" {
		reads = Type()
	}
	return fmt.Sprintf("unknown message schema %q (this build reads %s)", e.Type, reads)
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *VersionError) Is(target error) bool { return target == ErrInvalid }

// FieldError reports a missing or malformed property or header.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("field %s: %s", e.Field, e.Reason) }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// ChecksumError reports a body or mask whose SHA-256 differs from its header.
type ChecksumError struct {
	Field     string
	Want, Got string
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("%s mismatch: header %s, content %s", e.Field, e.Want, e.Got)
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ChecksumError) Is(target error) bool { return target == ErrInvalid }
