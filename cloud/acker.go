package cloud

import (
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// acker settles the deliveries of one channel and coalesces their acks:
// the broker spends about as much CPU on an ack as on a delivery, so one
// ack with the multiple flag for a run of stored messages halves its work
// per message.
//
// A worker's ack is held until batch acks are held, or until no delivery
// is in progress any more; then one multiple-ack goes out for the held
// tags below the lowest unsettled one. Finished tags above a message still
// in progress are acked one by one when batch of them are held or delay
// after the first held ack, so that a slow message never holds up the acks
// of the ones after it. Nacks are sent at once.
// Every frame goes out under one lock, in order: a multiple-ack then never
// reaches the broker before a single ack or nack of a tag it covers, which
// would close the channel (unknown delivery tag) or ack a requeued message.
//
// A held ack is lost if the channel dies; the broker then redelivers the
// message, and the consumer finds its objects stored already (a counted
// duplicate). Delivery tags on a channel start at 1 and count up by one,
// which is what lets a run of settled tags be acked as one.
type acker struct {
	ch    settler
	batch int
	delay time.Duration
	log   *slog.Logger

	mu      sync.Mutex
	low     uint64            // every tag below low is settled
	started uint64            // highest tag a worker began
	settled map[uint64]bool   // tags >= low that are settled or held
	held    map[uint64]func() // held acks: tag → run once the ack is sent
	timer   *time.Timer
	closed  bool
}

// settler is the part of *amqp.Channel the acker uses.
type settler interface {
	Ack(tag uint64, multiple bool) error
	Nack(tag uint64, multiple, requeue bool) error
}

var _ settler = (*amqp.Channel)(nil)

// newAcker returns an acker for ch. batch 1 sends every ack at once.
func newAcker(ch settler, batch int, delay time.Duration, log *slog.Logger) *acker {
	return &acker{ch: ch, batch: max(1, batch), delay: delay, log: log, low: 1,
		settled: map[uint64]bool{}, held: map[uint64]func(){}}
}

// ackBatch is how many acks forest-cloud holds at most: half the prefetch
// left over when every worker has a message, so that held acks never stop
// the broker from sending the workers their next messages; at most 16.
func ackBatch(prefetch, workers int) int { return min(16, max(1, (prefetch-workers)/2)) }

// ackDelay is how long forest-cloud holds an ack at most.
const ackDelay = 50 * time.Millisecond

// begin records that a worker began tag. Until every begun tag is
// settled, acks are held; then they are sent at once, so that the last
// message of a burst is not acked delay late.
func (a *acker) begin(tag uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.started = max(a.started, tag)
}

// ack acknowledges tag, now or with the next flush; acked runs once the
// ack was written to the broker (not if the channel dies first).
func (a *acker) ack(tag uint64, acked func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.held[tag] = acked
	a.settle(tag)
	if len(a.held) > 0 && a.timer == nil {
		var t *time.Timer
		t = time.AfterFunc(a.delay, func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.timer != t || a.closed {
				return // stopped, or replaced after a flush
			}
			a.timer = nil
			a.flush(true)
		})
		a.timer = t
	}
}

// nack returns tag to the queue now.
func (a *acker) nack(tag uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.ch.Nack(tag, false, true)
	a.settle(tag)
	return err
}

// close sends the held acks and stops the timer; later calls do nothing.
func (a *acker) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.flush(true)
	a.closed = true
}

// settle marks tag settled, advances low over the settled run, and sends
// the held acks that are due: all of them when no begun tag is in progress
// any more, the run below low when batch are held.
func (a *acker) settle(tag uint64) {
	a.settled[tag] = true
	for a.settled[a.low] {
		delete(a.settled, a.low)
		a.low++
	}
	switch {
	case a.low > a.started:
		a.flush(true)
	case len(a.held) >= a.batch:
		a.flush(false)
	}
}

// flush sends the held acks below low as one multiple-ack, and the rest
// one by one if all is set or batch of them are still held (a.mu held). A
// failed send means the channel is closed: the broker redelivers what was
// not acked.
func (a *acker) flush(all bool) {
	if len(a.held) == 0 {
		return
	}
	// The multiple-ack names the highest held tag below low: the broker
	// refuses a tag that is not outstanding, even with multiple.
	var done []func()
	var upTo uint64
	for tag, acked := range a.held {
		if tag < a.low {
			upTo = max(upTo, tag)
			done = append(done, acked)
			delete(a.held, tag)
		}
	}
	fail := func(err error) {
		a.log.Warn("ack failed; the broker will redeliver", "err", err, "messages", len(done)+len(a.held))
	}
	if upTo > 0 {
		if err := a.ch.Ack(upTo, true); err != nil {
			fail(err)
			return
		}
	}
	if all || len(a.held) >= a.batch {
		for tag, acked := range a.held {
			if err := a.ch.Ack(tag, false); err != nil {
				fail(err)
				return
			}
			done = append(done, acked)
			delete(a.held, tag)
		}
	}
	for _, f := range done {
		f()
	}
	if len(a.held) == 0 && a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
}
