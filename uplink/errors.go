package uplink

import "errors"

// Sentinel errors. Callers test them with errors.Is; the returned errors wrap
// them with detail.
var (
	// ErrNotConnected means the link to the broker is down or not yet up:
	// nothing was published and the caller should back off and retry later.
	ErrNotConnected = errors.New("uplink: not connected")
	// ErrConnectionLost means the connection or channel closed while a batch
	// was being published; messages without a confirm are reported Lost.
	ErrConnectionLost = errors.New("uplink: connection lost")
	// ErrConfirmTimeout means the broker did not confirm a message within
	// Options.ConfirmTimeout; the publisher then drops the connection.
	ErrConfirmTimeout = errors.New("uplink: confirm timeout")
	// ErrNacked means the broker refused a message (basic.nack), for example
	// because a queue with overflow=reject-publish is full.
	ErrNacked = errors.New("uplink: nacked by broker")
	// ErrReturned means the broker could not route a mandatory message to
	// any queue (basic.return).
	ErrReturned = errors.New("uplink: returned unroutable")
	// ErrInvalidMessage means a message cannot be encoded as AMQP (a header
	// value of an unsupported type, a property longer than 255 bytes). It
	// was not published, and retrying will not help: the caller should set
	// it aside.
	ErrInvalidMessage = errors.New("uplink: invalid message")
	// ErrRunning means Run was called while another Run of the same
	// Publisher is active.
	ErrRunning = errors.New("uplink: already running")
	// ErrInvalidOptions means Options failed validation; the wrapping error
	// names the field.
	ErrInvalidOptions = errors.New("uplink: invalid options")
)
