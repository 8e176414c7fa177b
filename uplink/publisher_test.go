package uplink_test

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/faultproxy"
	"github.com/forestwatch/forest/internal/freeport"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// TestPublishRoundTrip publishes encoded frames through the publisher and
// decodes what the queue holds: properties, headers and routing key survive.
func TestPublishRoundTrip(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.WithChannel(t, url, func(ch *amqp.Channel) {
		if err := ch.ExchangeDeclare(uplink.DefaultExchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		// Only dev-7's frames are routed here: the key must carry the device.
		if _, err := ch.QueueDeclare("frames", true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
			t.Fatal(err)
		}
		if err := ch.QueueBind("frames", "frames.dev-7", uplink.DefaultExchange, false, nil); err != nil {
			t.Fatal(err)
		}
	})
	reg := prometheus.NewRegistry()
	o := testOptions(url)
	o.Registerer = reg
	p := start(t, o)
	waitState(t, p, uplink.StateConnected, 10*time.Second)

	captured := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var msgs []wire.Message
	for i := range 5 {
		m, err := wire.Encode(&wire.Frame{
			ID: fmt.Sprintf("frame-%d", i), Device: "dev-7", Seq: uint64(i), Captured: captured,
			ContentType: wire.JPEG, Image: []byte(fmt.Sprintf("jpeg bytes %d", i)), Width: 256, Height: 256,
			Coverage: 0.5, Model: "forest-v1", Mask: []byte("png mask"), Agent: "forest-agent/1.0",
			User: rabbittest.AdminUser,
		})
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := p.Publish(ctx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Outcome != uplink.Confirmed || r.MessageID != msgs[i].MessageID {
			t.Fatalf("result %d: %+v", i, r)
		}
	}
	rabbittest.WithChannel(t, url, func(ch *amqp.Channel) {
		for i := range msgs {
			d, ok, err := ch.Get("frames", true)
			if err != nil || !ok {
				t.Fatalf("get %d: ok=%v err=%v", i, ok, err)
			}
			if d.DeliveryMode != amqp.Persistent || d.RoutingKey != "frames.dev-7" || d.Exchange != uplink.DefaultExchange {
				t.Errorf("delivery mode %d key %q exchange %q", d.DeliveryMode, d.RoutingKey, d.Exchange)
			}
			f, err := wire.Decode(wire.Message{
				ContentType: d.ContentType, MessageID: d.MessageId, Timestamp: d.Timestamp, AppID: d.AppId,
				Type: d.Type, UserID: d.UserId, Headers: d.Headers, Body: d.Body,
			})
			if err != nil {
				t.Fatalf("decode %d: %v", i, err)
			}
			if f.ID != msgs[i].MessageID || f.Device != "dev-7" || f.Seq != uint64(i) || string(f.Image) != fmt.Sprintf("jpeg bytes %d", i) || !f.Captured.Equal(captured) {
				t.Errorf("decoded %d: %+v", i, f)
			}
		}
	})
	if got := metric(t, reg, "forest_agent_uplink_publish_total", "ack"); got != 5 {
		t.Errorf("publish_total{result=ack} = %v, want 5", got)
	}
}

// metric finds a counter or gauge in reg by name and optional label value.
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if label != "" && (len(m.Label) == 0 || m.Label[0].GetValue() != label) {
				continue
			}
			v := 0.0
			if m.Counter != nil {
				v = m.Counter.GetValue()
			} else if m.Gauge != nil {
				v = m.Gauge.GetValue()
			}
			return v
		}
	}
	t.Fatalf("metric %s{%s} not found", name, label)
	return 0
}

// TestNotConnected: without a link Publish fails fast with ErrNotConnected,
// reports every message Unsent, and Run keeps retrying until cancelled.
func TestNotConnected(t *testing.T) {
	leakCheck(t)
	ports, err := freeport.Ports(1)
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, testOptions(fmt.Sprintf("amqp://u:p@127.0.0.1:%d/", ports[0])))
	msgs := frames(t, "nc", 3, 10)
	began := time.Now()
	res, err := p.Publish(context.Background(), msgs)
	if !errors.Is(err, uplink.ErrNotConnected) {
		t.Fatalf("err = %v, want ErrNotConnected", err)
	}
	if time.Since(began) > 100*time.Millisecond {
		t.Errorf("Publish took %s while not connected", time.Since(began))
	}
	for _, r := range res {
		if r.Outcome != uplink.Unsent || !errors.Is(r.Err, uplink.ErrNotConnected) {
			t.Errorf("result %+v", r)
		}
	}
	time.Sleep(300 * time.Millisecond)
	st := p.State()
	if st.State == uplink.StateConnected || st.LastError == nil {
		t.Errorf("state %+v, want down with an error", st)
	}
}

// TestReturned: an exchange with no binding returns every mandatory
// message; none is reported Confirmed until a queue is bound, then all are.
func TestReturned(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	reg := prometheus.NewRegistry()
	o := testOptions(url)
	o.Registerer = reg
	p := start(t, o)
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	msgs := frames(t, "ret", 40, 1000)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := p.Publish(ctx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Outcome != uplink.Returned || !errors.Is(r.Err, uplink.ErrReturned) {
			t.Fatalf("unroutable message: %+v", r)
		}
	}
	if got := metric(t, reg, "forest_agent_uplink_publish_total", "returned"); got != 40 {
		t.Errorf("publish_total{result=returned} = %v", got)
	}
	rabbittest.FramesQueue(t, url, "frames", nil)
	l := newLedger()
	if err := deliverAll(ctx, t, p, msgs, 16, l); err != nil {
		t.Fatal(err)
	}
	checkDelivered(t, msgs, l, queued(t, url, "frames"))
}

// TestNacked: a quorum queue with x-max-length and reject-publish nacks
// what does not fit; nacked messages are retried once a consumer makes room,
// and every message arrives.
func TestNacked(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.FramesQueue(t, url, "small", amqp.Table{"x-max-length": int64(10), "x-overflow": "reject-publish"})
	p := start(t, testOptions(url))
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	msgs := frames(t, "nack", 60, 2000)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	res, err := p.Publish(ctx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	nacked := 0
	for _, r := range res {
		if r.Outcome == uplink.Nacked {
			nacked++
			if !errors.Is(r.Err, uplink.ErrNacked) {
				t.Errorf("nack error %v", r.Err)
			}
		}
	}
	if nacked < 30 {
		t.Fatalf("%d of 60 nacked by a queue of 10, want >= 30", nacked)
	}
	inQueue := queued(t, url, "small")
	l := newLedger()
	for i, r := range res {
		if r.Outcome == uplink.Confirmed {
			l.confirmed[msgs[i].MessageID]++
		}
	}
	// Retry the rest while a consumer empties the queue.
	var retry []wire.Message
	for i, r := range res {
		if r.Outcome != uplink.Confirmed {
			retry = append(retry, msgs[i])
		}
	}
	cctx, ccancel := context.WithCancel(ctx)
	got := make(chan map[string]int)
	go func() {
		m := map[string]int{}
		defer func() { got <- m }()
		conn, err := amqp.Dial(url)
		if err != nil {
			return
		}
		defer conn.Close()
		ch, _ := conn.Channel()
		for cctx.Err() == nil {
			d, ok, err := ch.Get("small", true)
			if err != nil {
				return
			}
			if ok {
				m[d.MessageId]++
			} else {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	if err := deliverAll(ctx, t, p, retry, 8, l); err != nil {
		t.Fatal(err)
	}
	ccancel()
	for id, n := range <-got {
		inQueue[id] += n
	}
	for id, n := range queued(t, url, "small") {
		inQueue[id] += n
	}
	checkDelivered(t, msgs, l, inQueue)
}

// TestRateLimit: 600 KB through a 300 KB/s bucket (burst 300 KB) takes about
// one second.
func TestRateLimit(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.FramesQueue(t, url, "frames", nil)
	o := testOptions(url)
	o.RateLimit = 300_000
	p := start(t, o)
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	msgs := frames(t, "rate", 12, 50_000)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	began := time.Now()
	if _, err := p.Publish(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	el := time.Since(began)
	if el < 900*time.Millisecond || el > 3*time.Second {
		t.Errorf("600 KB at 300 KB/s with 300 KB burst took %s, want about 1s", el)
	}
}

// TestSameIDInBatch: two messages with one id in a batch are published one
// after the other (returns are matched by id) and both are confirmed.
func TestSameIDInBatch(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.FramesQueue(t, url, "frames", nil)
	p := start(t, testOptions(url))
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	msgs := frames(t, "same", 4, 100)
	for i := range msgs {
		msgs[i].MessageID = "same-id"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := p.Publish(ctx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Outcome != uplink.Confirmed {
			t.Fatalf("%+v", r)
		}
	}
	if got := queued(t, url, "frames")["same-id"]; got != 4 {
		t.Fatalf("%d copies in queue, want 4", got)
	}
	// Run is single-use at a time.
	if err := p.Run(ctx); !errors.Is(err, uplink.ErrRunning) {
		t.Fatalf("second Run: %v", err)
	}
}

// TestPublishAbandonedOnStalledLink: a Publish whose context ends while the
// link is stalled returns promptly (the stuck socket write is interrupted by
// dropping the connection), with nothing reported Confirmed that the broker
// did not confirm; the supervisor recovers once the link moves again.
func TestPublishAbandonedOnStalledLink(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	vh := b.Vhost(t)
	rabbittest.FramesQueue(t, vh, "frames", nil)
	px := faultproxy.New(t, fmt.Sprintf("127.0.0.1:%d", b.Port))
	o := testOptions(viaProxy(t, vh, px))
	o.Heartbeat = 30 * time.Second // only the context can end the wait
	o.ConfirmTimeout = time.Minute
	o.Window = 64
	p := start(t, o)
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	px.Stall(true)
	msgs := frames(t, "stall", 64, 200_000) // 12.8 MB: more than socket buffers hold
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	began := time.Now()
	res, err := p.Publish(ctx, msgs)
	if el := time.Since(began); el > 5*time.Second {
		t.Errorf("Publish returned %s after its context ended", el-2*time.Second)
	}
	if err == nil {
		t.Fatal("Publish on a stalled link succeeded")
	}
	for _, r := range res {
		if r.Outcome == uplink.Confirmed {
			t.Fatalf("confirmed over a stalled link: %+v", r)
		}
	}
	px.Stall(false)
	l := newLedger()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	if err := deliverAll(ctx2, t, p, msgs, 16, l); err != nil {
		t.Fatal(err)
	}
	checkDelivered(t, msgs, l, queued(t, vh, "frames"))
}

// TestInvalidMessage: a message the library cannot encode is reported with
// ErrInvalidMessage and costs neither the connection nor its neighbours.
func TestInvalidMessage(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.FramesQueue(t, url, "frames", nil)
	opts := testOptions(url)
	opts.MaxMessageBytes = 64 << 10
	p := start(t, opts)
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	msgs := frames(t, "inv", 7, 100)
	msgs[1].Headers["nested"] = map[string]any{"a": 1} // not an AMQP table
	msgs[2].MessageID = strings.Repeat("x", 300)       // longer than a shortstr
	// A header larger than RabbitMQ's default frame_max (128 KiB), as a
	// 12-MP frame's mask made it in wire 1.0: the broker would close the
	// connection on it.
	msgs[4].Headers["mask"] = make([]byte, 200<<10)
	msgs[5].Body = make([]byte, 65<<10) // over MaxMessageBytes
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := p.Publish(ctx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		bad := i == 1 || i == 2 || i == 4 || i == 5
		if bad != errors.Is(r.Err, uplink.ErrInvalidMessage) || bad != (r.Outcome == uplink.Unsent) || !bad && r.Outcome != uplink.Confirmed {
			t.Errorf("message %d: %+v", i, r)
		}
	}
	if st := p.State(); st.Reconnects != 0 || st.State != uplink.StateConnected {
		t.Errorf("state after invalid messages: %+v", st)
	}
}

// TestWriteOnlyUser: a device user that may only write to the exchange
// publishes with DeclareExchange off; with it on, the declaration is refused
// and the publisher reports why instead of connecting.
func TestWriteOnlyUser(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.FramesQueue(t, url, "frames", nil)
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	vhost, _ := neturl.PathUnescape(u.EscapedPath()[1:])
	user := fmt.Sprintf("device-%d", time.Now().UnixNano())
	b.AddUser(t, user, "device-secret", vhost, "^$", "^forest\\.frames$", "^$")
	devURL := b.URLFor(user, "device-secret", vhost)

	t.Run("declare refused", func(t *testing.T) {
		leakCheck(t)
		o := testOptions(devURL)
		o.DeclareExchange = true
		p := start(t, o)
		deadline := time.Now().Add(10 * time.Second)
		for p.State().LastError == nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		var ae *amqp.Error
		if st := p.State(); st.State == uplink.StateConnected || !errors.As(st.LastError, &ae) || ae.Code != amqp.AccessRefused {
			t.Fatalf("state %+v, want access refused", st)
		}
	})
	t.Run("publish", func(t *testing.T) {
		leakCheck(t)
		o := testOptions(devURL)
		o.DeclareExchange = false
		p := start(t, o)
		waitState(t, p, uplink.StateConnected, 10*time.Second)
		msgs := frames(t, "dev", 10, 100)
		for i := range msgs {
			msgs[i].UserID = user // validated by the broker
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		l := newLedger()
		if err := deliverAll(ctx, t, p, msgs, 10, l); err != nil {
			t.Fatal(err)
		}
		checkDelivered(t, msgs, l, queued(t, url, "frames"))
	})
}

// TestExchangeMissing: publishing to an exchange that does not exist makes
// the broker close the channel; the messages are Lost (never Confirmed), the
// reason shows in State, and once the exchange exists everything arrives.
func TestExchangeMissing(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	o := testOptions(url)
	o.DeclareExchange = false
	p := start(t, o)
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	msgs := frames(t, "nox", 20, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := p.Publish(ctx, msgs)
	if !errors.Is(err, uplink.ErrConnectionLost) {
		t.Fatalf("err = %v, want ErrConnectionLost", err)
	}
	for _, r := range res {
		if r.Outcome == uplink.Confirmed {
			t.Fatalf("confirmed to a missing exchange: %+v", r)
		}
	}
	var ae *amqp.Error
	deadline := time.Now().Add(5 * time.Second)
	for !errors.As(p.State().LastError, &ae) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ae == nil || ae.Code != amqp.NotFound {
		t.Errorf("last error %v, want 404 not found", p.State().LastError)
	}
	rabbittest.FramesQueue(t, url, "frames", nil)
	l := newLedger()
	if err := deliverAll(ctx, t, p, msgs, 20, l); err != nil {
		t.Fatal(err)
	}
	checkDelivered(t, msgs, l, queued(t, url, "frames"))
}

// TestStopWaitsForConfirms: when Run's context ends mid-batch, nothing new
// is published, the confirms of what is in flight are awaited (CloseTimeout)
// and reported Confirmed rather than Lost, and Run returns.
func TestStopWaitsForConfirms(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.FramesQueue(t, url, "frames", nil)
	o := testOptions(url)
	o.CloseTimeout = 10 * time.Second
	o.RateLimit = 2_000_000 // 10 messages/s of 200 KB: the batch is mid-way when Run stops
	p, err := uplink.New(o)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(runCtx) }()
	defer stop()
	waitState(t, p, uplink.StateConnected, 10*time.Second)

	msgs := frames(t, "stop", 100, 200_000)
	type out struct {
		res []uplink.Result
		err error
	}
	pubDone := make(chan out, 1)
	go func() {
		res, err := p.Publish(context.Background(), msgs)
		pubDone <- out{res, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for p.State().Inflight == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	stop()
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
	o2 := <-pubDone
	// Whether the batch saw the publisher closing (ErrNotConnected) or its
	// connection already gone (ErrConnectionLost) is a race; both tell the
	// drain to keep what was not confirmed. The outcomes below are what count.
	if !errors.Is(o2.err, uplink.ErrNotConnected) && !errors.Is(o2.err, uplink.ErrConnectionLost) {
		t.Errorf("Publish error %v, want ErrNotConnected or ErrConnectionLost (publisher stopping)", o2.err)
	}
	confirmed := map[string]int{}
	counts := map[uplink.Outcome]int{}
	for _, r := range o2.res {
		counts[r.Outcome]++
		if r.Outcome == uplink.Confirmed {
			confirmed[r.MessageID]++
		}
	}
	t.Logf("outcomes at stop: %v", counts)
	if counts[uplink.Confirmed] == 0 || counts[uplink.Lost] != 0 || counts[uplink.Confirmed]+counts[uplink.Unsent] != len(msgs) {
		t.Errorf("outcomes %v: want in-flight messages confirmed, the rest unsent, none lost", counts)
	}
	inQueue := queued(t, url, "frames")
	for id := range confirmed {
		if inQueue[id] == 0 {
			t.Errorf("%s confirmed but not in the queue", id)
		}
	}
}

// TestConcurrentPublish: drains may overlap batches by calling Publish from
// several goroutines; each call gets its own results and all arrive once.
func TestConcurrentPublish(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.FramesQueue(t, url, "frames", nil)
	p := start(t, testOptions(url))
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const workers, per = 4, 100
	var all []wire.Message
	errs := make(chan error, workers)
	for w := range workers {
		msgs := frames(t, fmt.Sprintf("w%d", w), per, 2000)
		all = append(all, msgs...)
		go func() {
			for len(msgs) > 0 {
				n := min(24, len(msgs))
				res, err := p.Publish(ctx, msgs[:n])
				if err != nil {
					errs <- err
					return
				}
				for i, r := range res {
					if r.Outcome != uplink.Confirmed || r.MessageID != msgs[i].MessageID {
						errs <- fmt.Errorf("result %d: %+v", i, r)
						return
					}
				}
				msgs = msgs[n:]
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	got := queued(t, url, "frames")
	for _, m := range all {
		if got[m.MessageID] != 1 {
			t.Errorf("%s: %d copies", m.MessageID, got[m.MessageID])
		}
	}
}
