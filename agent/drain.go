package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/forestwatch/forest/agent/status"
	"github.com/forestwatch/forest/spool"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// publisher is what the drain needs from the uplink: *uplink.Publisher.
type publisher interface {
	Publish(ctx context.Context, msgs []wire.Message) ([]uplink.Result, error)
}

// drainQueue is what the drain needs from the spool: *spool.Queue.
type drainQueue interface {
	Next(n int) ([]spool.Record, error)
	AckCount(ids ...uint64) (int, error)
	Release(ids ...uint64)
	Wait(ctx context.Context) error
	Quarantine(code, detail string, ids ...uint64) error
}

// drain moves frames from the spool to the broker: Next(batch), build the
// wire messages, Publish, Ack exactly the records the broker confirmed,
// Release the rest. It never removes a frame without a confirm. While the
// link is down it backs off (from backoffMin doubling to backoffMax) and
// the frames stay in the spool.
//
// The Acks run in the background (see acker): a lane hands its confirmed
// records over and takes the next batch at once; they stay in flight, so
// no lane takes them again, until the Ack has removed them.
type drain struct {
	q          drainQueue
	pub        publisher
	batch      int
	agent      string // app_id
	user       string // AMQP user_id, "" to leave unset
	m          *status.Metrics
	status     *status.Tracker
	log        *slog.Logger
	backoffMin time.Duration
	backoffMax time.Duration
	// budget, when set, holds the drain to uplink.daily_bytes and
	// uplink.windows; size says what a message costs on the link. pick
	// makes a lane's Next and its spending one step, and a failed send's
	// refund and release another, so that the lanes spend the budget in
	// the spool's order.
	budget *budget
	size   func(*wire.Message) int64
	pick   sync.Mutex
}

// lanes is how many batches the drain keeps under way at once. While one
// batch waits for its last confirms, the next one is already being
// published, so the confirm window does not run dry at every batch
// boundary (BenchmarkDrainRatio: about 0.6× bare amqp091-go with one lane).
// Batches of two lanes may interleave on the wire; each batch keeps its
// order.
const lanes = 2

// Run drains until stop is done. The batches in progress when stop ends are
// finished — their confirms awaited — unless hard ends first; frames without
// a confirm are released and stay in the spool, confirmed ones are acked
// before Run returns. Run returns nil on stop.
func (d *drain) Run(stop, hard context.Context) error {
	ctx, cancel := context.WithCancel(stop)
	defer cancel()
	confirmed := make(chan []uint64, lanes)
	acked := make(chan error, 1)
	go func() { acked <- d.acker(hard, confirmed, cancel) }()
	errs := make(chan error, lanes)
	for range lanes {
		go func() {
			err := d.lane(ctx, hard, confirmed)
			if err != nil {
				cancel() // the other lanes stop too
			}
			errs <- err
		}()
	}
	var first error
	for range lanes {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	close(confirmed)
	if err := <-acked; err != nil && first == nil {
		first = err
	}
	return first
}

// acker removes confirmed records from the spool. Whatever the lanes
// confirmed while the previous Ack was being committed goes into the next
// one, so one fsync covers several batches: with an Ack per batch, a 5 ms
// fsync per 64 frames capped the drain of 1 KB frames below bare
// amqp091-go's rate. A failed Ack is retried (its records stay stored and
// in flight meanwhile) until hard ends; a broken spool stops the drain
// (stop is called) and is returned.
func (d *drain) acker(hard context.Context, confirmed <-chan []uint64, stop func()) error {
	var failed error
	for ids := range confirmed {
	more:
		for {
			select {
			case next, ok := <-confirmed:
				if !ok {
					break more
				}
				ids = append(ids, next...)
			default:
				break more
			}
		}
		if failed != nil {
			continue // the spool is gone: nothing more can be acknowledged
		}
		if err := d.ack(hard, ids); err != nil {
			failed = err
			stop()
		}
	}
	return failed
}

// ack removes ids, confirmed by the broker, from the spool and counts those
// it removed (a record evicted while in flight was counted as evicted). A
// failed Ack is retried with backoff until hard ends; its records stay in
// flight meanwhile, and after a restart they are sent again (a duplicate
// the cloud recognises by id). It returns an error only when the spool is
// broken or closed.
func (d *drain) ack(hard context.Context, ids []uint64) error {
	wait := d.backoffMin
	for {
		n, err := d.q.AckCount(ids...)
		if err == nil {
			d.m.Published.Add(float64(n))
			d.status.Acked(n)
			return nil
		}
		if errors.Is(err, spool.ErrBroken) || errors.Is(err, spool.ErrClosed) {
			return fmt.Errorf("drain: %w", err)
		}
		d.log.Error("ack confirmed frames; retrying", "n", len(ids), "err", err, "retry_in", wait)
		select {
		case <-time.After(wait):
		case <-hard.Done():
			d.log.Error("ack confirmed frames: giving up at shutdown; they are sent again after the restart", "n", len(ids))
			return nil
		}
		wait = min(2*wait, d.backoffMax)
	}
}

// quarantine sets records that can never be published aside in the spool
// with the reason, counted; they are never deleted unseen.
func (d *drain) quarantine(code string, cause error, ids ...uint64) {
	d.log.Error("spooled frame can never be published; quarantined in the spool", "reason", code, "spool_ids", ids, "err", cause)
	if err := d.q.Quarantine(code, cause.Error(), ids...); err != nil {
		d.log.Error("quarantine unpublishable frames; they stay in flight until a restart", "spool_ids", ids, "err", err)
	}
}

// slowWait is how long frames may wait for the broker's confirms before
// the drain logs the wait (it always logs a wait that ends failed
// attempts).
const slowWait = time.Second

// lane is one drain loop: Wait, Next, publish, hand the confirmed records
// to the acker, back off on failure.
//
// It measures how long frames wait for the broker: from the first attempt
// of a run of failed ones (or of the batch itself, when nothing failed
// before it) to the confirms that end it (forest_agent_publish_wait_seconds;
// logged when attempts had failed or the wait reached slowWait, as when a
// quorum queue elects a new leader).
func (d *drain) lane(stop, hard context.Context, confirmed chan<- []uint64) error {
	wait := d.backoffMin
	var failingSince time.Time // first attempt since the last full success
	for {
		if err := d.q.Wait(stop); err != nil {
			if stop.Err() != nil || errors.Is(err, spool.ErrClosed) {
				return nil
			}
			return fmt.Errorf("drain: %w", err)
		}
		if d.budget != nil {
			if err := d.budget.wait(stop); err != nil {
				return nil
			}
		}
		msgs, ids, err := d.next()
		if err != nil {
			if errors.Is(err, spool.ErrClosed) || stop.Err() != nil {
				return nil
			}
			if !errors.Is(err, errBudget) {
				return fmt.Errorf("drain: %w", err)
			}
			d.log.Error("link budget state not saved; frames wait", "err", err)
		}
		if len(msgs) == 0 && err == nil {
			continue
		}
		t0 := time.Now()
		var acks []uint64
		ok := false
		if err == nil {
			acks, ok, err = d.send(hard, msgs, ids)
		}
		if len(acks) > 0 {
			confirmed <- acks
			from := t0
			if !failingSince.IsZero() {
				from = failingSince
			}
			waited := time.Since(from)
			d.m.PublishWait.Observe(waited.Seconds())
			if !failingSince.IsZero() || waited >= slowWait {
				d.log.Info("frames waited for the broker", "n", len(acks), "waited_seconds", waited.Seconds(),
					"since", from.UTC().Format(time.RFC3339Nano), "after_failures", !failingSince.IsZero())
			}
		}
		switch {
		case ok:
			failingSince = time.Time{}
		case len(acks) > 0:
			failingSince = t0 // the rest of this batch waits on
		case failingSince.IsZero():
			failingSince = t0
		}
		if stop.Err() != nil {
			return nil
		}
		var up <-chan struct{}
		switch {
		case ok:
			wait = d.backoffMin
			continue
		case errors.Is(err, uplink.ErrNotConnected):
			// The link is down: frames wait until the publisher is
			// connected again (to the next node of a cluster, say), or
			// until a pause has passed.
			if c, ok := d.pub.(interface{ Connected() <-chan struct{} }); ok {
				up = c.Connected()
			}
		default:
			// Nacked, returned, timed out or lost: retry after a pause so a
			// broker that refuses every frame is not hammered (a lost
			// connection shows as not connected on the next try).
		}
		select {
		case <-time.After(wait):
		case <-up:
		case <-stop.Done():
			return nil
		}
		wait = min(wait*2, d.backoffMax)
	}
}

// errBudget marks a failure to save the link budget's state.
var errBudget = errors.New("link budget")

// next waits for the link budget (when set), takes the next batch from
// the spool and builds its messages. With a budget it keeps only the
// prefix that the budget affords, spends it and releases the rest.
func (d *drain) next() ([]wire.Message, []uint64, error) {
	if d.budget == nil {
		recs, err := d.q.Next(d.batch)
		if err != nil {
			return nil, nil, err
		}
		msgs, ids := d.build(recs)
		return msgs, ids, nil
	}
	d.pick.Lock()
	defer d.pick.Unlock()
	recs, err := d.q.Next(d.batch)
	if err != nil {
		return nil, nil, err
	}
	msgs, ids := d.build(recs)
	sizes := make([]int64, len(msgs))
	for i := range msgs {
		sizes[i] = d.size(&msgs[i])
	}
	n, err := d.budget.take(sizes)
	d.q.Release(ids[n:]...)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errBudget, err)
	}
	return msgs[:n], ids[:n], nil
}

// publish builds and sends one batch (see send).
func (d *drain) publish(ctx context.Context, recs []spool.Record) (confirmed []uint64, ok bool, err error) {
	msgs, ids := d.build(recs)
	return d.send(ctx, msgs, ids)
}

// build makes the messages of recs. A record whose message cannot be
// built is quarantined.
func (d *drain) build(recs []spool.Record) ([]wire.Message, []uint64) {
	msgs := make([]wire.Message, 0, len(recs))
	ids := make([]uint64, 0, len(recs))
	for i := range recs {
		msg, err := d.message(&recs[i])
		if err != nil {
			d.quarantine("undecodable_meta", err, recs[i].ID)
			continue
		}
		msgs = append(msgs, msg)
		ids = append(ids, recs[i].ID)
	}
	return msgs, ids
}

// send publishes one batch, releases the records the broker did not
// confirm and returns those it confirmed, still in flight, for the acker.
// It reports whether every record was confirmed.
func (d *drain) send(ctx context.Context, msgs []wire.Message, ids []uint64) (confirmed []uint64, ok bool, err error) {
	if len(msgs) == 0 {
		return nil, true, nil
	}
	t0 := time.Now()
	res, err := d.pub.Publish(ctx, msgs)
	var rel []uint64
	var firstErr error
	for i, id := range ids {
		if i < len(res) && res[i].Outcome == uplink.Confirmed {
			confirmed = append(confirmed, id)
			continue
		}
		if i < len(res) && errors.Is(res[i].Err, uplink.ErrInvalidMessage) {
			// The broker would refuse it every time (over frame_max or
			// max_message_size): set aside, so it never blocks the queue
			// head, and never deleted unseen.
			d.m.PublishFailed.WithLabelValues("invalid").Inc()
			d.quarantine("undeliverable", res[i].Err, id)
			continue
		}
		rel = append(rel, id)
		if i < len(res) {
			reason := res[i].Outcome.String()
			if !errors.Is(res[i].Err, uplink.ErrNotConnected) {
				d.m.PublishFailed.WithLabelValues(reason).Inc()
			}
			if firstErr == nil && res[i].Err != nil {
				firstErr = res[i].Err
			}
		}
	}
	if len(confirmed) > 0 {
		d.m.PublishSeconds.Observe(time.Since(t0).Seconds())
	}
	if d.budget != nil {
		// The refund of unsent frames and their release are one step under
		// pick: were the budget given back first, the other lane could
		// spend it on the frames after these before they are free again.
		// Without a budget no lock: this is every batch's path.
		d.pick.Lock()
		d.account(msgs, res)
		d.q.Release(rel...)
		d.pick.Unlock()
	} else {
		d.q.Release(rel...)
	}
	if err == nil {
		err = firstErr
	}
	if len(rel) > 0 {
		if err == nil {
			err = errors.New("frames not confirmed")
		}
		if !errors.Is(err, uplink.ErrNotConnected) {
			d.status.PublishFailed(err)
			d.log.Warn("frames not confirmed, kept for a retry", "n", len(rel), "err", err)
		}
		return confirmed, false, err
	}
	return confirmed, true, nil
}

// account counts the bytes a batch put on the link and gives the budget
// back what messages that never reached the connection (Unsent: the link
// was down) were charged.
func (d *drain) account(msgs []wire.Message, res []uplink.Result) {
	var n, sent int64
	for i := range msgs {
		if i >= len(res) || res[i].Outcome == uplink.Unsent {
			n += d.size(&msgs[i])
		} else {
			sent += d.size(&msgs[i])
		}
	}
	d.budget.sent.Add(float64(sent))
	if n == 0 {
		return
	}
	if err := d.budget.refund(n); err != nil {
		d.log.Warn("link budget refund of unsent frames not saved; they stay counted", "bytes", n, "err", err)
	}
}

// message builds the wire message of one spooled record.
func (d *drain) message(r *spool.Record) (wire.Message, error) {
	var m Meta
	if err := json.Unmarshal(r.Meta, &m); err != nil {
		return wire.Message{}, fmt.Errorf("decode frame meta: %w", err)
	}
	if m.V != 1 && m.V != metaVersion {
		return wire.Message{}, fmt.Errorf("frame meta version %d not understood", m.V)
	}
	seq := m.seq(r.ID)
	srcType, srcName, _ := strings.Cut(m.Source, ":")
	return wire.Encode(&wire.Frame{
		ID: wire.FrameID(m.Device, seq), Device: m.Device, Seq: seq, Captured: m.Captured,
		ContentType: m.ContentType, Image: r.Image, ImageSHA256: m.SHA256, Width: m.Width, Height: m.Height,
		Coverage: m.Coverage, Model: m.Model, Mask: r.Mask, GPS: m.GPS, Camera: m.Camera,
		Source: wire.CleanName(srcName), SourceType: srcType, ClockUnsynced: m.ClockUnsynced,
		Agent: d.agent, User: d.user,
	})
}
