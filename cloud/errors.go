package cloud

import (
	"errors"
	"fmt"

	"github.com/forestwatch/forest/internal/config"
	"github.com/forestwatch/forest/wire"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrPoison is matched by every error that dead-letters a message.
	ErrPoison = errors.New("poison message")
	// ErrConflict means an object exists under the message's key with
	// different content.
	ErrConflict = errors.New("object exists with different content")
	// ErrUnsafeName means a legacy image name cannot be used as a key.
	ErrUnsafeName = wire.ErrUnsafeName
	// ErrNotImage means the bytes are not an image this service accepts.
	ErrNotImage = errors.New("not an accepted image")
	// ErrTooLarge means a message or image is over a configured limit.
	ErrTooLarge = errors.New("too large")
	// ErrConfig is matched by every configuration validation error.
	ErrConfig = config.ErrConfig
	// ErrOutage means an S3 write failed while S3 is out (the circuit
	// breaker is open): not the message's own failure.
	ErrOutage = errors.New("S3 outage")
	// ErrStartup is matched by every failed start-up check.
	ErrStartup = errors.New("start-up check failed")
)

// Reason is the stable code recorded in the x-forest-reason header of a dead
// letter and used as the reason label of forest_cloud_dead_letters_total.
type Reason string

// Dead-letter reasons.
const (
	ReasonBadJSON        Reason = "bad_json"
	ReasonBadBase64      Reason = "bad_base64"
	ReasonNotImage       Reason = "not_image"
	ReasonTooLarge       Reason = "too_large"
	ReasonChecksum       Reason = "checksum_mismatch"
	ReasonSchema         Reason = "unknown_schema"
	ReasonInvalid        Reason = "invalid_field"
	ReasonUnsafeName     Reason = "unsafe_name"
	ReasonIdentity       Reason = "identity_mismatch"
	ReasonConflict       Reason = "conflict"
	ReasonUnknownFormat  Reason = "unknown_format"
	ReasonSizeMismatch   Reason = "size_mismatch"
	ReasonDeliveryLimit  Reason = "delivery_limit"
	ReasonBrokerRejected Reason = "broker_rejected"
	// ReasonLegacyUser: a legacy message from a broker user not listed in
	// legacy.users (or without a user_id).
	ReasonLegacyUser Reason = "legacy_user"
)

// PoisonError is a message that cannot be stored, with the reason it is
// dead-lettered.
type PoisonError struct {
	Reason Reason
	Err    error
}

func (e *PoisonError) Error() string { return fmt.Sprintf("%s: %v", e.Reason, e.Err) }

// Unwrap returns the cause.
func (e *PoisonError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrPoison) true.
func (e *PoisonError) Is(target error) bool { return target == ErrPoison }

func poison(r Reason, err error) error { return &PoisonError{Reason: r, Err: err} }

// FieldError is a configuration error naming the YAML field, e.g.
// "s3.bucket: must be set".
type FieldError = config.FieldError

// StartupError is a failed start-up check: what is missing and how to fix
// it.
type StartupError struct {
	Check string
	Err   error
	Fix   string
	// Transient is set when the check may pass by itself (S3 did not
	// answer): Run waits for it, not ready, instead of exiting.
	Transient bool
}

func (e *StartupError) Error() string {
	return fmt.Sprintf("%s: %v (fix: %s)", e.Check, e.Err, e.Fix)
}

// Unwrap returns the cause.
func (e *StartupError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrStartup) true.
func (e *StartupError) Is(target error) bool { return target == ErrStartup }
