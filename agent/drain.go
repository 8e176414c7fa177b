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
	Ack(ids ...uint64) error
	Release(ids ...uint64)
	Wait(ctx context.Context) error
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
	// bad holds ids of records whose metadata cannot be decoded. They stay
	// in flight (so Next skips them) until restart; they are never deleted.
	badMu sync.Mutex
	bad   map[uint64]bool
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
	acked := make(chan struct{})
	go func() { defer close(acked); d.acker(confirmed) }()
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
	<-acked
	return first
}

// acker removes confirmed records from the spool. Whatever the lanes
// confirmed while the previous Ack was being committed goes into the next
// one, so one fsync covers several batches: with an Ack per batch, a 5 ms
// fsync per 64 frames capped the drain of 1 KB frames below bare
// amqp091-go's rate. A failed Ack leaves its records stored and in flight;
// after a restart they are published again (a duplicate the cloud
// recognises by id).
func (d *drain) acker(confirmed <-chan []uint64) {
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
		d.ack(ids)
	}
}

// ack removes ids, confirmed by the broker, from the spool and counts them.
func (d *drain) ack(ids []uint64) {
	if err := d.q.Ack(ids...); err != nil {
		d.log.Error("ack confirmed frames; they stay in the spool and are sent again after a restart", "n", len(ids), "err", err)
		return
	}
	d.m.Published.Add(float64(len(ids)))
	d.status.Acked(len(ids))
}

// markBad records id as unpublishable and reports whether it was new.
func (d *drain) markBad(id uint64) bool {
	d.badMu.Lock()
	defer d.badMu.Unlock()
	if d.bad == nil {
		d.bad = map[uint64]bool{}
	}
	if d.bad[id] {
		return false
	}
	d.bad[id] = true
	return true
}

// lane is one drain loop: Wait, Next, publish, hand the confirmed records
// to the acker, back off on failure.
func (d *drain) lane(stop, hard context.Context, confirmed chan<- []uint64) error {
	wait := d.backoffMin
	for {
		if err := d.q.Wait(stop); err != nil {
			if stop.Err() != nil || errors.Is(err, spool.ErrClosed) {
				return nil
			}
			return fmt.Errorf("drain: %w", err)
		}
		recs, err := d.q.Next(d.batch)
		if err != nil {
			if errors.Is(err, spool.ErrClosed) {
				return nil
			}
			return fmt.Errorf("drain: %w", err)
		}
		if len(recs) == 0 {
			continue
		}
		acks, ok, err := d.publish(hard, recs)
		if len(acks) > 0 {
			confirmed <- acks
		}
		if stop.Err() != nil {
			return nil
		}
		switch {
		case ok:
			wait = d.backoffMin
			continue
		case errors.Is(err, uplink.ErrNotConnected):
			// The link is down: frames wait; check again after a pause.
		default:
			// Nacked, returned, timed out or lost: retry after a pause so a
			// broker that refuses every frame is not hammered.
		}
		select {
		case <-time.After(wait):
		case <-stop.Done():
			return nil
		}
		wait = min(wait*2, d.backoffMax)
	}
}

// publish sends one batch, releases the records the broker did not
// confirm and returns those it confirmed, still in flight, for the acker.
// It reports whether every record was confirmed.
func (d *drain) publish(ctx context.Context, recs []spool.Record) (confirmed []uint64, ok bool, err error) {
	msgs := make([]wire.Message, 0, len(recs))
	ids := make([]uint64, 0, len(recs))
	for i := range recs {
		msg, err := d.message(&recs[i])
		if err != nil {
			if d.markBad(recs[i].ID) {
				d.log.Error("spooled frame cannot be published; kept in the spool", "spool_id", recs[i].ID, "err", err)
			}
			continue
		}
		msgs = append(msgs, msg)
		ids = append(ids, recs[i].ID)
	}
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
			// Can never be published: set aside (kept in flight, so in the
			// spool, until restart), never deleted.
			if d.markBad(id) {
				d.m.PublishFailed.WithLabelValues("invalid").Inc()
				d.log.Error("spooled frame cannot be encoded for the broker; kept in the spool", "spool_id", id, "err", res[i].Err)
			}
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
	d.q.Release(rel...)
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
		Source: wire.CleanName(srcName), SourceType: srcType,
		Agent: d.agent, User: d.user,
	})
}
