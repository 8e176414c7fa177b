package uplink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// session is one AMQP connection with one confirm-mode channel, and the pump
// goroutine that drains every notification channel registered on them.
//
// Life cycle: dial registers NotifyClose (connection and channel),
// NotifyBlocked, NotifyPublish and NotifyReturn before anything is published
// and starts pump. pump reads all five until the library closes them, so
// the library's reader goroutine never blocks on a send to us (the deadlock
// of amqp091-go issues #21 and #122). A session dies once (kill): the raw
// socket is closed first, which unblocks a publisher stuck in a socket write
// (the library's shutdown waits for the channel mutex that such a writer
// holds), then every unconfirmed flight is resolved Lost. A dead session is
// never reused; the supervisor dials a new one.
type session struct {
	p *Publisher

	conn *amqp.Connection
	ch   *amqp.Channel

	rawMu sync.Mutex
	raw   net.Conn // the TCP socket under TLS and AMQP

	confirms  chan amqp.Confirmation
	returns   chan amqp.Return
	blocks    chan amqp.Blocking
	connClose chan *amqp.Error
	chanClose chan *amqp.Error

	dead     chan struct{}
	killOnce sync.Once
	deadErr  error // set before dead is closed
	pumpDone chan struct{}

	writer atomic.Pointer[writeToken] // the Publish call in a socket write, if any

	sideMu sync.Mutex   // serializes Send's writes
	side   *sideChannel // Send's channel, nil until first used (see side.go)

	mu        sync.Mutex
	pending   map[uint64]*flight // by delivery tag
	byID      map[string]*flight // unconfirmed, by message id, for returns
	lastTag   uint64
	acks      int // confirms that were acks
	blocked   bool
	closing   bool // no new publishes: the session is being shut down
	blockedAt time.Time
	unblocked chan struct{} // closed when the block lifts
	changed   chan struct{} // if non-nil, closed (and reset) when a flight resolves
}

// writeToken identifies one Publish call while it writes.
type writeToken struct{ _ byte }

// flight is one published message waiting for its confirm.
type flight struct {
	tag      uint64
	id       string
	sent     time.Time
	deadline time.Time
	returned *amqp.Return
	dc       *amqp.DeferredConfirmation // set once written; s.mu
	outcome  Outcome
	err      error
	at       time.Time     // when resolved
	done     chan struct{} // closed when outcome is set
}

func newSession(p *Publisher) *session {
	s := &session{
		p:         p,
		dead:      make(chan struct{}),
		pumpDone:  make(chan struct{}),
		pending:   map[uint64]*flight{},
		byID:      map[string]*flight{},
		unblocked: make(chan struct{}),
	}
	close(s.unblocked)
	return s
}

// dial connects to the broker at opts.URLs[i], opens the confirm-mode
// channel, registers the notification channels and starts the pump.
// Cancelling ctx aborts a dial in progress.
func (p *Publisher) dial(ctx context.Context, i int) (*session, error) {
	s := newSession(p)
	o := p.opts
	dialer := func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: o.DialTimeout}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// Covers the TLS and AMQP handshakes; the library clears it after.
		if err := c.SetDeadline(time.Now().Add(o.DialTimeout)); err != nil {
			c.Close()
			return nil, err
		}
		s.rawMu.Lock()
		s.raw = c
		s.rawMu.Unlock()
		return c, nil
	}
	props := amqp.NewConnectionProperties()
	if o.Name != "" {
		props.SetClientConnectionName(o.Name)
	}
	stop := context.AfterFunc(ctx, s.closeRaw)
	defer stop()

	conn, err := amqp.DialConfig(o.URLs[i], amqp.Config{
		Heartbeat:       o.Heartbeat,
		TLSClientConfig: p.tls[i],
		Properties:      props,
		Dial:            dialer,
	})
	if err != nil {
		s.closeRaw()
		return nil, fmt.Errorf("dial: %w", err)
	}
	s.conn = conn
	fail := func(what string, err error) (*session, error) {
		s.closeRaw()
		_ = conn.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	s.connClose = conn.NotifyClose(make(chan *amqp.Error, 1))
	s.blocks = conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	ch, err := conn.Channel()
	if err != nil {
		_, err = fail("open channel", err)
		drainAll(s.connClose, s.blocks) // closed by the library's shutdown
		return nil, err
	}
	s.ch = ch
	s.chanClose = ch.NotifyClose(make(chan *amqp.Error, 1))
	s.confirms = ch.NotifyPublish(make(chan amqp.Confirmation, o.Window+1))
	s.returns = ch.NotifyReturn(make(chan amqp.Return, o.Window+1))
	// From here the pump owns the notification channels, even if the
	// set-up below fails.
	go s.pump()
	if err := ch.Confirm(false); err != nil {
		s.kill(fmt.Errorf("confirm mode: %w", err))
		<-s.pumpDone
		return nil, fmt.Errorf("confirm mode: %w", err)
	}
	if o.DeclareExchange {
		if err := ch.ExchangeDeclare(o.Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			s.kill(err)
			<-s.pumpDone
			return nil, fmt.Errorf("declare exchange %q: %w", o.Exchange, err)
		}
	}
	if ctx.Err() != nil {
		s.kill(ctx.Err())
		<-s.pumpDone
		return nil, ctx.Err()
	}
	return s, nil
}

// drainAll empties notification channels until the library closes them.
func drainAll(cc chan *amqp.Error, bc chan amqp.Blocking) {
	for range cc {
	}
	for range bc {
	}
}

func (s *session) closeRaw() {
	s.rawMu.Lock()
	if s.raw != nil {
		_ = s.raw.Close()
	}
	s.rawMu.Unlock()
}

// kill ends the session once: it closes the socket and resolves every
// unconfirmed flight as Lost with err.
func (s *session) kill(err error) {
	s.killOnce.Do(func() {
		s.deadErr = err
		close(s.dead)
		s.closeRaw()
		s.mu.Lock()
		for tag, f := range s.pending {
			s.resolve(f, Lost, fmt.Errorf("%w: %w", ErrConnectionLost, err))
			delete(s.pending, tag)
		}
		clear(s.byID)
		if s.blocked {
			s.unblock()
		}
		s.mu.Unlock()
	})
}

// resolve settles a flight; s.mu is held.
// frameMax is the frame size negotiated with the broker, 0 if unknown.
func (s *session) frameMax() int {
	if s.conn == nil {
		return 0
	}
	return s.conn.Config.FrameSize
}

func (s *session) resolve(f *flight, o Outcome, err error) {
	f.outcome, f.err, f.at = o, err, time.Now()
	close(f.done)
	if s.byID[f.id] == f {
		delete(s.byID, f.id)
	}
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
	s.p.metrics.inflight.Dec()
}

// unblock lifts a block; s.mu is held.
func (s *session) unblock() {
	s.blocked = false
	close(s.unblocked)
	now := time.Now()
	s.p.metrics.blockedSeconds.Add(now.Sub(s.blockedAt).Seconds())
	// Time spent blocked does not count against the confirm timeout.
	for _, f := range s.pending {
		if d := now.Add(s.p.opts.ConfirmTimeout); d.After(f.deadline) {
			f.deadline = d
		}
	}
}

// pump drains the notification channels until the library closes all of
// them, resolving flights and enforcing confirm deadlines.
func (s *session) pump() {
	defer close(s.pumpDone)
	confirms, returns, blocks, cc, chc := s.confirms, s.returns, s.blocks, s.connClose, s.chanClose
	tick := time.NewTicker(min(max(s.p.opts.ConfirmTimeout/10, 10*time.Millisecond), time.Second))
	defer tick.Stop()
	var grace <-chan time.Time // after death, how long to wait for the library
	dead := s.dead
	for confirms != nil || returns != nil || blocks != nil || cc != nil || chc != nil {
		select {
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				s.kill(s.closeReason(cc, chc))
				continue
			}
			// A basic.return precedes its basic.ack on the wire and the
			// library hands both over from one goroutine, so any return
			// for this message is already buffered: apply it first.
			returns = s.drainReturns(returns)
			if s.confirm(c) {
				s.kill(errNackedFromStart)
			}
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			s.returned(r)
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			s.block(b)
		case e, ok := <-cc:
			if !ok {
				cc = nil
				s.kill(s.closeReason(nil, chc))
				continue
			}
			returns = s.drainReturns(returns)
			confirms = s.drainConfirms(confirms)
			s.kill(fmt.Errorf("connection closed by %s: %w", peer(e), e))
		case e, ok := <-chc:
			if !ok {
				chc = nil
				s.kill(s.closeReason(cc, nil))
				continue
			}
			returns = s.drainReturns(returns)
			confirms = s.drainConfirms(confirms)
			s.kill(fmt.Errorf("channel closed by %s: %w", peer(e), e))
		case now := <-tick.C:
			s.checkDeadlines(now)
		case <-dead:
			dead = nil
			tick.Stop()
			grace = time.After(30 * time.Second)
		case <-grace:
			s.p.log.Warn("amqp library did not close its notification channels after the connection died", "component", "uplink")
			return
		}
	}
}

// closeReason looks for the error the library reports alongside a closing
// notification channel (the close listeners get it before the others are
// closed), so that State shows the broker's reason.
func (s *session) closeReason(cc, chc chan *amqp.Error) error {
	for _, c := range []struct {
		what string
		ch   chan *amqp.Error
	}{{"connection", cc}, {"channel", chc}} {
		if c.ch == nil {
			continue
		}
		select {
		case e, ok := <-c.ch:
			if ok && e != nil {
				return fmt.Errorf("%s closed by %s: %w", c.what, peer(e), e)
			}
		default:
		}
	}
	return errors.New("connection closed")
}

func peer(e *amqp.Error) string {
	if e != nil && e.Server {
		return "broker"
	}
	return "client"
}

func (s *session) drainReturns(returns chan amqp.Return) chan amqp.Return {
	for returns != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				return nil
			}
			s.returned(r)
		default:
			return returns
		}
	}
	return nil
}

func (s *session) drainConfirms(confirms chan amqp.Confirmation) chan amqp.Confirmation {
	for confirms != nil {
		select {
		case c, ok := <-confirms:
			if !ok {
				return nil
			}
			s.confirm(c)
		default:
			return confirms
		}
	}
	return nil
}

// errNackedFromStart retires a session whose channel nacked before it
// ever acked.
var errNackedFromStart = fmt.Errorf("%w: the broker refused the first message on this connection; dialling again, since RabbitMQ 3.10 can keep a quorum queue's lost leader in a channel opened during the queue's election and refuse everything on it", ErrNacked)

// confirm resolves the flight of one confirm. It reports whether the
// session should be retired: a nack before any ack on this channel. A
// queue that refuses messages (overflow reject-publish) nacks them on any
// channel; but on RabbitMQ 3.10 a channel whose first publish to a quorum
// queue comes while the queue elects a new leader can keep the lost leader
// and nack every message for as long as it lives (fixed in later versions
// by asking Ra for the leader). A fresh connection, after the backoff,
// gets a fresh channel.
func (s *session) confirm(c amqp.Confirmation) (retire bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.pending[c.DeliveryTag]
	if !ok {
		return false // resolved already (timed out, or the session was killed)
	}
	delete(s.pending, c.DeliveryTag)
	switch {
	case !c.Ack:
		s.resolve(f, Nacked, ErrNacked)
		return s.acks == 0
	case f.returned != nil:
		s.acks++
		s.resolve(f, Returned, fmt.Errorf("%w: %d %s", ErrReturned, f.returned.ReplyCode, f.returned.ReplyText))
	default:
		s.acks++
		s.resolve(f, Confirmed, nil)
	}
	return false
}

func (s *session) returned(r amqp.Return) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// At most one flight per message id is unconfirmed (see waitReady), so
	// the id names the returned message.
	if f, ok := s.byID[r.MessageId]; ok {
		f.returned = &r
	}
}

func (s *session) block(b amqp.Blocking) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.Active && !s.blocked {
		s.blocked = true
		s.blockedAt = time.Now()
		s.unblocked = make(chan struct{})
		s.p.metrics.blocked.Inc()
		s.p.setState(s, StateBlocked, fmt.Errorf("blocked by broker: %s", b.Reason))
		s.p.log.Warn("broker blocked publishing", "component", "uplink", "reason", b.Reason)
	} else if !b.Active && s.blocked {
		s.unblock()
		s.p.setState(s, StateConnected, nil)
		s.p.log.Info("broker unblocked publishing", "component", "uplink")
	}
}

// checkDeadlines times out flights past their confirm deadline and then
// drops the connection: a confirm that is that late means the link or the
// broker is stuck, and a fresh connection is the only way to learn the truth.
func (s *session) checkDeadlines(now time.Time) {
	s.mu.Lock()
	if s.blocked {
		s.mu.Unlock()
		return
	}
	n := 0
	for tag, f := range s.pending {
		if now.After(f.deadline) {
			delete(s.pending, tag)
			s.resolve(f, TimedOut, fmt.Errorf("%w after %s", ErrConfirmTimeout, s.p.opts.ConfirmTimeout))
			n++
		}
	}
	s.mu.Unlock()
	if n > 0 {
		s.kill(fmt.Errorf("%w: %d message(s) unconfirmed after %s", ErrConfirmTimeout, n, s.p.opts.ConfirmTimeout))
	}
}

// waitReady waits until a message with id may be published: the session is
// alive and unblocked, the window has room and no earlier message with the
// same id is unconfirmed.
func (s *session) waitReady(ctx context.Context, id string) error {
	for {
		s.mu.Lock()
		var wait, acked <-chan struct{}
		switch {
		case isClosed(s.dead):
			s.mu.Unlock()
			return s.lostErr()
		case s.closing:
			s.mu.Unlock()
			return fmt.Errorf("%w: publisher stopping", ErrNotConnected)
		case s.blocked:
			wait = s.unblocked
		default:
			if n, oldest := s.unacked(); n >= s.p.opts.Window {
				wait = s.changedChan()
				if oldest != nil {
					acked = oldest.dc.Done()
				}
			} else if f := s.byID[id]; f != nil {
				wait = f.done
			}
		}
		s.mu.Unlock()
		if wait == nil {
			return nil
		}
		select {
		case <-wait:
		case <-acked:
		case <-s.dead:
			return s.lostErr()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// unacked counts the pending flights the library has not yet seen a
// confirm for, and returns the oldest of them that has been written. The
// window is measured this way, as the bare library would, so that a free
// slot is used as soon as the library's reader sees the ack, without
// waiting for the pump to process it; s.mu is held.
func (s *session) unacked() (n int, oldest *flight) {
	for _, f := range s.pending {
		if f.dc != nil && isClosed(f.dc.Done()) {
			continue
		}
		n++
		if f.dc != nil && (oldest == nil || f.tag < oldest.tag) {
			oldest = f
		}
	}
	return n, oldest
}

// changedChan returns a channel closed when the next flight resolves; s.mu
// is held.
func (s *session) changedChan() chan struct{} {
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (s *session) lostErr() error {
	<-s.dead
	return fmt.Errorf("%w: %w", ErrConnectionLost, s.deadErr)
}

// publish registers a flight under the delivery tag the library will assign
// and writes the message. Registering first means the pump always finds the
// flight, however fast the confirm comes back.
//
// The caller's token is stored before ctx is checked, so a context that
// ends at any moment is seen either here or by Publish's AfterFunc, which
// then drops the connection to interrupt the write.
func (s *session) publish(ctx context.Context, tok *writeToken, exchange, key string, id string, msg amqp.Publishing) (*flight, error) {
	s.writer.Store(tok)
	defer s.writer.Store(nil)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if isClosed(s.dead) {
		s.mu.Unlock()
		return nil, s.lostErr()
	}
	if s.closing {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: publisher stopping", ErrNotConnected)
	}
	now := time.Now()
	f := &flight{tag: s.lastTag + 1, id: id, sent: now, deadline: now.Add(s.p.opts.ConfirmTimeout), done: make(chan struct{})}
	s.pending[f.tag] = f
	s.byID[id] = f
	s.lastTag = f.tag
	s.p.metrics.inflight.Inc()
	s.mu.Unlock()

	dc, err := s.ch.PublishWithDeferredConfirm(exchange, key, true, false, msg)
	if err == nil && (dc == nil || dc.DeliveryTag != f.tag) {
		err = fmt.Errorf("delivery tag out of step (want %d)", f.tag)
	}
	if err != nil {
		// The library failed to write, so the channel is unusable: the
		// flight and every other unconfirmed one are lost. If it was
		// closed under us, the pump is about to kill the session with the
		// broker's reason, which says more than ErrClosed.
		if errors.Is(err, amqp.ErrClosed) {
			t := time.NewTimer(time.Second)
			select {
			case <-s.dead:
			case <-t.C:
			}
			t.Stop()
		}
		s.kill(fmt.Errorf("publish: %w", err))
		return f, nil
	}
	s.mu.Lock()
	f.dc = dc
	s.mu.Unlock()
	s.p.metrics.publishedBytes.Add(float64(len(msg.Body)))
	return f, nil
}

// close shuts the session down: it waits up to timeout for outstanding
// confirms, closes the connection politely, kills the session and waits for
// the pump.
func (s *session) close(timeout time.Duration, reason error) {
	s.mu.Lock()
	s.closing = true
	if s.changed != nil { // wake publishers waiting for the window
		close(s.changed)
		s.changed = nil
	}
	s.mu.Unlock()
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		n, changed := len(s.pending), s.changedChan()
		s.mu.Unlock()
		if n == 0 || !time.Now().Before(deadline) {
			break
		}
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-changed:
		case <-s.dead:
		case <-t.C:
		}
		t.Stop()
	}
	if !isClosed(s.dead) && s.writer.Load() == nil {
		_ = s.conn.CloseDeadline(time.Now().Add(min(time.Second, s.p.opts.DialTimeout)))
	}
	s.kill(reason)
	<-s.pumpDone
}
