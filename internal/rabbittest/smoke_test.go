package rabbittest_test

import (
	"context"
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
