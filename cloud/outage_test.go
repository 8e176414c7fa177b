package cloud_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/freeport"
)

// TestS3Outage takes S3 away for longer than 3 × delivery_limit × the
// retry window (what would have dead-lettered every waiting message when
// each failed delivery was returned to the queue), while a backlog waits
// and new frames keep arriving: once with the server killed (connections
// refused) and once with it stopped by SIGSTOP (connections hang). The
// circuit breaker pauses consumption and parks what the consumer held, so
// afterwards nothing is dead-lettered, no message was ever returned as its
// own failure, and every frame is in S3 exactly once.
func TestS3Outage(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	if testing.Short() {
		t.Skip("-short")
	}
	for _, mode := range []string{"refused", "hung"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			srv := startS3(t)
			e := newEnv(t, srv)
			e.cfg.AMQP.DeliveryLimit = 3
			e.cfg.S3.RetryMaxElapsed = 2 * time.Second
			e.cfg.S3.RequestTimeout = time.Second
			e.cfg.S3.RetryMax = 2 * time.Second
			// One failed delivery costs a message at most its retry window
			// plus a request timeout.
			window := e.cfg.S3.RetryMaxElapsed + e.cfg.S3.RequestTimeout
			outage := 3*time.Duration(e.cfg.AMQP.DeliveryLimit)*window + 5*time.Second
			e.declare(t)
			frames := manyFrames(t, e.cfg.S3.Prefix, 400)
			backlog, live := frames[:300], frames[300:]
			e.publishFrames(t, backlog)
			r := e.start(t, nil)
			waitFor(t, 30*time.Second, "some frames stored", func() bool {
				return counter(r.reg, "forest_cloud_messages_total", "result", "stored") >= 20
			})
			start := time.Now()
			if mode == "hung" {
				srv.Pause(t)
			} else {
				srv.Stop(t)
			}
			t.Logf("S3 %s for %s (3 × delivery_limit %d × window %s + 5s)", mode, outage, e.cfg.AMQP.DeliveryLimit, window)
			// Live traffic throughout the outage.
			for i, f := range live {
				e.publishFrames(t, []frame{f})
				time.Sleep(time.Until(start.Add(time.Duration(i+1) * (outage - 5*time.Second) / time.Duration(len(live)))))
				if i == len(live)/2 {
					// Half-way through the outage the breaker is open
					// (a request timeout and a probe after it began).
					if ok, why := r.svc.Readiness(); ok || !strings.Contains(why, "S3 failing") {
						t.Errorf("readiness during the outage: %v %q", ok, why)
					}
				}
			}
			pausedAt := counter(r.reg, "forest_cloud_messages_total", "result", "stored")
			time.Sleep(time.Until(start.Add(outage)))
			if n := counter(r.reg, "forest_cloud_messages_total", "result", "stored"); n != pausedAt {
				t.Errorf("%v frames stored while S3 was %s", n-pausedAt, mode)
			}
			if mode == "hung" {
				srv.Resume(t)
			} else {
				srv.Start(t)
			}
			t.Logf("S3 back after %s: %v stored, %v parked, %v requeued, %v S3 errors, %v probes failed",
				time.Since(start).Round(time.Second), pausedAt,
				counter(r.reg, "forest_cloud_messages_total", "result", "parked"),
				counter(r.reg, "forest_cloud_messages_total", "result", "requeued"),
				counter(r.reg, "forest_cloud_s3_errors_total"),
				counter(r.reg, "forest_cloud_s3_probes_total", "result", "failed"))
			waitFor(t, 120*time.Second, "backlog cleared", func() bool {
				return counter(r.reg, "forest_cloud_messages_total", "result", "stored")+
					counter(r.reg, "forest_cloud_messages_total", "result", "duplicate") >= float64(len(frames)) &&
					e.queueDepth(t, e.cfg.AMQP.Queue) == 0
			})
			if !r.svc.Ready() {
				t.Error("not ready after S3 came back")
			}
			if err := r.stop(); err != nil {
				t.Fatal(err)
			}
			if n := counter(r.reg, "forest_cloud_dead_letters_total"); n != 0 {
				t.Errorf("%v dead letters", n)
			}
			if d := e.queueDepth(t, e.cfg.AMQP.DeadLetterQueue); d != 0 {
				t.Errorf("%d messages in the dead-letter queue", d)
			}
			if n := counter(r.reg, "forest_cloud_messages_total", "result", "requeued"); n != 0 {
				t.Errorf("%v messages returned to the queue as their own failure", n)
			}
			if n := counter(r.reg, "forest_cloud_s3_outages_total"); n < 1 {
				t.Errorf("breaker opened %v times", n)
			}
			e.verifyExactlyOnce(t, frames)
		})
	}
}

// TestStartWhileS3Down starts the service while S3 is down: it stays up,
// /readyz says it waits for S3, it takes nothing from the queue, and once
// S3 answers it consumes and stores everything.
func TestStartWhileS3Down(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	srv := startS3(t)
	e := newEnv(t, srv)
	e.declare(t)
	frames := manyFrames(t, e.cfg.S3.Prefix, 30)
	e.publishFrames(t, frames)
	srv.Stop(t)
	port := freePort(t)
	cfg := *e.cfg
	cfg.HTTP.Listen = fmt.Sprintf("127.0.0.1:%d", port)
	r := e.start(t, &cfg)
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + cfg.HTTP.Listen + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, 30*time.Second, "/readyz saying it waits for S3", func() bool {
		code, body := readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "S3 does not answer")
	})
	time.Sleep(3 * time.Second)
	if d := e.queueDepth(t, e.cfg.AMQP.Queue); d != len(frames) {
		t.Errorf("%d of %d messages left in the queue while S3 was down", d, len(frames))
	}
	srv.Start(t)
	waitFor(t, 60*time.Second, "frames stored", func() bool {
		return counter(r.reg, "forest_cloud_messages_total", "result", "stored") == float64(len(frames))
	})
	if code, body := readyz(); code != http.StatusOK {
		t.Errorf("/readyz after S3 came back: %d %q", code, body)
	}
	http.DefaultClient.CloseIdleConnections()
	e.verifyExactlyOnce(t, frames)
}

// failingS3 is a reverse proxy in front of a real S3 server that answers
// 500 to every PUT under one key prefix while fail is set: a failure that
// is one message's own, since every other request (the breaker's probes
// included) goes through.
func failingS3(t *testing.T, target, prefix string, fail *atomic.Bool) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() && r.Method == http.MethodPut && strings.Contains(r.URL.Path, prefix) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	return ts.URL
}

func freePort(t *testing.T) int {
	t.Helper()
	ports, err := freeport.Ports(1)
	if err != nil {
		t.Fatal(err)
	}
	return ports[0]
}
