package uplink

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/wire"
)

// ErrRefused means the broker refused a message sent with Send: it closed
// the side channel (for example ACCESS_REFUSED when the user may not write
// to the routing key) or nacked the message. The connection and the frames
// it carries are unaffected.
var ErrRefused = errors.New("uplink: refused by broker")

// Send publishes one disposable message, such as a status report, with
// routing key key on a channel of its own beside the frames' confirm
// channel. It never waits for Publish: not for its batch being written, its
// confirm window nor the rate limit; on the wire its frames interleave with
// those of a large frame being sent (the library writes frame by frame). It
// is sent transient and without the mandatory flag (unroutable means
// dropped), and Send waits for the broker's confirm until ctx ends.
//
// It returns ErrNotConnected while the link is down (nothing was sent),
// an error wrapping ErrRefused when the broker refused the message, or
// ErrConnectionLost. Nothing is retried: the caller's next message
// supersedes this one.
func (p *Publisher) Send(ctx context.Context, key string, m wire.Message) error {
	s := p.current()
	if s == nil {
		return ErrNotConnected
	}
	pub := publishing(&m)
	pub.DeliveryMode = amqp.Transient
	if err := validate(&pub, s.frameMax(), p.maxBody()); err != nil {
		return fmt.Errorf("%w: message %q: %w", ErrInvalidMessage, m.MessageID, err)
	}
	return s.send(ctx, p.opts.Exchange, key, pub)
}

// sideChannel is the session's channel for Send, opened on first use and
// again after the broker closed it.
type sideChannel struct {
	ch     *amqp.Channel
	closed chan *amqp.Error // buffered: the library sends once, then closes it
}

// send publishes msg on the side channel and waits for its confirm.
func (s *session) send(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	s.sideMu.Lock()
	if isClosed(s.dead) {
		s.sideMu.Unlock()
		return fmt.Errorf("%w: %w", ErrConnectionLost, s.deadErr)
	}
	if s.side != nil {
		select {
		case e := <-s.side.closed:
			s.side = nil
			if e != nil {
				s.p.log.Debug("side channel was closed by the broker; reopening", "component", "uplink", "err", e)
			}
		default:
		}
	}
	if s.side == nil {
		ch, err := s.conn.Channel()
		if err != nil {
			s.sideMu.Unlock()
			return fmt.Errorf("%w: open side channel: %w", ErrConnectionLost, err)
		}
		sc := &sideChannel{ch: ch, closed: ch.NotifyClose(make(chan *amqp.Error, 1))}
		if err := ch.Confirm(false); err != nil {
			s.sideMu.Unlock()
			_ = ch.Close()
			return fmt.Errorf("%w: side channel confirm mode: %w", ErrConnectionLost, err)
		}
		s.side = sc
	}
	sc := s.side
	dc, err := sc.ch.PublishWithDeferredConfirm(exchange, key, false, false, msg)
	s.sideMu.Unlock()
	if err != nil {
		return fmt.Errorf("%w: send: %w", ErrConnectionLost, err)
	}
	select {
	case <-dc.Done():
	case <-ctx.Done():
		return fmt.Errorf("send %s: no confirm: %w", msg.MessageId, ctx.Err())
	case <-s.dead:
		return fmt.Errorf("%w: %w", ErrConnectionLost, s.deadErr)
	}
	if dc.Acked() {
		return nil
	}
	// A nack, or the channel closed under the message: the close tells why.
	select {
	case e, ok := <-sc.closed:
		s.sideMu.Lock()
		if s.side == sc {
			s.side = nil
		}
		s.sideMu.Unlock()
		if ok && e != nil {
			return fmt.Errorf("%w: %s: %w", ErrRefused, msg.MessageId, e)
		}
		return fmt.Errorf("%w: %s: side channel closed", ErrConnectionLost, msg.MessageId)
	default:
		return fmt.Errorf("%w: %s: nacked", ErrRefused, msg.MessageId)
	}
}
