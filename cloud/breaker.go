package cloud

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// breaker decides whether a failed S3 write is the message's own failure or
// part of an S3 outage, and while S3 is out it keeps the consumer from
// taking messages, so that an outage of any length costs no message a
// delivery.
//
// States, in the order they follow each other:
//
//   - closed: writes go ahead.
//   - suspect: a write failed for a transient reason; one probe (a cheap
//     request, see Service.probe) is under way and every write that fails
//     meanwhile waits for its verdict.
//   - closed again, if the probe succeeded: S3 answers, so the failures
//     were the messages' own and count against their retry budget
//     (s3.retry_max_elapsed), after which each is returned to the queue
//     and its delivery count grows.
//   - open, if the probe failed: an outage. The failures are nobody's own;
//     the session stops consuming and parks the messages it holds, and the
//     breaker probes under jittered exponential backoff (s3.retry_min to
//     s3.retry_max) until S3 answers, then closes and consumption resumes.
//
// One goroutine (run) makes every probe; writers and the session only wait.
type breaker struct {
	probe    func(context.Context) error
	min, max time.Duration
	log      *slog.Logger
	// onChange is called (without the lock) when the breaker opens or
	// closes.
	onChange func(open bool, err error)

	mu      sync.Mutex
	cur     *episode      // nil while closed
	changed chan struct{} // closed at the next change of open
	kick    chan struct{}
	since   time.Time // when the breaker opened
	lastErr error     // the last failed probe's error
}

// episode is one suspicion: from the first failed write to the probe that
// succeeds.
type episode struct {
	verdict chan struct{} // closed when the first probe has answered
	outage  bool          // set before verdict is closed
	open    bool          // between the first failed probe and the success
}

func newBreaker(probe func(context.Context) error, min, max time.Duration, log *slog.Logger, onChange func(bool, error)) *breaker {
	return &breaker{probe: probe, min: min, max: max, log: log, onChange: onChange,
		changed: make(chan struct{}), kick: make(chan struct{}, 1)}
}

// failed reports a transient write failure and waits for the verdict of the
// probe it triggers (or joins): outage true means S3 is out and the
// breaker is open; false means S3 answers, so the failure was the
// writer's own. It returns ctx's error if ctx ends first.
func (b *breaker) failed(ctx context.Context) (outage bool, err error) {
	b.mu.Lock()
	e := b.cur
	if e == nil {
		e = &episode{verdict: make(chan struct{})}
		b.cur = e
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	b.mu.Unlock()
	select {
	case <-e.verdict:
		return e.outage, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// state reports whether the breaker is open, and a channel closed at its
// next change.
func (b *breaker) state() (open bool, changed <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cur != nil && b.cur.open, b.changed
}

// status is the open state, since when, and the last probe's error.
func (b *breaker) status() (open bool, since time.Time, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cur != nil && b.cur.open, b.since, b.lastErr
}

// wait blocks while the breaker is open.
func (b *breaker) wait(ctx context.Context) error {
	for {
		open, changed := b.state()
		if !open {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// run makes the probes until ctx ends: it is the breaker's only goroutine.
func (b *breaker) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.kick:
		}
		b.episode(ctx)
	}
}

// episode probes until S3 answers (or ctx ends), opening the breaker if the
// first probe fails.
func (b *breaker) episode(ctx context.Context) {
	delay := b.min
	for attempt := 0; ; attempt++ {
		err := b.probe(ctx)
		if ctx.Err() != nil {
			return // waiters give up with their own contexts
		}
		b.mu.Lock()
		e := b.cur
		if err == nil {
			wasOpen := e.open
			if attempt == 0 {
				close(e.verdict) // outage false: the writers' own failures
			}
			b.cur, b.lastErr = nil, nil
			if wasOpen {
				close(b.changed)
				b.changed = make(chan struct{})
			}
			since := b.since
			b.mu.Unlock()
			if wasOpen {
				b.log.Info("S3 answers again; consuming", "outage", time.Since(since).Round(time.Millisecond), "probes", attempt+1)
				b.onChange(false, nil)
			}
			return
		}
		b.lastErr = err
		opened := false
		if attempt == 0 {
			e.outage, e.open = true, true
			b.since = time.Now()
			close(e.verdict)
			close(b.changed)
			b.changed = make(chan struct{})
			opened = true
		}
		b.mu.Unlock()
		if opened {
			// Logged once per outage.
			b.log.Error("S3 writes and probes failing; consumption paused, held messages parked in the queue until S3 answers", "err", err)
			b.onChange(true, err)
		}
		d := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		delay = min(delay*2, b.max)
	}
}
