package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/forestwatch/forest/agent/source"
	"github.com/forestwatch/forest/agent/status"
	"github.com/forestwatch/forest/spool"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// fakeLink stands in for *uplink.Publisher in the shutdown-order test (a
// mock for this one branch; the integration test uses the real broker).
type fakeLink struct {
	mu        sync.Mutex
	published []wire.Message
	calls     chan int      // receives len(batch) when Publish is entered
	confirm   chan struct{} // closed to confirm everything
	trace     func(string)
}

func (f *fakeLink) Publish(ctx context.Context, msgs []wire.Message) ([]uplink.Result, error) {
	f.calls <- len(msgs)
	res := make([]uplink.Result, len(msgs))
	select {
	case <-f.confirm:
		f.mu.Lock()
		f.published = append(f.published, msgs...)
		f.mu.Unlock()
		for i := range res {
			res[i].Outcome = uplink.Confirmed
		}
		return res, nil
	case <-ctx.Done():
		for i := range res {
			res[i].Outcome, res[i].Err = uplink.Lost, ctx.Err()
		}
		return res, ctx.Err()
	}
}

func (f *fakeLink) Run(ctx context.Context) error {
	<-ctx.Done()
	f.trace("link run returned")
	return nil
}

func (f *fakeLink) Send(ctx context.Context, key string, m wire.Message) error {
	if st, err := wire.DecodeStatus(m); err == nil && st.State == wire.StatusStopping {
		f.trace("status report stopping")
	}
	return nil
}

func (f *fakeLink) State() uplink.Status {
	return uplink.Status{State: uplink.StateConnected, Since: time.Now()}
}

type traceLog struct {
	mu    sync.Mutex
	steps []string
}

func (l *traceLog) add(s string) { l.mu.Lock(); l.steps = append(l.steps, s); l.mu.Unlock() }
func (l *traceLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.steps)
}

// TestShutdownOrder proves the order on SIGTERM (context cancel): stop
// capture; finish the frame in flight (spooled, not dropped); wait for the
// outstanding confirms of the batch being published; close the connection;
// close the spool.
func TestShutdownOrder(t *testing.T) {
	needModel(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, tc := range []struct {
		name     string
		confirm  bool // the broker confirms (else the shutdown timeout cuts the wait)
		wantAcks int
	}{{"confirms-arrive", true, 1}, {"confirms-time-out", false, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Uplink.URL = "amqp://127.0.0.1:1/"
			cfg.Uplink.Batch = 1
			cfg.ShutdownTimeout = Duration(2 * time.Second)
			tr := &traceLog{}
			link := &fakeLink{calls: make(chan int, 10), confirm: make(chan struct{}), trace: tr.add}
			a, err := New(cfg, Options{
				Logger:       testLogger(t),
				trace:        tr.add,
				newPublisher: func(uplink.Options) (linkPublisher, error) { return link, nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			inPut := make(chan string, 4)
			releasePut := make(chan struct{})
			var n int
			var mu sync.Mutex
			a.pipe.hook = func(stage string) {
				if stage != "put" {
					return
				}
				mu.Lock()
				n++
				k := n
				mu.Unlock()
				if k == 2 { // the second frame is in flight at shutdown
					inPut <- "second"
					<-releasePut
					tr.add("frame in flight spooled")
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			frames := sampleFrames(t)
			copyFile(t, frames[0], filepath.Join(cfg.Source.Dir.Path, "a.png"))
			// The drain publishes frame 1 and waits for its confirm.
			select {
			case <-link.calls:
			case <-time.After(20 * time.Second):
				t.Fatal("drain never published")
			}
			copyFile(t, frames[1], filepath.Join(cfg.Source.Dir.Path, "b.png"))
			<-inPut
			tr.add("signal")
			cancel() // SIGTERM
			has := func(step string) bool { return slices.Contains(tr.get(), step) }
			eventually(t, 5*time.Second, "capture to be told to stop", func() bool { return has("stop capture") })
			time.Sleep(100 * time.Millisecond)
			if has("capture stopped") {
				t.Fatal("capture stopped while a frame was in flight")
			}
			tr.add("release frame")
			close(releasePut)
			eventually(t, 10*time.Second, "capture to stop", func() bool { return has("capture stopped") })
			if tc.confirm {
				time.Sleep(100 * time.Millisecond)
				if has("confirms settled") {
					t.Fatal("drain stopped before the outstanding confirms arrived")
				}
				tr.add("broker confirms")
				close(link.confirm)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("Run did not return")
			}
			want := []string{"signal", "stop capture", "release frame", "frame in flight spooled", "capture stopped"}
			if tc.confirm {
				want = append(want, "broker confirms")
			}
			want = append(want, "confirms settled", "status report stopping", "link run returned", "connection closed", "close spool")
			if got := tr.get(); !slices.Equal(got, want) {
				t.Fatalf("shutdown order\n got %q\nwant %q", got, want)
			}
			// Both frames are durable; only a confirmed frame left the spool.
			// The frame in flight may have been published by the drain's
			// second lane before the shutdown, and then confirmed too.
			q := openSpoolT(t, cfg.Spool.Dir)
			acked := len(link.published)
			if acked < tc.wantAcks || acked > 2*tc.wantAcks {
				t.Fatalf("published %d, want %d to %d", acked, tc.wantAcks, 2*tc.wantAcks)
			}
			if st := q.Stats(); st.Frames != 2-acked {
				t.Fatalf("spool holds %d frames, want %d", st.Frames, 2-acked)
			}
		})
	}
}

// TestDrainAcksOnlyConfirmed checks the drain acks exactly the confirmed
// records, releases the others for a retry and sets aside (keeps, never
// deletes) one the uplink cannot encode (mock publisher for this branch).
func TestDrainAcksOnlyConfirmed(t *testing.T) {
	a := agentWithFrames(t, 5)
	outcomes := []uplink.Outcome{uplink.Confirmed, uplink.Nacked, uplink.Confirmed, uplink.TimedOut, uplink.Unsent}
	pub := publishFunc(func(ctx context.Context, msgs []wire.Message) ([]uplink.Result, error) {
		res := make([]uplink.Result, len(msgs))
		for i := range msgs {
			if _, err := wire.Decode(msgs[i]); err != nil {
				t.Errorf("message %d does not decode: %v", i, err)
			}
			res[i] = uplink.Result{MessageID: msgs[i].MessageID, Outcome: outcomes[i]}
			if outcomes[i] != uplink.Confirmed {
				res[i].Err = errors.New(outcomes[i].String())
			}
			if i == 4 {
				res[i].Err = fmt.Errorf("header: %w", uplink.ErrInvalidMessage)
			}
		}
		return res, nil
	})
	d := &drain{q: a.q, pub: pub, batch: 5, agent: "forest-agent/test", m: a.m, status: a.status, log: testLogger(t)}
	recs, _ := a.q.Next(5)
	confirmed, ok, err := d.publish(context.Background(), recs)
	if ok || err == nil {
		t.Fatalf("publish reported success with nacks: %v %v", ok, err)
	}
	if st := a.q.Stats(); st.Frames != 4 || st.InFlight != 2 || st.QuarantinedBy["undeliverable"] != 1 {
		t.Fatalf("before the ack: %d frames, %d in flight, quarantined %v; want 4 and 2 (2 confirmed), the invalid one quarantined",
			st.Frames, st.InFlight, st.QuarantinedBy)
	}
	if err := d.ack(context.Background(), confirmed); err != nil {
		t.Fatal(err)
	}
	st := a.q.Stats()
	if st.Frames != 2 || st.InFlight != 0 || st.Quarantined != 1 {
		t.Fatalf("after 2 confirms of 5, one invalid: %d frames, %d in flight, %d quarantined; want 2, 0, 1", st.Frames, st.InFlight, st.Quarantined)
	}
	left, _ := a.q.Next(5)
	if len(left) != 2 || left[0].ID != recs[1].ID || left[1].ID != recs[3].ID {
		t.Fatalf("the unconfirmed frames should remain: %v", left)
	}
}

type publishFunc func(context.Context, []wire.Message) ([]uplink.Result, error)

func (f publishFunc) Publish(ctx context.Context, m []wire.Message) ([]uplink.Result, error) {
	return f(ctx, m)
}

// ackRecorder is a drainQueue that records the Ack calls; the first fail
// of them fail with err.
type ackRecorder struct {
	drainQueue
	calls [][]uint64
	fail  int
	err   error
}

func (r *ackRecorder) AckCount(ids ...uint64) (int, error) {
	r.calls = append(r.calls, ids)
	if len(r.calls) <= r.fail {
		return 0, r.err
	}
	return len(ids), nil
}

// TestAckerMergesBatches: batches confirmed while the acker was busy go
// into one Ack (one fsync), and the acker finishes every batch handed to it
// before it returns.
func TestAckerMergesBatches(t *testing.T) {
	m, err := status.NewMetrics(prometheus.NewRegistry(), status.Inputs{Spool: func() (spool.Stats, bool) { return spool.Stats{}, true }})
	if err != nil {
		t.Fatal(err)
	}
	q := &ackRecorder{}
	d := &drain{q: q, m: m, status: status.NewTracker(), log: testLogger(t)}
	confirmed := make(chan []uint64, 3)
	confirmed <- []uint64{1, 2}
	confirmed <- []uint64{3}
	confirmed <- []uint64{4, 5}
	close(confirmed)
	if err := d.acker(context.Background(), confirmed, func() { t.Error("stopped") }); err != nil {
		t.Fatal(err)
	}
	if len(q.calls) != 1 || !slices.Equal(q.calls[0], []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("Ack calls %v, want one with 1..5", q.calls)
	}
	if _, _, got := d.status.Snapshot(); got != 5 {
		t.Fatalf("published %d, want 5", got)
	}
}

// TestAckRetried: a failed Ack (an I/O error) is retried until it
// succeeds, and counted once; a broken spool stops the drain with an error
// instead.
func TestAckRetried(t *testing.T) {
	m, err := status.NewMetrics(prometheus.NewRegistry(), status.Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	q := &ackRecorder{fail: 2, err: errors.New("input/output error")}
	d := &drain{q: q, m: m, status: status.NewTracker(), log: testLogger(t), backoffMin: time.Millisecond, backoffMax: 4 * time.Millisecond}
	if err := d.ack(context.Background(), []uint64{7, 8}); err != nil {
		t.Fatal(err)
	}
	if _, _, got := d.status.Snapshot(); len(q.calls) != 3 || got != 2 {
		t.Fatalf("%d Ack calls, %d published; want 3 calls and 2 published", len(q.calls), got)
	}
	broken := &ackRecorder{fail: 100, err: fmt.Errorf("ack: %w", spool.ErrBroken)}
	d.q = broken
	confirmed := make(chan []uint64, 2)
	confirmed <- []uint64{9}
	close(confirmed)
	stopped := false
	if err := d.acker(context.Background(), confirmed, func() { stopped = true }); !errors.Is(err, spool.ErrBroken) || !stopped {
		t.Fatalf("acker on a broken spool: %v (stopped %v), want ErrBroken and a stop", err, stopped)
	}
	if len(broken.calls) != 1 {
		t.Fatalf("a broken spool was asked %d times", len(broken.calls))
	}
}

// TestDrainMeasuresPublishWait: frames that wait for the broker through
// failed attempts (the link down for 700 ms) are measured from their first
// attempt to their confirm, so forest_agent_publish_wait_seconds shows how
// long a failover kept them waiting (mock publisher for this branch; the
// cluster test measures real failovers with it).
func TestDrainMeasuresPublishWait(t *testing.T) {
	a := agentWithFrames(t, 3)
	const down = 700 * time.Millisecond
	upAt := time.Now().Add(down)
	pub := publishFunc(func(ctx context.Context, msgs []wire.Message) ([]uplink.Result, error) {
		res := make([]uplink.Result, len(msgs))
		for i := range msgs {
			res[i].MessageID = msgs[i].MessageID
			if time.Now().Before(upAt) {
				res[i].Err = uplink.ErrNotConnected
			} else {
				res[i].Outcome = uplink.Confirmed
			}
		}
		if time.Now().Before(upAt) {
			return res, uplink.ErrNotConnected
		}
		return res, nil
	})
	d := &drain{q: a.q, pub: pub, batch: 64, agent: "forest-agent/test", m: a.m, status: a.status, log: testLogger(t),
		backoffMin: 20 * time.Millisecond, backoffMax: 50 * time.Millisecond}
	stop, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(stop, context.Background()) }()
	deadline := time.Now().Add(10 * time.Second)
	for a.q.Stats().Frames > 0 {
		if time.Now().After(deadline) {
			t.Fatal("frames not drained within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var m dto.Metric
	if err := a.m.PublishWait.Write(&m); err != nil {
		t.Fatal(err)
	}
	h := m.GetHistogram()
	if h.GetSampleCount() < 1 {
		t.Fatal("no publish wait observed")
	}
	// The longest wait is at least the outage; every observation is at
	// most the whole test.
	if h.GetSampleSum() < down.Seconds() {
		t.Fatalf("publish waits sum to %.3fs over %d batches; the link was down %s", h.GetSampleSum(), h.GetSampleCount(), down)
	}
	if h.GetSampleSum() > float64(h.GetSampleCount())*time.Since(upAt.Add(-down)).Seconds() {
		t.Fatalf("publish waits sum to %.3fs over %d batches: longer than the test", h.GetSampleSum(), h.GetSampleCount())
	}
}

// connectedLink is a publisher that is down until up is closed, and says
// so through Connected, as *uplink.Publisher does.
type connectedLink struct {
	up chan struct{}
}

func (c *connectedLink) Connected() <-chan struct{} { return c.up }

func (c *connectedLink) Publish(ctx context.Context, msgs []wire.Message) ([]uplink.Result, error) {
	res := make([]uplink.Result, len(msgs))
	select {
	case <-c.up:
	default:
		for i := range res {
			res[i].Err = uplink.ErrNotConnected
		}
		return res, uplink.ErrNotConnected
	}
	for i := range res {
		res[i].Outcome = uplink.Confirmed
	}
	return res, nil
}

// TestDrainResumesWhenConnected: a drain that found the link down resumes
// as soon as the publisher connects again, not at the end of its backoff
// (5 s here): after a cluster node dies, frames wait only for the
// reconnection to the next node.
func TestDrainResumesWhenConnected(t *testing.T) {
	needModel(t)
	cfg := testConfig(t)
	a, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	data, _ := os.ReadFile(sampleFrames(t)[0])
	if err := a.pipe.handle(context.Background(), &source.Capture{Source: "dir", Name: "f", Data: data, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	link := &connectedLink{up: make(chan struct{})}
	d := &drain{q: a.q, pub: link, batch: 64, agent: "forest-agent/test", m: a.m, status: a.status, log: testLogger(t),
		backoffMin: 5 * time.Second, backoffMax: 5 * time.Second}
	stop, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(stop, context.Background()) }()
	time.Sleep(300 * time.Millisecond) // the drain tries, finds the link down and waits
	upAt := time.Now()
	close(link.up)
	for a.q.Stats().Frames > 0 {
		if time.Since(upAt) > 3*time.Second {
			t.Fatal("the drain did not resume within 3 s of the link coming up (its backoff is 5 s)")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("drained %s after the link came up", time.Since(upAt).Round(time.Millisecond))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// agentWithFrames returns an agent of the test config (closed on cleanup)
// whose spool holds the first n sample frames, captured now.
func agentWithFrames(t *testing.T, n int) *Agent {
	t.Helper()
	needModel(t)
	a, err := New(testConfig(t), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	for i, f := range sampleFrames(t)[:n] {
		data, _ := os.ReadFile(f)
		if err := a.pipe.handle(context.Background(), &source.Capture{Source: "dir", Name: fmt.Sprint(i), Data: data, Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	return a
}
