package cloud

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/rabbittest"
)

// countingChannel counts the ack frames sent through a real channel.
type countingChannel struct {
	*amqp.Channel
	acks, multiples atomic.Int64
}

func (c *countingChannel) Ack(tag uint64, multiple bool) error {
	c.acks.Add(1)
	if multiple {
		c.multiples.Add(1)
	}
	return c.Channel.Ack(tag, multiple)
}

// TestAckerReal settles 1,000 deliveries of a real quorum queue with eight
// workers finishing out of order, one in ten nacked on first delivery, and
// the first delivery held unsettled until 300 others are acked (with
// prefetch 40 they can only pass it if their acks do). The broker must
// accept every frame (the channel stays open), every message must end
// acked exactly once (the queue is empty after the channel closes), and
// the acks must be coalesced.
func TestAckerReal(t *testing.T) {
	const n, prefetch, workers = 1000, 40, 8
	url := rabbittest.Shared(t).Vhost(t)
	queue := fmt.Sprintf("acker-%d", rand.Int64())
	ch := rabbittest.Channel(t, url)
	if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := ch.Publish("", queue, false, false, amqp.Publishing{Body: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := ch.Qos(prefetch, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	cc := &countingChannel{Channel: ch}
	a := newAcker(cc, ackBatch(prefetch, workers), 20*time.Millisecond, slog.New(slog.DiscardHandler))

	var acked, nacked atomic.Int64
	var mu sync.Mutex
	seen := map[string]int{}
	ack := func(d amqp.Delivery) {
		a.ack(d.DeliveryTag, func() {
			acked.Add(1)
			mu.Lock()
			seen[string(d.Body)]++
			mu.Unlock()
		})
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				var d amqp.Delivery
				select {
				case d = <-ds:
				case <-time.After(2 * time.Second):
					return // the queue is drained, or stalled (checked below)
				}
				a.begin(d.DeliveryTag)
				if d.DeliveryTag == 1 {
					// Held until 300 others are acked: that needs their
					// acks to pass it.
					wg.Go(func() {
						for acked.Load() < 300 {
							time.Sleep(time.Millisecond)
						}
						ack(d)
					})
					continue
				}
				time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
				if !d.Redelivered && rand.IntN(10) == 0 {
					if err := a.nack(d.DeliveryTag); err != nil {
						t.Error(err)
					}
					nacked.Add(1)
					continue
				}
				ack(d)
			}
		})
	}
	wg.Wait()
	a.close()
	a.ack(99999, func() { t.Error("ack after close ran") })
	select {
	case e := <-closed:
		t.Fatalf("the broker closed the channel: %v", e)
	default:
	}
	if err := ch.Close(); err != nil { // returns anything unacked to the queue
		t.Fatal(err)
	}
	rabbittest.WithChannel(t, url, func(ch *amqp.Channel) {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
		if err != nil {
			t.Fatal(err)
		}
		if q.Messages != 0 {
			t.Errorf("%d messages left in the queue: not every ack reached the broker", q.Messages)
		}
		_, _ = ch.QueueDelete(queue, false, false, false)
	})
	if len(seen) != n {
		t.Errorf("%d distinct messages acked, want %d", len(seen), n)
	}
	for body, k := range seen {
		if k != 1 {
			t.Errorf("message %s acked %d times", body, k)
		}
	}
	frames := cc.acks.Load()
	t.Logf("%d messages: %d ack frames (%d with multiple), %d nacks", n, frames, cc.multiples.Load(), nacked.Load())
	if nacked.Load() == 0 || frames > n/2 {
		t.Errorf("%d ack frames for %d messages: not coalesced", frames, n)
	}
}

// TestAckBatch keeps held acks below the prefetch headroom.
func TestAckBatch(t *testing.T) {
	for _, c := range []struct{ prefetch, workers, want int }{
		{32, 8, 12}, {8, 8, 1}, {9, 8, 1}, {1, 1, 1}, {1000, 8, 16}, {12, 8, 2},
	} {
		if got := ackBatch(c.prefetch, c.workers); got != c.want {
			t.Errorf("ackBatch(%d, %d) = %d, want %d", c.prefetch, c.workers, got, c.want)
		}
	}
}

// recorder is a settler that records the frames it is given.
type recorder struct{ frames []string }

func (r *recorder) Ack(tag uint64, multiple bool) error {
	r.frames = append(r.frames, fmt.Sprintf("ack %d %v", tag, multiple))
	return nil
}

func (r *recorder) Nack(tag uint64, multiple, requeue bool) error {
	r.frames = append(r.frames, fmt.Sprintf("nack %d", tag))
	return nil
}

// TestAckerFlushesWhenIdle holds acks while another delivery is in
// progress and sends them as soon as none is, without waiting for the
// timer.
func TestAckerFlushesWhenIdle(t *testing.T) {
	r := &recorder{}
	a := newAcker(r, 12, time.Hour, slog.New(slog.DiscardHandler))
	a.begin(1)
	a.begin(2)
	a.begin(3)
	a.ack(2, func() {})
	a.ack(1, func() {})
	if len(r.frames) != 0 {
		t.Fatalf("sent %q while tag 3 is in progress", r.frames)
	}
	if err := a.nack(3); err != nil {
		t.Fatal(err)
	}
	a.begin(4)
	a.ack(4, func() {})
	want := []string{"nack 3", "ack 2 true", "ack 4 true"}
	if fmt.Sprint(r.frames) != fmt.Sprint(want) {
		t.Errorf("frames %q, want %q", r.frames, want)
	}
}
