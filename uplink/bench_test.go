package uplink_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/procstat"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// benchWindow is the confirm window of both the publisher and the bare
// library loop; benchBatch the messages per Publish call (a drain batch).
const (
	benchWindow = 32
	benchBatch  = 64
)

// BenchmarkPublish publishes b.N messages to a durable quorum queue through
// the Publisher and, in the same run, through bare amqp091-go with the same
// bytes, properties, mandatory flag and confirm window. Run it with
// -benchtime 2000x (the figure); compare msgs/s of uplink and bare.
func BenchmarkPublish(b *testing.B) {
	br := rabbittest.Shared(b)
	for _, size := range []int{200_000, 1_000} {
		url := br.Vhost(b)
		rabbittest.FramesQueue(b, url, "bench", nil)
		b.Run(fmt.Sprintf("size=%dKB/bare", size/1000), func(b *testing.B) {
			msgs := frames(b, "bare", min(b.N, 512), size)
			rabbittest.Purge(b, url, "bench")
			ch := bareChannel(b, url)
			b.SetBytes(int64(size))
			b.ResetTimer()
			var window []*amqp.DeferredConfirmation
			for i := range b.N {
				m := &msgs[i%len(msgs)]
				if len(window) == benchWindow {
					if !window[0].Wait() {
						b.Fatal("nack")
					}
					window = window[1:]
				}
				dc, err := ch.PublishWithDeferredConfirm(uplink.DefaultExchange, "frames.dev-1", true, false, amqp.Publishing{
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
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
		b.Run(fmt.Sprintf("size=%dKB/uplink", size/1000), func(b *testing.B) {
			msgs := frames(b, "uplink", min(b.N, 512), size)
			rabbittest.Purge(b, url, "bench")
			o := testOptions(url)
			o.DeclareExchange = false
			o.Window = benchWindow
			o.ConfirmTimeout = time.Minute
			p, err := uplink.New(o)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			defer func() { cancel(); <-done }()
			for p.State().State != uplink.StateConnected {
				time.Sleep(5 * time.Millisecond)
			}
			batch := make([]wire.Message, 0, benchBatch)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; {
				batch = batch[:0]
				for ; len(batch) < benchBatch && i < b.N; i++ {
					batch = append(batch, msgs[i%len(msgs)])
				}
				res, err := p.Publish(ctx, batch)
				if err != nil {
					b.Fatal(err)
				}
				for _, r := range res {
					if r.Outcome != uplink.Confirmed {
						b.Fatalf("%+v", r)
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// bareChannel is bare amqp091-go's side of the benchmarks: a channel in
// confirm mode whose returns are read and dropped.
func bareChannel(b *testing.B, url string) *amqp.Channel {
	ch := rabbittest.Channel(b, url)
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, benchWindow))
	go func() {
		for range returns {
		}
	}()
	return ch
}

// BenchmarkPublishRatio alternates rounds of 125 messages between bare
// amqp091-go and the Publisher on one queue, so that both see the same load
// from whatever else runs on the machine, and reports the throughput ratio
// uplink/bare over all rounds (ratio), its median over rounds
// (ratio_median_round, robust to bursts of load from other processes) and
// the client CPU time per message each way. One op is one round each way:
// -benchtime 16x moves 2,000 messages each way. The Publisher is driven as the agent's drain drives
// it, one batch after the other, for several batch sizes: each batch ends
// by waiting for its last confirms, which the bare loop never does.
func BenchmarkPublishRatio(b *testing.B) {
	br := rabbittest.Shared(b)
	for _, size := range []int{200_000, 1_000} {
		for _, batch := range []int{16, 64, 256} {
			benchRatio(b, br, size, batch)
		}
	}
}

func benchRatio(b *testing.B, br *rabbittest.Broker, size, batch int) {
	{
		b.Run(fmt.Sprintf("size=%dKB/batch=%d", size/1000, batch), func(b *testing.B) {
			url := br.Vhost(b)
			rabbittest.FramesQueue(b, url, "bench", nil)
			msgs := frames(b, "ratio", 125, size)
			ch := bareChannel(b, url)
			o := testOptions(url)
			o.DeclareExchange = false
			o.Window = benchWindow
			o.ConfirmTimeout = time.Minute
			p, err := uplink.New(o)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			defer func() { cancel(); <-done }()
			for p.State().State != uplink.StateConnected {
				time.Sleep(5 * time.Millisecond)
			}
			// Per round: wall time and this process's CPU time each way.
			var bare, up, bareCPU, upCPU time.Duration
			var ratios []float64
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				rabbittest.Purge(b, url, "bench")
				b.StartTimer()
				var tb, tu time.Duration
				runBare := func() {
					t0, c0 := time.Now(), procstat.ProcessCPU()
					if err := barePublish(ch, msgs); err != nil {
						b.Fatal(err)
					}
					tb = time.Since(t0)
					bareCPU += procstat.ProcessCPU() - c0
				}
				runUp := func() {
					t0, c0 := time.Now(), procstat.ProcessCPU()
					if err := upPublish(ctx, p, msgs, batch); err != nil {
						b.Fatal(err)
					}
					tu = time.Since(t0)
					upCPU += procstat.ProcessCPU() - c0
				}
				if i%2 == 0 {
					runBare()
					runUp()
				} else {
					runUp()
					runBare()
				}
				bare, up = bare+tb, up+tu
				ratios = append(ratios, tb.Seconds()/tu.Seconds())
			}
			b.StopTimer()
			n := float64(b.N * len(msgs))
			b.ReportMetric(n/bare.Seconds(), "bare_msgs/s")
			b.ReportMetric(n/up.Seconds(), "uplink_msgs/s")
			b.ReportMetric(bare.Seconds()/up.Seconds(), "ratio")
			slices.Sort(ratios)
			b.ReportMetric(ratios[len(ratios)/2], "ratio_median_round")
			b.ReportMetric(float64(bareCPU.Microseconds())/n, "bare_cpu_us/msg")
			b.ReportMetric(float64(upCPU.Microseconds())/n, "uplink_cpu_us/msg")
		})
	}
}

// barePublish is the reference: the library alone, same window, same
// message, mandatory, persistent, waiting for every confirm.
func barePublish(ch *amqp.Channel, msgs []wire.Message) error {
	window := make([]*amqp.DeferredConfirmation, 0, benchWindow)
	for i := range msgs {
		m := &msgs[i]
		if len(window) == benchWindow {
			if !window[0].Wait() {
				return fmt.Errorf("nack")
			}
			window = window[1:]
		}
		dc, err := ch.PublishWithDeferredConfirm(uplink.DefaultExchange, "frames.dev-1", true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, ContentType: m.ContentType, MessageId: m.MessageID,
			Timestamp: m.Timestamp, AppId: m.AppID, Type: m.Type, Headers: amqp.Table(m.Headers), Body: m.Body,
		})
		if err != nil {
			return err
		}
		window = append(window, dc)
	}
	for _, dc := range window {
		if !dc.Wait() {
			return fmt.Errorf("nack")
		}
	}
	return nil
}

// upPublish is the drain loop's way: batches one after the other, every
// message confirmed.
func upPublish(ctx context.Context, p *uplink.Publisher, msgs []wire.Message, batch int) error {
	for len(msgs) > 0 {
		n := min(batch, len(msgs))
		res, err := p.Publish(ctx, msgs[:n])
		if err != nil {
			return err
		}
		for _, r := range res {
			if r.Outcome != uplink.Confirmed {
				return fmt.Errorf("%s: %v", r.Outcome, r.Err)
			}
		}
		msgs = msgs[n:]
	}
	return nil
}
