package rabbittest_test

import (
	"context"
	"net"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/rabbittest"
)

func TestMain(m *testing.M) { rabbittest.Main(m) }

// TestSmokeBroker proves the harness broker is real: one persistent message
// published with a confirm to a durable quorum queue, consumed with a manual
// ack.
func TestSmokeBroker(t *testing.T) {
	b := rabbittest.Shared(t)
	ch := rabbittest.Channel(t, b.Vhost(t))
	q, err := ch.QueueDeclare("smoke", true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q.Name, true, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent, ContentType: "text/plain", Body: []byte("hello forest"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		t.Fatalf("confirm: ok=%v err=%v", ok, err)
	}
	msgs, err := ch.Consume(q.Name, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-msgs:
		if string(d.Body) != "hello forest" || d.DeliveryMode != amqp.Persistent {
			t.Fatalf("got %q mode %d", d.Body, d.DeliveryMode)
		}
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("no delivery")
	}
}

// TestRestart proves a private broker keeps durable data across a restart.
func TestRestart(t *testing.T) {
	b := rabbittest.Start(t)
	rabbittest.WithChannel(t, b.URL, func(ch *amqp.Channel) {
		if _, err := ch.QueueDeclare("keep", true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
			t.Fatal(err)
		}
		_ = ch.Confirm(false)
		dc, err := ch.PublishWithDeferredConfirm("", "keep", false, false, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte("x")})
		if err != nil || !dc.Wait() {
			t.Fatalf("publish: %v", err)
		}
	})
	b.Restart(t)
	ch := rabbittest.Channel(t, b.URL)
	q, err := ch.QueueDeclarePassive("keep", true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 1 {
		t.Fatalf("after restart: %d messages, want 1", q.Messages)
	}
}

// TestCluster proves the harness's cluster is real: three nodes on
// loopback, a quorum queue with a member on each, and a message published
// before the queue's leader is killed with SIGKILL is still there, on a
// new leader, and after the killed node has rejoined.
func TestCluster(t *testing.T) {
	t0 := time.Now()
	c := rabbittest.StartCluster(t, 3)
	t.Logf("cluster of 3 up in %s", time.Since(t0).Round(time.Millisecond))
	names := map[string]bool{}
	for _, b := range c.Nodes {
		names[b.Name()] = true
	}
	if len(names) != 3 {
		t.Fatalf("node names not distinct: %v", names)
	}
	// Every node listens for AMQP and Erlang distribution, the epmd for
	// name look-ups: all on loopback, nothing on a wildcard address.
	ls, err := c.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) < 2*3+1 {
		t.Errorf("listeners %v: want AMQP and distribution of 3 nodes and an epmd", ls)
	}
	for _, a := range ls {
		host, _, _ := net.SplitHostPort(a)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			t.Errorf("cluster listens on %s, not on loopback", a)
		}
	}
	t.Logf("listeners: %v", ls)
	rabbittest.WithChannel(t, c.Nodes[1].URL, func(ch *amqp.Channel) {
		if _, err := ch.QueueDeclare("ha", true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
			t.Fatal(err)
		}
		// A classic queue beside it (rabbitmqctl lists its members as ""),
		// as forest-cloud's status queue sits beside its frames queue.
		if _, err := ch.QueueDeclare("beside", false, true, false, false, amqp.Table{"x-queue-type": "classic"}); err != nil {
			t.Fatal(err)
		}
		_ = ch.Confirm(false)
		dc, err := ch.PublishWithDeferredConfirm("", "ha", false, false, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte("x")})
		if err != nil || !dc.Wait() {
			t.Fatalf("publish: %v", err)
		}
	})
	leader, members, err := c.QueueMembers("/", "ha")
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 3 {
		t.Fatalf("quorum queue members %d, want 3", len(members))
	}
	leader.Kill(t)
	var other *rabbittest.Broker
	for _, b := range c.Nodes {
		if b != leader {
			other = b
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, _, err := c.QueueMembers("/", "ha")
		if err == nil && l != leader {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new leader after the old one was killed: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	count := func(url string) int {
		ch := rabbittest.Channel(t, url)
		q, err := ch.QueueDeclarePassive("ha", true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
		if err != nil {
			t.Fatal(err)
		}
		return q.Messages
	}
	if n := count(other.URL); n != 1 {
		t.Fatalf("after the leader was killed: %d messages, want 1", n)
	}
	t1 := time.Now()
	leader.Start(t)
	if err := c.AwaitMembersOnline("/", "ha", time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed leader restarted and its member online in %s", time.Since(t1).Round(time.Millisecond))
	if n := count(leader.URL); n != 1 {
		t.Fatalf("on the restarted node: %d messages, want 1", n)
	}
}
