package cloud_test

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/rabbittest"
)

// vhost is the name of e's vhost.
func (e *env) vhost(t testing.TB) string {
	t.Helper()
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

// applyPolicy applies p as an operator does, with rabbitmqctl set_policy
// (the command Policy.Command prints).
func (e *env) applyPolicy(t testing.TB, p cloud.Policy) {
	t.Helper()
	if p.Vhost != e.vhost(t) {
		t.Fatalf("policy for vhost %q, test vhost %q", p.Vhost, e.vhost(t))
	}
	e.broker.Ctl(t, "set_policy", "-p", p.Vhost, "--apply-to", p.ApplyTo, "--priority", strconv.Itoa(p.Priority),
		p.Name, p.Pattern, p.DefinitionJSON())
}

// queueInfo is rabbitmqctl's view of the frames queue: its name, the
// policy in force and its arguments.
func (e *env) queueInfo(t testing.TB) string {
	t.Helper()
	out := e.broker.Ctl(t, "list_queues", "-p", e.vhost(t), "--no-table-headers", "name", "policy", "arguments")
	for _, ln := range strings.Split(out, "\n") {
		if strings.HasPrefix(ln, e.cfg.AMQP.Queue+"\t") {
			return ln
		}
	}
	t.Fatalf("queue %s not listed:\n%s", e.cfg.AMQP.Queue, out)
	return ""
}

// TestPolicy: the frames queue's settings come from a policy, so an
// operator changes the delivery limit on the running queue and the next
// message obeys it; a consumer restarted with another delivery_limit
// starts (no PRECONDITION_FAILED), and the queue carries no argument but
// its type.
func TestPolicy(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	srv := startS3(t)
	e := newEnv(t, srv, "dev-a", "dev-poison")
	var fail atomic.Bool
	fail.Store(true)
	e.cfg.S3.Endpoint = failingS3(t, srv.Endpoint, "/frames/dev-poison/", &fail)
	e.cfg.AMQP.DeliveryLimit = 2
	e.cfg.S3.RetryMaxElapsed = 200 * time.Millisecond
	e.cfg.S3.RequestTimeout = time.Second
	p := cloud.PolicyFor(e.cfg)
	if !strings.Contains(p.Command(), "rabbitmqctl set_policy -p ") || !strings.Contains(p.DefinitionJSON(), `"delivery-limit":2`) {
		t.Fatalf("policy %+v: %s", p, p.Command())
	}
	e.applyPolicy(t, p)
	e.declare(t)
	info := e.queueInfo(t)
	if !strings.Contains(info, p.Name) || strings.Contains(info, "x-delivery-limit") || strings.Contains(info, "x-dead-letter") {
		t.Fatalf("queue does not take its settings from the policy: %s", info)
	}
	r := e.start(t, nil)
	waitFor(t, 30*time.Second, "ready", r.svc.Ready)
	requeued := func() float64 { return counter(r.reg, "forest_cloud_messages_total", "result", "requeued") }
	poisonUntilDeadLettered := func(n, dlq int) float64 {
		t.Helper()
		before := requeued()
		e.publishFrames(t, []frame{makeFrame(t, e.cfg.S3.Prefix, "dev-poison", n, rabbittest.AdminUser)})
		waitFor(t, 60*time.Second, "dead-lettered by the broker", func() bool {
			return e.queueDepth(t, e.cfg.AMQP.DeadLetterQueue) == dlq
		})
		time.Sleep(200 * time.Millisecond)
		return requeued() - before
	}
	// Delivered limit+1 times: returned limit+1 times, dead-lettered at the last.
	if n := poisonUntilDeadLettered(1, 1); n != 3 {
		t.Errorf("with delivery-limit 2 the message was returned %v times, want 3", n)
	}
	raised := *e.cfg
	raised.AMQP.DeliveryLimit = 4
	e.applyPolicy(t, cloud.PolicyFor(&raised))
	if n := poisonUntilDeadLettered(2, 2); n != 5 {
		t.Errorf("after the policy raised delivery-limit to 4 the message was returned %v times, want 5", n)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	// A consumer with the new delivery_limit starts on the same queue.
	r2 := e.start(t, &raised)
	waitFor(t, 30*time.Second, "restarted consumer ready", r2.svc.Ready)
	if n := counter(r2.reg, "forest_cloud_queue_legacy_arguments"); n != 0 {
		t.Errorf("queue reported as declared with arguments: %v", n)
	}
}

// TestQueueMigration: a queue an earlier version declared with arguments
// (x-delivery-limit, x-dead-letter-exchange) keeps working, is reported,
// and `MigrateQueue` re-creates it without them while a device keeps
// publishing; then the policy governs it and every frame is stored once.
func TestQueueMigration(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	e := newEnv(t, nil)
	a := e.cfg.AMQP
	// The topology as earlier versions declared it.
	rabbittest.WithChannel(t, e.url, func(ch *amqp.Channel) {
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(ch.ExchangeDeclare(a.Exchange, amqp.ExchangeTopic, true, false, false, false, nil))
		must(ch.ExchangeDeclare(a.DeadLetterExchange, amqp.ExchangeFanout, true, false, false, false, nil))
		_, err := ch.QueueDeclare(a.DeadLetterQueue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
		must(err)
		must(ch.QueueBind(a.DeadLetterQueue, "", a.DeadLetterExchange, false, nil))
		_, err = ch.QueueDeclare(a.Queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum,
			"x-dead-letter-exchange": a.DeadLetterExchange, "x-delivery-limit": int64(20)})
		must(err)
		must(ch.QueueBind(a.Queue, a.BindingKey, a.Exchange, false, nil))
	})
	frames := manyFrames(t, e.cfg.S3.Prefix, 300)
	e.publishFrames(t, frames[:100])
	r := e.start(t, nil)
	waitFor(t, 60*time.Second, "stored from the old queue", func() bool {
		return counter(r.reg, "forest_cloud_messages_total", "result", "stored") == 100
	})
	if n := counter(r.reg, "forest_cloud_queue_legacy_arguments"); n != 1 {
		t.Errorf("queue with arguments not reported: %v", n)
	}
	// Migration refuses while a consumer runs.
	if _, err := cloud.MigrateQueue(t.Context(), e.cfg, t.Logf); err == nil || !strings.Contains(err.Error(), "stop the forest-cloud replicas") {
		t.Errorf("migrate with a consumer running: %v", err)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.publishFrames(t, frames[100:200]) // a backlog in the old queue
	// A device keeps publishing while the queue is migrated.
	pubDone := make(chan error, 1)
	go func() {
		conn, err := amqp.Dial(e.url)
		if err != nil {
			pubDone <- err
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err == nil {
			err = ch.Confirm(false)
		}
		for _, f := range frames[200:] {
			if err != nil {
				break
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			var dc *amqp.DeferredConfirmation
			if dc, err = ch.PublishWithDeferredConfirmWithContext(ctx, a.Exchange, "frames."+f.f.Device, true, false, f.pub); err == nil {
				if ok, werr := dc.WaitContext(ctx); werr != nil || !ok {
					err = werr
				}
			}
			cancel()
			time.Sleep(5 * time.Millisecond)
		}
		pubDone <- err
	}()
	moved, err := cloud.MigrateQueue(t.Context(), e.cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	if moved < 200 {
		t.Errorf("moved %d messages, want the backlog of 100 moved out and back", moved)
	}
	if info := e.queueInfo(t); strings.Contains(info, "x-delivery-limit") || strings.Contains(info, "x-dead-letter-exchange") {
		t.Errorf("queue still has arguments after the migration: %s", info)
	}
	if n, err := cloud.MigrateQueue(t.Context(), e.cfg, t.Logf); n != 0 || err != nil {
		t.Errorf("second migration: %d %v", n, err)
	}
	e.applyPolicy(t, cloud.PolicyFor(e.cfg))
	if info := e.queueInfo(t); !strings.Contains(info, e.cfg.AMQP.PolicyName) {
		t.Errorf("policy not in force after the migration: %s", info)
	}
	r2 := e.start(t, nil)
	waitFor(t, 60*time.Second, "every frame stored", func() bool {
		return counter(r2.reg, "forest_cloud_messages_total", "result", "stored") == 200 && e.queueDepth(t, a.Queue) == 0
	})
	if n := counter(r2.reg, "forest_cloud_queue_legacy_arguments"); n != 0 {
		t.Errorf("migrated queue reported as declared with arguments: %v", n)
	}
	if err := r2.stop(); err != nil {
		t.Fatal(err)
	}
	if d := e.queueDepth(t, a.DeadLetterQueue); d != 0 {
		t.Errorf("%d dead letters", d)
	}
	e.verifyExactlyOnce(t, frames)
}
