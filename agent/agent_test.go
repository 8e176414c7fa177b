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
			a.pipe.hook = func(string) {
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
			want = append(want, "confirms settled", "link run returned", "connection closed", "close spool")
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
	needModel(t)
	cfg := testConfig(t)
	a, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for i, f := range sampleFrames(t)[:5] {
		data, _ := os.ReadFile(f)
		if err := a.pipe.handle(context.Background(), &source.Capture{Source: "dir", Name: fmt.Sprint(i), Data: data, Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
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
	if st := a.q.Stats(); st.Frames != 5 || st.InFlight != 3 {
		t.Fatalf("before the ack: %d frames, %d in flight; want 5 and 3 (2 confirmed, 1 invalid)", st.Frames, st.InFlight)
	}
	d.ack(confirmed)
	st := a.q.Stats()
	if st.Frames != 3 || st.InFlight != 1 {
		t.Fatalf("after 2 confirms of 5, one invalid: %d frames, %d in flight; want 3 and 1 (the invalid one set aside)", st.Frames, st.InFlight)
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

// ackRecorder is a drainQueue that records the Ack calls.
type ackRecorder struct {
	drainQueue
	calls [][]uint64
}

func (r *ackRecorder) Ack(ids ...uint64) error {
	r.calls = append(r.calls, ids)
	return nil
}

// TestAckerMergesBatches: batches confirmed while the acker was busy go
// into one Ack (one fsync), and the acker finishes every batch handed to it
// before it returns.
func TestAckerMergesBatches(t *testing.T) {
	m, err := status.NewMetrics(prometheus.NewRegistry(), func() (spool.Stats, bool) { return spool.Stats{}, true }, func() float64 { return 1 })
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
	d.acker(confirmed)
	if len(q.calls) != 1 || !slices.Equal(q.calls[0], []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("Ack calls %v, want one with 1..5", q.calls)
	}
	if _, _, got := d.status.Snapshot(); got != 5 {
		t.Fatalf("published %d, want 5", got)
	}
}
