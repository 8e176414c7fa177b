package agent

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/agent/status"
	"github.com/forestwatch/forest/internal/procstat"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/spool"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// drainWindow is the confirm window of both the drain's publisher and the
// bare amqp091-go loop.
const drainWindow = 32

// BenchmarkDrain drains b.N frames from a spool (durable Ack after each
// confirmed batch) to a durable quorum queue through the agent's drain and
// uplink.Publisher and, in the same run, publishes the same bytes with bare
// amqp091-go and the same confirm window. Run with -benchtime 2000x (the
// issue's figure) and compare frames/s of drain and bare.
func BenchmarkDrain(b *testing.B) {
	br := rabbittest.Shared(b)
	for _, size := range []int{200_000, 1_000} {
		url := br.Vhost(b)
		rabbittest.FramesQueue(b, url, "bench", nil)
		img, mask := benchFrame(size)
		b.Run(fmt.Sprintf("size=%dKB/bare", size/1000), func(b *testing.B) {
			bare := newBarePublisher(b, url, img, mask)
			b.SetBytes(int64(size))
			b.ResetTimer()
			bare.publish(b, b.N)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
			rabbittest.Purge(b, url, "bench")
		})
		b.Run(fmt.Sprintf("size=%dKB/drain", size/1000), func(b *testing.B) {
			d := newBenchDrain(b, url, img, mask)
			d.fill(b, b.N)
			b.SetBytes(int64(size))
			b.ResetTimer()
			d.run(b)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
			b.ReportMetric(float64(d.q.Stats().Compactions), "compactions")
			rabbittest.Purge(b, url, "bench")
		})
	}
}

// BenchmarkDrainRatio alternates rounds of 2,000 frames (the issue's
// figure) between bare amqp091-go and the agent's drain on one queue, so
// that both see the same load from whatever else runs on the machine, and
// reports the median over rounds of drain/bare throughput
// (ratio_median_round; target ≥ 0.8). The spool is filled before each
// drain round, untimed. One op is one round each way: -benchtime 5x gives
// five rounds.
func BenchmarkDrainRatio(b *testing.B) {
	const round = 2000
	br := rabbittest.Shared(b)
	for _, size := range []int{200_000, 1_000} {
		b.Run(fmt.Sprintf("size=%dKB", size/1000), func(b *testing.B) {
			url := br.Vhost(b)
			rabbittest.FramesQueue(b, url, "bench", nil)
			img, mask := benchFrame(size)
			bare := newBarePublisher(b, url, img, mask)
			d := newBenchDrain(b, url, img, mask)
			var cb, cd time.Duration // client CPU time of bare and drain rounds
			bareRound := func() time.Duration {
				t0, c0 := time.Now(), procstat.ProcessCPU()
				bare.publish(b, round)
				cb += procstat.ProcessCPU() - c0
				return time.Since(t0)
			}
			drainRound := func() time.Duration {
				d.fill(b, round)
				c0 := procstat.ProcessCPU()
				el := d.run(b)
				cd += procstat.ProcessCPU() - c0
				return el
			}
			var ratios []float64
			var tb, td time.Duration
			b.SetBytes(int64(2 * round * size))
			b.ResetTimer()
			for i := range b.N {
				var eb, ed time.Duration
				if i%2 == 0 {
					eb, ed = bareRound(), drainRound()
				} else {
					ed, eb = drainRound(), bareRound()
				}
				tb += eb
				td += ed
				ratios = append(ratios, eb.Seconds()/ed.Seconds())
				rabbittest.Purge(b, url, "bench")
			}
			b.StopTimer()
			slices.Sort(ratios)
			b.ReportMetric(ratios[len(ratios)/2], "ratio_median_round")
			b.ReportMetric(tb.Seconds()/td.Seconds(), "ratio_all")
			b.ReportMetric(float64(b.N*round)/tb.Seconds(), "bare_frames/s")
			b.ReportMetric(float64(b.N*round)/td.Seconds(), "drain_frames/s")
			b.ReportMetric(float64(cb.Microseconds())/float64(b.N*round), "bare_cpu_us/frame")
			b.ReportMetric(float64(cd.Microseconds())/float64(b.N*round), "drain_cpu_us/frame")
		})
	}
}

// benchFrame returns a random image of size bytes and a mask.
func benchFrame(size int) (img, mask []byte) {
	img = make([]byte, size)
	_, _ = rand.Read(img)
	return img, make([]byte, 600)
}

// barePublisher is bare amqp091-go in confirm mode with the drain's window,
// publishing pre-encoded copies of one frame.
type barePublisher struct {
	ch   *amqp.Channel
	msgs []wire.Message
}

func newBarePublisher(b *testing.B, url string, img, mask []byte) *barePublisher {
	b.Helper()
	ch := rabbittest.Channel(b, url)
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	msgs := make([]wire.Message, 64)
	for i := range msgs {
		m, err := wire.Encode(&wire.Frame{ID: wire.FrameID("bench", uint64(i)), Device: "bench", Seq: uint64(i),
			Captured: time.Now(), ContentType: wire.JPEG, Image: img, Width: 256, Height: 256, Coverage: 0.5,
			Model: "bench/1", Mask: mask, Agent: "forest-agent/bench"})
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = m
	}
	return &barePublisher{ch: ch, msgs: msgs}
}

// publish sends n messages keeping at most drainWindow unconfirmed and
// waits for every confirm.
func (p *barePublisher) publish(b *testing.B, n int) {
	var window []*amqp.DeferredConfirmation
	for i := range n {
		if len(window) == drainWindow {
			if !window[0].Wait() {
				b.Fatal("nack")
			}
			window = window[1:]
		}
		m := &p.msgs[i%len(p.msgs)]
		dc, err := p.ch.PublishWithDeferredConfirm(uplink.DefaultExchange, "frames.bench", true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, ContentType: m.ContentType, MessageId: m.MessageID,
			Timestamp: m.Timestamp, AppId: m.AppID, Type: m.Type, Headers: amqp.Table(m.Headers), Body: m.Body,
		})
		if err != nil {
			b.Fatal(err)
		}
		window = append(window, dc)
	}
	for _, dc := range window {
		if !dc.Wait() {
			b.Fatal("nack")
		}
	}
}

// benchDrain is a spool, a connected uplink.Publisher and the agent's drain
// between them.
type benchDrain struct {
	q         *spool.Queue
	emptying  *emptyingQueue
	d         *drain
	img, mask []byte
	sum       string
	seq       uint64
}

// emptyingQueue is the spool as the drain sees it, reporting on empty when
// an AckCount has left no frame stored, so that the benchmark learns the
// end of a drain without polling the spool (which took CPU from the drain).
type emptyingQueue struct {
	*spool.Queue
	empty chan struct{}
}

// AckCount wraps the one method the drain acknowledges with (drainQueue).
func (c *emptyingQueue) AckCount(ids ...uint64) (int, error) {
	n, err := c.Queue.AckCount(ids...)
	if err == nil && c.Queue.Stats().Frames == 0 {
		select {
		case c.empty <- struct{}{}:
		default:
		}
	}
	return n, err
}

func newBenchDrain(b *testing.B, url string, img, mask []byte) *benchDrain {
	b.Helper()
	q, err := spool.Open(b.TempDir(), spool.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	p, err := uplink.New(uplink.Options{URL: url, Window: drainWindow, ConfirmTimeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	for p.State().State != uplink.StateConnected {
		time.Sleep(5 * time.Millisecond)
	}
	m, err := status.NewMetrics(prometheus.NewRegistry(), status.Inputs{Spool: func() (spool.Stats, bool) { return q.Stats(), true }})
	if err != nil {
		b.Fatal(err)
	}
	emptying := &emptyingQueue{Queue: q, empty: make(chan struct{}, 1)}
	d := &drain{q: emptying, pub: p, batch: 2 * drainWindow, agent: "forest-agent/bench", m: m, status: status.NewTracker(),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), backoffMin: 10 * time.Millisecond, backoffMax: time.Second}
	return &benchDrain{q: q, emptying: emptying, d: d, img: img, mask: mask, sum: wire.Sum(img)}
}

// fill spools n frames as the pipeline does (checksum taken at capture).
func (bd *benchDrain) fill(b *testing.B, n int) {
	b.Helper()
	for range n {
		bd.seq++
		meta, _ := json.Marshal(Meta{V: 1, Device: "bench", Seq: bd.seq, Captured: time.Now(), SHA256: bd.sum,
			ContentType: wire.JPEG, Width: 256, Height: 256, Coverage: 0.5, Model: "bench/1"})
		if _, err := bd.q.Put(context.Background(), &spool.Record{Image: bd.img, Mask: bd.mask, Meta: meta}); err != nil {
			b.Fatal(err)
		}
	}
}

// run drains the spool until it is empty and returns how long that took.
func (bd *benchDrain) run(b *testing.B) time.Duration {
	b.Helper()
	ctx := context.Background()
	stop, stopDrain := context.WithCancel(ctx)
	drained := make(chan error, 1)
	t0 := time.Now()
	go func() { drained <- bd.d.Run(stop, ctx) }()
	select {
	case <-bd.emptying.empty:
	case <-time.After(5 * time.Minute):
		b.Fatalf("the spool did not empty in 5 minutes (%d frames left)", bd.q.Stats().Frames)
	}
	el := time.Since(t0)
	stopDrain()
	if err := <-drained; err != nil {
		b.Fatal(err)
	}
	return el
}
