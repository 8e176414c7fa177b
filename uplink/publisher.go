// Package uplink publishes frames to RabbitMQ with publisher confirms over a
// link that comes and goes (LTE, satellite), and reports exactly which
// messages the broker confirmed.
//
// # Guarantee
//
// Publish reports a message Confirmed only when the broker acked it (basic.ack
// in confirm mode) and did not return it as unroutable: the message is then
// in every queue bound to the route (persisted for durable queues). Every
// other outcome (Nacked, Returned, TimedOut, Lost, Unsent) means the caller
// must keep the message and retry it later; a retry may produce a duplicate
// at the consumer, never a loss. Delivery is therefore at least once, and
// consumers deduplicate by message id.
//
// # Concurrency
//
// A Publisher is used by two parties: Run, the connection supervisor, which
// one goroutine calls once; and Publish and State, which any goroutine may
// call. Concurrent Publish calls send one after the other, but a call waits
// for its confirms without holding the next one back, so a caller may
// pipeline batches. Run dials, keeps at most
// one connection with one confirm-mode channel, and reconnects after any
// failure with jittered exponential backoff. Given the nodes of a RabbitMQ
// cluster (Options.URLs) it fails over between them: a node that refuses or
// loses the connection is followed at once by the next one, and the
// backoff applies only when every node failed in turn. Frames wait for a
// quorum queue's majority, not for one node: a message is confirmed once a
// majority of the queue's members hold it, so a confirmed message survives
// the loss of any minority of the nodes. Each connection has a pump
// goroutine that drains every notification channel the library offers
// (NotifyClose on connection and channel, NotifyPublish, NotifyReturn,
// NotifyBlocked), registered afresh on every connection before anything is
// published, so the library never blocks on them. Run waits for every
// goroutine it started before returning.
//
// While the link is down, Publish returns ErrNotConnected at once so that
// the caller (the agent's drain loop) can back off. While the broker blocks
// the connection (memory or disk alarm), Publish holds further messages back
// until the block lifts or its context ends.
//
// # Failures, and what each one becomes
//
//   - Broker unreachable or refusing (TCP, TLS verification, AMQP auth):
//     State is down with LastError; Run tries the next address, if any,
//     and retries with backoff once every address failed.
//   - A cluster node killed or shut down: its connections close (unconfirmed
//     messages become Lost) and Run connects to the next node. The loss of
//     a quorum queue's leader on another node only delays confirms until
//     the queue has elected a new one.
//   - Connection closed by the broker (restart, forced close) or reset by
//     the network: NotifyClose fires; unconfirmed messages become Lost.
//   - Link stalled or half-open (no bytes, no close): the heartbeat read
//     deadline (about three Heartbeat intervals) closes the connection; a
//     publish stuck in a socket write is released because the session
//     closes the socket itself before the library's shutdown needs the
//     channel lock that writer holds.
//   - Broker blocks publishing (connection.blocked): no new messages are
//     written; confirm deadlines are suspended until the block lifts.
//   - basic.nack: Nacked. basic.return then basic.ack: Returned. A
//     connection whose first confirm is a nack is dropped and dialled
//     again (after the backoff): on RabbitMQ 3.10 a channel opened while a
//     quorum queue elects a new leader can keep the lost leader and nack
//     everything for as long as it lives.
//   - No confirm within ConfirmTimeout on a live connection: TimedOut, and
//     the connection is dropped so that no stale state survives.
//   - Channel error (exchange missing without DeclareExchange, user_id not
//     matching the connection's user, no write permission): the broker
//     closes the channel, the connection is redialled and the messages are
//     Lost. Such an error repeats on every batch until configuration is
//     fixed; State().LastError shows it.
//   - A message the library cannot encode: ErrInvalidMessage for that
//     message only; the connection is kept.
//
// # Disposable messages
//
// Send publishes one message that may be lost (the agent's status report)
// on a second channel of the same connection, opened on first use: it
// never waits behind Publish's batches, window or rate limit, and a broker
// that refuses it (ACCESS_REFUSED on its routing key) closes only that
// channel, never the frames'.
//
// # The drain loop
//
// The caller (package agent) drains its spool: take a batch oldest first,
// Publish it, delete from the spool exactly the messages reported
// Confirmed, release the others for a later retry, set aside those whose
// Err wraps ErrInvalidMessage, and back off when Publish returns
// ErrNotConnected. Each Publish call ends by waiting for its last confirms,
// so a batch of at least twice Window keeps the link busy; or the drain
// may call Publish from two goroutines to overlap batches.
package uplink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/wire"
)

// Outcome is what became of one message given to Publish.
type Outcome int

// Outcomes of Publish. Only Confirmed means the broker has the message.
const (
	// Unsent: not published (link down or lost, broker blocked until the
	// context ended, or the context ended first).
	Unsent Outcome = iota
	// Confirmed: acked by the broker and not returned.
	Confirmed
	// Nacked: the broker refused it (for example a full queue with
	// overflow=reject-publish).
	Nacked
	// Returned: the broker could not route it to any queue.
	Returned
	// TimedOut: no confirm within Options.ConfirmTimeout.
	TimedOut
	// Lost: published, but the connection closed or the caller's context
	// ended before the confirm arrived. The broker may or may not have it.
	Lost
)

// String returns the outcome's name.
func (o Outcome) String() string {
	switch o {
	case Unsent:
		return "unsent"
	case Confirmed:
		return "confirmed"
	case Nacked:
		return "nacked"
	case Returned:
		return "returned"
	case TimedOut:
		return "timed_out"
	case Lost:
		return "lost"
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// label is the result label of forest_agent_uplink_publish_total.
func (o Outcome) label() string {
	switch o {
	case Confirmed:
		return "ack"
	case Nacked:
		return "nack"
	case Returned:
		return "returned"
	case TimedOut:
		return "timeout"
	}
	return "error"
}

// Result is the outcome of one message of a Publish batch.
type Result struct {
	// MessageID is the message's id, as given.
	MessageID string
	// Outcome says whether the broker has the message.
	Outcome Outcome
	// Err explains any outcome but Confirmed; it wraps ErrNacked,
	// ErrReturned, ErrConfirmTimeout, ErrConnectionLost, ErrNotConnected or
	// a context error.
	Err error
}

// LinkState is the state of the link to the broker.
type LinkState int

// Link states, as shown on the status page.
const (
	StateDown LinkState = iota
	StateConnecting
	StateConnected
	StateBlocked
)

// String returns the state's name.
func (s LinkState) String() string {
	switch s {
	case StateDown:
		return "down"
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateBlocked:
		return "blocked"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Status is a snapshot of the link for the status page.
type Status struct {
	// State is the link's state and Since when it entered it.
	State LinkState
	Since time.Time
	// LastError is the most recent connection error (nil if none yet).
	LastError error
	// Reconnects counts connections lost and dialled again.
	Reconnects int
	// Inflight is the number of published, unconfirmed messages.
	Inflight int
	// Broker is the address (URL without its password) of the current
	// connection, or of the last one tried while not connected.
	Broker string
}

// Publisher publishes batches of wire messages with publisher confirms. It
// is created by New and connected by Run.
type Publisher struct {
	opts    Options
	tls     []*tls.Config // by index in opts.URLs
	log     *slog.Logger
	metrics *metrics
	bucket  *bucket

	running atomic.Bool
	pubMu   sync.Mutex // serializes the sending part of Publish

	mu     sync.Mutex
	sess   *session // nil while not connected
	status Status
	up     chan struct{} // closed while connected (see Connected)

	next int // index in opts.URLs of the address Run dials first; Run's own
}

// New validates opts and returns a Publisher; it does not connect (Run
// does). It fails with ErrInvalidOptions naming the field, or if the TLS
// files cannot be loaded or the metrics cannot be registered.
func New(opts Options) (*Publisher, error) {
	o, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	tc, err := o.tlsConfig()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	p := &Publisher{
		opts:    o,
		tls:     tc,
		log:     o.Logger,
		metrics: m,
		bucket:  newBucket(o.RateLimit, o.Burst),
		status:  Status{State: StateDown, Since: time.Now()},
		next:    rand.IntN(len(o.URLs)),
		up:      make(chan struct{}),
	}
	m.setState(StateDown)
	return p, nil
}

// State returns a snapshot of the link.
func (p *Publisher) State() Status {
	p.mu.Lock()
	st, s := p.status, p.sess
	p.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		st.Inflight = len(s.pending)
		s.mu.Unlock()
	}
	return st
}

// setState records a state change. With s non-nil the change applies only
// while s is the current session (a dying session must not overwrite the
// state of its successor).
func (p *Publisher) setState(s *session, st LinkState, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s != nil && p.sess != s {
		return
	}
	if err != nil {
		p.status.LastError = err
	}
	if p.status.State != st {
		p.status.State, p.status.Since = st, time.Now()
		p.metrics.setState(st)
	}
}

// Connected returns a channel that is closed while a connection is up: at
// once if it is up now, otherwise when Run has connected (again). A drain
// that found the link down waits on it, so that it resumes as soon as a
// node takes the connection rather than at its next backoff.
func (p *Publisher) Connected() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up
}

func (p *Publisher) current() *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sess
}

// Run is the connection supervisor. It dials the broker, keeps the
// connection, and after any failure dials again, until ctx is cancelled.
// With several addresses (Options.URLs) it tries them in turn: a failed
// attempt moves on to the next address at once, a lost connection is
// replaced by one to the next address, and only when every address failed
// in a row does it wait, with jittered exponential backoff between
// Options.BackoffMin and BackoffMax. On cancellation it waits up to
// Options.CloseTimeout for outstanding confirms, closes the connection and
// returns nil once every goroutine it started has ended. Run may be called
// once at a time (else ErrRunning).
func (p *Publisher) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer p.running.Store(false)
	defer p.setState(nil, StateDown, nil)
	base := p.log.With("component", "uplink")
	bo := newBackoff(p.opts.BackoffMin, p.opts.BackoffMax)
	failed := 0 // attempts that failed in a row
	for {
		i := p.next
		addr := redact(p.opts.URLs[i])
		log := base.With("url", addr)
		p.mu.Lock()
		p.status.Broker = addr
		p.mu.Unlock()
		p.setState(nil, StateConnecting, nil)
		s, err := p.dial(ctx, i)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			p.setState(nil, StateDown, err)
			p.next = (i + 1) % len(p.opts.URLs)
			failed++
			if failed%len(p.opts.URLs) != 0 {
				log.Warn("connect failed; trying the next broker", "err", err, "next", redact(p.opts.URLs[p.next]))
				continue
			}
			d := bo.next()
			log.Warn("connect failed", "err", err, "retry_in", d)
			if !sleep(ctx, d) {
				return nil
			}
			continue
		}
		failed = 0
		started := time.Now()
		p.mu.Lock()
		p.sess = s
		close(p.up)
		p.mu.Unlock()
		p.setState(s, StateConnected, nil)
		log.Info("connected")

		select {
		case <-s.dead:
		case <-ctx.Done():
		}
		p.mu.Lock()
		p.sess = nil
		p.up = make(chan struct{})
		p.mu.Unlock()
		if ctx.Err() != nil {
			s.close(p.opts.CloseTimeout, errors.New("publisher stopped"))
			return nil
		}
		s.close(0, errors.New("connection lost"))
		p.mu.Lock()
		p.status.Reconnects++
		p.mu.Unlock()
		p.metrics.reconnects.Inc()
		p.setState(nil, StateDown, s.deadErr)
		if time.Since(started) > bo.ceiling() {
			bo.reset()
		}
		// The node may be gone: the next attempt goes to the next one.
		p.next = (i + 1) % len(p.opts.URLs)
		d := bo.next()
		log.Warn("connection lost", "err", s.deadErr, "retry_in", d, "next", redact(p.opts.URLs[p.next]))
		if !sleep(ctx, d) {
			return nil
		}
	}
}

// sleep waits d or until ctx is done, reporting whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// redact drops the password from an AMQP URL for logs.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable url)"
	}
	return u.Redacted()
}

// Publish publishes msgs, in order, to the exchange with the mandatory flag
// and waits for the broker's confirms. It keeps at most Options.Window
// messages unconfirmed, holds back while the broker blocks the connection,
// and publishes a message whose id equals an unconfirmed one's only after
// that one resolves (returns are matched by message id).
//
// The results correspond to msgs by index. Only messages reported Confirmed
// are safe to forget; a message whose Err wraps ErrInvalidMessage can never
// be published and should be set aside. The error is nil when every valid
// message was published
// and its confirm (ack or nack) or return was awaited; otherwise it says why
// the batch stopped: ErrNotConnected (nothing was published; back off),
// ErrConnectionLost, or the context's error. Results are valid either way.
func (p *Publisher) Publish(ctx context.Context, msgs []wire.Message) ([]Result, error) {
	res := make([]Result, len(msgs))
	for i := range msgs {
		res[i].MessageID = msgs[i].MessageID
	}
	p.pubMu.Lock()
	s := p.current()
	if s == nil {
		p.pubMu.Unlock()
		for i := range res {
			res[i].Err = ErrNotConnected
		}
		return res, ErrNotConnected
	}
	// A context that ends while a message is stuck in a socket write (a
	// stalled link) can only interrupt it by dropping the connection. The
	// token makes sure it is this call's write, not a later call's.
	tok := new(writeToken)
	stop := context.AfterFunc(ctx, func() {
		if s.writer.Load() == tok {
			s.kill(fmt.Errorf("publish abandoned: %w", context.Cause(ctx)))
		}
	})
	defer stop()

	flights := make([]*flight, len(msgs))
	var stopErr error
	for i := range msgs {
		m := &msgs[i]
		pub := publishing(m)
		if err := validate(&pub, s.frameMax(), p.maxBody()); err != nil {
			// Publishing it would fail inside the library and cost the
			// connection; report it and go on with the others.
			res[i].Err = fmt.Errorf("%w: message %q: %w", ErrInvalidMessage, m.MessageID, err)
			continue
		}
		if err := s.waitReady(ctx, m.MessageID); err != nil {
			stopErr = err
			break
		}
		if err := p.bucket.wait(ctx, len(m.Body)); err != nil {
			stopErr = err
			break
		}
		f, err := s.publish(ctx, tok, p.opts.Exchange, p.route(m), m.MessageID, pub)
		if err != nil {
			stopErr = err
			break
		}
		flights[i] = f
	}
	// Sending is done; later calls may send while this one waits.
	p.pubMu.Unlock()
	for i, f := range flights {
		if f == nil {
			if stopErr != nil && res[i].Err == nil {
				res[i].Err = stopErr
			}
			continue
		}
		select {
		case <-f.done:
			res[i].Outcome, res[i].Err = f.outcome, f.err
			p.metrics.byOutcome[f.outcome].Inc()
			if f.outcome == Confirmed {
				p.metrics.latency.Observe(f.at.Sub(f.sent).Seconds())
			} else if stopErr == nil && f.outcome == Lost {
				stopErr = f.err
			}
		case <-ctx.Done():
			res[i].Outcome, res[i].Err = Lost, ctx.Err()
			p.metrics.byOutcome[Lost].Inc()
			if stopErr == nil {
				stopErr = ctx.Err()
			}
		}
	}
	return res, stopErr
}

// route returns the routing key of m.
func (p *Publisher) route(m *wire.Message) string {
	if p.opts.Route != nil {
		return p.opts.Route(m)
	}
	if p.opts.RoutingKey != "" {
		return p.opts.RoutingKey
	}
	if d, ok := m.Headers[wire.HeaderDevice].(string); ok && d != "" {
		return "frames." + d
	}
	return "frames.unknown"
}

// validate checks what the library would refuse only while writing.
// validate refuses what the library cannot encode, or the broker would
// refuse by closing the connection or channel: a content header larger
// than the negotiated frame_max (a header must fit in one frame), or a body
// over maxBody.
func validate(m *amqp.Publishing, frameMax int, maxBody int64) error {
	props := [...]struct{ name, v string }{{"content_type", m.ContentType}, {"message_id", m.MessageId},
		{"app_id", m.AppId}, {"type", m.Type}, {"user_id", m.UserId}}
	size := 64 // frame header and end, class, weight, body size, flags, delivery mode, timestamp
	for _, p := range props {
		if len(p.v) > 255 {
			return fmt.Errorf("%s longer than 255 bytes", p.name)
		}
		size += 1 + len(p.v)
	}
	for k := range m.Headers {
		if len(k) > 255 {
			return fmt.Errorf("header name %.20q... longer than 255 bytes", k)
		}
	}
	if err := m.Headers.Validate(); err != nil {
		return fmt.Errorf("headers: %w", err)
	}
	size += tableSize(m.Headers)
	if frameMax > 0 && size > frameMax {
		return fmt.Errorf("content header of about %d bytes exceeds the broker's frame_max of %d", size, frameMax)
	}
	if maxBody > 0 && int64(len(m.Body)) > maxBody {
		return fmt.Errorf("body of %d bytes exceeds the broker's max_message_size of %d", len(m.Body), maxBody)
	}
	return nil
}

// tableSize is the encoded size of an AMQP field table, or a slight
// overestimate of it.
func tableSize(t amqp.Table) int {
	n := 4
	for k, v := range t {
		n += 1 + len(k) + 1
		switch v := v.(type) {
		case string:
			n += 4 + len(v)
		case []byte:
			n += 4 + len(v)
		case amqp.Table:
			n += tableSize(v)
		case []any:
			n += 4
			for _, e := range v {
				n += tableSize(amqp.Table{"": e}) - 4
			}
		default:
			n += 9 // numbers, booleans, times, decimals
		}
	}
	return n
}

// maxBody is the body bound of Options.MaxMessageBytes.
func (p *Publisher) maxBody() int64 {
	if p.opts.MaxMessageBytes > 0 {
		return p.opts.MaxMessageBytes
	}
	return 128 << 20
}

// publishing maps a wire message to the library's type: persistent, with
// every property the wire format defines.
func publishing(m *wire.Message) amqp.Publishing {
	return amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		ContentType:  m.ContentType,
		MessageId:    m.MessageID,
		Timestamp:    m.Timestamp,
		AppId:        m.AppID,
		Type:         m.Type,
		UserId:       m.UserID,
		Headers:      amqp.Table(m.Headers),
		Body:         m.Body,
	}
}
