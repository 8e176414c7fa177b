package cloud_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/freeport"
	"github.com/forestwatch/forest/internal/rabbittest"
)

// TestStartupChecks: a missing bucket and an unreachable broker stop the
// service with a message saying what is missing and how to fix it.
func TestStartupChecks(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	e := newEnv(t, nil)
	ctx := context.Background()

	cfg := *e.cfg
	cfg.S3.Bucket = "no-such-bucket-forest"
	cfg.HTTP.Listen = fmt.Sprintf("127.0.0.1:%d", freePort(t)) // stopped on the way out
	svc, err := cloud.New(ctx, cloud.Options{Config: &cfg})
	if err != nil {
		t.Fatal(err)
	}
	err = svc.Run(ctx)
	var se *cloud.StartupError
	if !errors.Is(err, cloud.ErrStartup) || !errors.As(err, &se) || !strings.Contains(se.Fix, "create the bucket") {
		t.Errorf("missing bucket: %v", err)
	}

	cfg = *e.cfg
	cfg.S3.SecretAccessKey = "wrong-secret"
	svc, _ = cloud.New(ctx, cloud.Options{Config: &cfg})
	if err := svc.Check(ctx); !errors.As(err, &se) || !strings.HasPrefix(se.Check, "s3 bucket") {
		t.Errorf("wrong secret: %v", err)
	}

	cfg = *e.cfg
	cfg.AMQP.URL = "amqp://nobody:nothing@127.0.0.1:1/"
	svc, _ = cloud.New(ctx, cloud.Options{Config: &cfg})
	if err := svc.Check(ctx); !errors.As(err, &se) || se.Check != "broker" || !strings.Contains(se.Fix, "amqp.url") {
		t.Errorf("no broker: %v", err)
	}
}

// TestHTTPAndReconnect: /healthz, /readyz and /metrics answer; when the
// broker closes the consumer's connection it reconnects and goes on.
func TestHTTPAndReconnect(t *testing.T) {
	e := newEnv(t, nil)
	noLeaks(t)
	e.declare(t)
	ports, err := freeport.Ports(1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := *e.cfg
	cfg.HTTP.Listen = fmt.Sprintf("127.0.0.1:%d", ports[0])
	r := e.start(t, &cfg)
	h := r.svc.Handler()
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	waitFor(t, 30*time.Second, "ready", r.svc.Ready)
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz %d", code)
	}
	// The same over the configured listener.
	resp, err := http.Get("http://" + cfg.HTTP.Listen + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("GET /readyz over http: %v %v", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	frames := manyFrames(t, e.cfg.S3.Prefix, 100)
	e.publishFrames(t, frames[:50])
	waitFor(t, 30*time.Second, "first half", func() bool {
		return counter(r.reg, "forest_cloud_messages_total", "result", "stored") == 50
	})
	vhost := e.url[strings.LastIndex(e.url, "/")+1:]
	e.broker.Ctl(t, "close_all_connections", "-p", vhost, "test: connection cut")
	e.publishFrames(t, frames[50:])
	waitFor(t, 30*time.Second, "second half", func() bool {
		return counter(r.reg, "forest_cloud_messages_total", "result", "stored") == 100
	})
	if n := counter(r.reg, "forest_cloud_broker_reconnects_total"); n < 1 {
		t.Errorf("reconnects %v", n)
	}
	// The queue deleted under the consumer: the broker cancels it; the
	// service reconnects, declares the queue again and goes on.
	rabbittest.WithChannel(t, e.url, func(ch *amqp.Channel) {
		if _, err := ch.QueueDelete(e.cfg.AMQP.Queue, false, false, false); err != nil {
			t.Fatal(err)
		}
	})
	waitFor(t, 30*time.Second, "second reconnect", func() bool {
		return counter(r.reg, "forest_cloud_broker_reconnects_total") >= 2 && r.svc.Ready()
	})
	more := manyFrames(t, e.cfg.S3.Prefix, 110)[100:]
	e.publishFrames(t, more)
	waitFor(t, 30*time.Second, "frames after the queue came back", func() bool {
		return counter(r.reg, "forest_cloud_messages_total", "result", "stored") == 110
	})
	frames = append(frames, more...)
	code, body := get("/metrics")
	for _, want := range []string{"forest_cloud_messages_total{result=\"stored\"} 110", "forest_cloud_s3_put_seconds_bucket", "forest_cloud_broker_connected 1"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz after stop: %d", code)
	}
	e.verifyExactlyOnce(t, frames)
}

// TestDeliveryLimit: a message whose own S3 writes keep failing (500 for
// its keys only, while S3 answers the breaker's probes and stores other
// frames) is returned to the queue after each retry window and never
// acknowledged; past the delivery limit the broker dead-letters it, and
// dlq list shows the reason. Once the fault is gone, requeueing stores it.
func TestDeliveryLimit(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	srv := startS3(t)
	e := newEnv(t, srv, "dev-a", "dev-poison")
	var fail atomic.Bool
	fail.Store(true)
	e.cfg.S3.Endpoint = failingS3(t, srv.Endpoint, "/frames/dev-poison/", &fail)
	e.cfg.AMQP.DeliveryLimit = 2
	e.cfg.S3.RetryMaxElapsed = 200 * time.Millisecond
	e.cfg.S3.RequestTimeout = time.Second
	e.declare(t)
	r := e.start(t, nil)
	waitFor(t, 30*time.Second, "ready", r.svc.Ready)
	f := makeFrame(t, e.cfg.S3.Prefix, "dev-poison", 1, "forest-admin")
	good := makeFrame(t, e.cfg.S3.Prefix, "dev-a", 2, "forest-admin")
	e.publishFrames(t, []frame{f, good})
	waitFor(t, 60*time.Second, "dead-lettered by the broker", func() bool {
		return e.queueDepth(t, e.cfg.AMQP.DeadLetterQueue) == 1
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if n := counter(r.reg, "forest_cloud_messages_total", "result", "requeued"); n < 2 {
		t.Errorf("requeued %v times, want >= 2", n)
	}
	if n := counter(r.reg, "forest_cloud_messages_total", "result", "stored"); n != 1 {
		t.Errorf("stored %v, want the good frame only", n)
	}
	if n := counter(r.reg, "forest_cloud_dead_letters_total") + counter(r.reg, "forest_cloud_s3_outages_total"); n != 0 {
		t.Errorf("own failure taken for poison or an outage: %v", n)
	}
	dls, err := cloud.ListDeadLetters(t.Context(), e.cfg, cloud.DLQOptions{})
	if err != nil || len(dls) != 1 || dls[0].Reason != "delivery_limit" || dls[0].User != "" || dls[0].RoutingKey != "frames.dev-poison" {
		t.Fatalf("dead letters %+v %v", dls, err)
	}
	fail.Store(false)
	if n, err := cloud.RequeueDeadLetters(t.Context(), e.cfg, cloud.DLQOptions{}); n != 1 || err != nil {
		t.Fatalf("requeue %d %v", n, err)
	}
	r2 := e.start(t, nil)
	waitFor(t, 30*time.Second, "stored", func() bool {
		return counter(r2.reg, "forest_cloud_messages_total", "result", "stored") == 1
	})
	e.verifyExactlyOnce(t, []frame{f, good})
}

// TestNoConditionalNoChecksum: for servers without If-None-Match or
// flexible checksums, a HEAD-before-PUT mode still stores frames once and
// suppresses redeliveries (here with all of a frame's objects written at
// once, s3.sidecar_last false).
func TestNoConditionalNoChecksum(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	e := newEnv(t, nil)
	no := false
	e.cfg.S3.ConditionalPut = &no
	e.cfg.S3.Checksum = "none"
	e.cfg.S3.SidecarLast = &no
	e.declare(t)
	frames := manyFrames(t, e.cfg.S3.Prefix, 10)
	e.publishFrames(t, frames)
	e.publishFrames(t, frames[:3])
	r := e.start(t, nil)
	waitFor(t, 30*time.Second, "handled", func() bool { return counter(r.reg, "forest_cloud_messages_total") == 13 })
	if n := counter(r.reg, "forest_cloud_messages_total", "result", "duplicate"); n != 3 {
		t.Errorf("%v duplicates", n)
	}
	e.verifyExactlyOnce(t, frames)
}
