package uplink_test

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// statusMessage is a status report of device as user.
func statusMessage(t *testing.T, device, user string) wire.Message {
	t.Helper()
	m, err := wire.EncodeStatus(&wire.Status{Device: device, SentAt: time.Now(), State: wire.StatusRunning,
		Version: "test", StartedAt: time.Now(), Link: wire.LinkStatus{State: "connected"}}, "forest-agent/test", user)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// statusQueue declares a queue bound to status.# on the frames exchange.
func statusQueue(t *testing.T, url string) {
	t.Helper()
	rabbittest.WithChannel(t, url, func(ch *amqp.Channel) {
		if _, err := ch.QueueDeclare("status", false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if err := ch.QueueBind("status", "status.#", uplink.DefaultExchange, false, nil); err != nil {
			t.Fatal(err)
		}
	})
}

// TestSendBesideBacklog: a status sent while a rate-limited batch of
// frames is being published (10 s of backlog at the limit, the confirm
// window full) is confirmed at once, arrives transient under its own
// routing key, and the frames are all delivered.
func TestSendBesideBacklog(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.FramesQueue(t, url, "frames", nil)
	statusQueue(t, url)
	o := testOptions(url)
	o.RateLimit = 200_000
	o.Window = 4
	p := start(t, o)
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	if err := p.Send(context.Background(), "status.dev-1", statusMessage(t, "dev-1", rabbittest.AdminUser)); err != nil {
		t.Fatalf("send on an idle link: %v", err)
	}

	msgs := frames(t, "backlog", 20, 100_000)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		l := newLedger()
		err := deliverAll(ctx, t, p, msgs, 20, l)
		if err == nil && l.confirmedCount() != len(msgs) {
			err = fmt.Errorf("%d of %d confirmed", l.confirmedCount(), len(msgs))
		}
		done <- err
	}()
	time.Sleep(2 * time.Second) // the batch is under way, the window full
	var worst time.Duration
	for i := range 3 {
		t0 := time.Now()
		sctx, c := context.WithTimeout(ctx, 5*time.Second)
		err := p.Send(sctx, "status.dev-1", statusMessage(t, "dev-1", rabbittest.AdminUser))
		c()
		if err != nil {
			t.Fatalf("send %d during the backlog: %v", i, err)
		}
		worst = max(worst, time.Since(t0))
		time.Sleep(500 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("the backlog was gone before the statuses were sent; the test proves nothing")
	default:
	}
	// A 100 KB body frame at the rate limit can sit ahead in the socket;
	// a status that waited for the batch would take about 8 s.
	if worst > time.Second {
		t.Errorf("a status took %s to be confirmed behind a backlog", worst)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rabbittest.WithChannel(t, url, func(ch *amqp.Channel) {
		n := 0
		for {
			d, ok, err := ch.Get("status", true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			n++
			if d.DeliveryMode != amqp.Transient || d.Type != wire.StatusType() || d.RoutingKey != "status.dev-1" || d.UserId != rabbittest.AdminUser {
				t.Errorf("status delivered as %+v", d)
			}
		}
		if n != 4 {
			t.Errorf("%d statuses in the queue, want 4", n)
		}
	})
	t.Logf("slowest status behind the backlog: %s", worst)
}

// TestSendRefused: a device user without write permission on status.<user>
// gets ErrRefused; its frames still flow over the same connection; once
// the permission is granted, Send works again on a fresh side channel.
func TestSendRefused(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.FramesQueue(t, url, "frames", nil)
	statusQueue(t, url)
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	vhost, _ := neturl.PathUnescape(u.EscapedPath()[1:])
	user := fmt.Sprintf("dev-%d", time.Now().UnixNano())
	b.AddUser(t, user, "device-secret", vhost, "^$", "^forest\\.frames$", "^$")
	b.Ctl(t, "set_topic_permissions", "-p", vhost, user, uplink.DefaultExchange, "^frames\\.dev-1$", "^$")
	o := testOptions(b.URLFor(user, "device-secret", vhost))
	o.DeclareExchange = false
	p := start(t, o)
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	err = p.Send(ctx, "status.dev-1", statusMessage(t, "dev-1", user))
	var ae *amqp.Error
	if !errors.Is(err, uplink.ErrRefused) || !errors.As(err, &ae) || ae.Code != amqp.AccessRefused {
		t.Fatalf("send without permission: %v, want ErrRefused with ACCESS_REFUSED", err)
	}
	msgs := frames(t, "after-refusal", 5, 100)
	for i := range msgs {
		msgs[i].UserID = user
	}
	l := newLedger()
	if err := deliverAll(ctx, t, p, msgs, 5, l); err != nil {
		t.Fatal(err)
	}
	if l.outcomes[uplink.Lost] != 0 || p.State().Reconnects != 0 {
		t.Fatalf("the refused status cost the frames their connection: outcomes %v, reconnects %d", l.outcomes, p.State().Reconnects)
	}
	b.Ctl(t, "set_topic_permissions", "-p", vhost, user, uplink.DefaultExchange, "^(frames|status)\\.dev-1$", "^$")
	if err := p.Send(ctx, "status.dev-1", statusMessage(t, "dev-1", user)); err != nil {
		t.Fatalf("send once permitted: %v", err)
	}
}

// TestSendNotConnected: while the link is down Send returns
// ErrNotConnected at once.
func TestSendNotConnected(t *testing.T) {
	leakCheck(t)
	p := start(t, testOptions("amqp://guest:guest@127.0.0.1:1/"))
	t0 := time.Now()
	if err := p.Send(context.Background(), "status.x", statusMessage(t, "x", "")); !errors.Is(err, uplink.ErrNotConnected) || time.Since(t0) > time.Second {
		t.Fatalf("send while down: %v after %s", err, time.Since(t0))
	}
}
