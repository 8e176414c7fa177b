package uplinktest_test

import (
	"context"
	"net"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/uplink/uplinktest"
)

func TestMain(m *testing.M) { uplinktest.Main(m) }

// TestSmokeBroker proves the harness broker is real: one persistent message
// published with a confirm to a durable quorum queue, consumed with a manual
// ack.
func TestSmokeBroker(t *testing.T) {
	b := uplinktest.Shared(t)
	ch := uplinktest.Channel(t, b.Vhost(t))
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
	b := uplinktest.Start(t)
	uplinktest.WithChannel(t, b.URL, func(ch *amqp.Channel) {
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
	ch := uplinktest.Channel(t, b.URL)
	q, err := ch.QueueDeclarePassive("keep", true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 1 {
		t.Fatalf("after restart: %d messages, want 1", q.Messages)
	}
}

func TestProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { buf := make([]byte, 64); n, _ := c.Read(buf); c.Write(buf[:n]); c.Close() }()
		}
	}()
	p := uplinktest.NewProxy(t, ln.Addr().String())
	echo := func() (string, error) {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(300 * time.Millisecond))
		c.Write([]byte("ping"))
		buf := make([]byte, 4)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	if s, err := echo(); s != "ping" {
		t.Fatalf("echo through proxy: %q %v", s, err)
	}
	p.Stall(true)
	if s, _ := echo(); s != "" {
		t.Fatalf("stalled proxy passed %q", s)
	}
	p.Stall(false)
	p.Refuse(true)
	if s, _ := echo(); s != "" {
		t.Fatalf("refusing proxy passed %q", s)
	}
	p.Refuse(false)
	if s, err := echo(); s != "ping" {
		t.Fatalf("echo after refuse off: %q %v", s, err)
	}
}
