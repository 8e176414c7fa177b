package cloud_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/forestwatch/forest/cloud"
)

// TestStartupChecks: a missing bucket and an unreachable broker stop the
// service with a message saying what is missing and how to fix it.
func TestStartupChecks(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()

	cfg := *e.cfg
	cfg.S3.Bucket = "no-such-bucket-forest"
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
	r := e.start(t, nil)
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
	code, body := get("/metrics")
	for _, want := range []string{"forest_cloud_messages_total{result=\"stored\"} 100", "forest_cloud_s3_put_seconds_bucket", "forest_cloud_broker_connected 1"} {
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
