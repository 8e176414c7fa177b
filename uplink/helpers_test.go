package uplink_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

func TestMain(m *testing.M) { rabbittest.Main(m) }

// leakCheck verifies, after every cleanup registered later has run, that
// the test left no goroutine behind. Call it after starting brokers.
func leakCheck(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	// A broker restarted by the test has a new process-wait goroutine that
	// the harness ends when it stops the broker, after this check.
	harness := goleak.IgnoreAnyFunction("github.com/forestwatch/forest/internal/rabbittest.(*Broker).boot.func1")
	t.Cleanup(func() { goleak.VerifyNone(t, opt, harness) })
}

// testOptions are short timeouts so that failures show within seconds.
func testOptions(url string) uplink.Options {
	var h slog.Handler = slog.DiscardHandler
	if os.Getenv("UPLINK_TEST_LOG") != "" {
		h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	return uplink.Options{
		URL:             url,
		DeclareExchange: true,
		Window:          16,
		ConfirmTimeout:  5 * time.Second,
		DialTimeout:     3 * time.Second,
		Heartbeat:       time.Second,
		BackoffMin:      50 * time.Millisecond,
		BackoffMax:      500 * time.Millisecond,
		CloseTimeout:    2 * time.Second,
		Logger:          slog.New(h),
	}
}

// start creates a Publisher and runs it until the test ends.
func start(t *testing.T, o uplink.Options) *uplink.Publisher {
	t.Helper()
	p, err := uplink.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return within 15s of cancel")
		}
	})
	return p
}

// waitState polls until the publisher reaches st.
func waitState(t *testing.T, p *uplink.Publisher, st uplink.LinkState, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if p.State().State == st {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("state %v after %s, want %v (last error %v)", p.State().State, within, st, p.State().LastError)
}

// frames returns n messages of size body bytes with distinct ids.
func frames(t testing.TB, prefix string, n, size int) []wire.Message {
	t.Helper()
	out := make([]wire.Message, n)
	for i := range out {
		body := make([]byte, size)
		_, _ = rand.Read(body)
		out[i] = wire.Message{
			ContentType: wire.JPEG,
			MessageID:   fmt.Sprintf("%s-%05d", prefix, i),
			Timestamp:   time.Now().UTC().Truncate(time.Second),
			AppID:       "forest-agent/test",
			Type:        wire.Type(),
			Headers:     map[string]any{wire.HeaderDevice: "dev-1", wire.HeaderSeq: int64(i)},
			Body:        body,
		}
	}
	return out
}

// ledger is what a drain loop learns from the publisher: which ids the
// broker confirmed and how often each outcome was reported.
type ledger struct {
	mu        sync.Mutex
	confirmed map[string]int
	outcomes  map[uplink.Outcome]int
	errs      map[string]int
}

func newLedger() *ledger {
	return &ledger{confirmed: map[string]int{}, outcomes: map[uplink.Outcome]int{}, errs: map[string]int{}}
}

// deliverAll plays the agent's drain loop: publish the unconfirmed messages
// oldest first in batches, keep what was not confirmed, back off on
// ErrNotConnected, until every message was confirmed or ctx ends.
func deliverAll(ctx context.Context, t *testing.T, p *uplink.Publisher, msgs []wire.Message, batch int, l *ledger) error {
	left := append([]wire.Message(nil), msgs...)
	for len(left) > 0 {
		if ctx.Err() != nil {
			l.mu.Lock()
			defer l.mu.Unlock()
			return fmt.Errorf("%d of %d messages never confirmed; outcomes %v errors %v", len(left), len(msgs), l.outcomes, l.errs)
		}
		n := min(batch, len(left))
		res, err := p.Publish(ctx, left[:n])
		var keep []wire.Message
		l.mu.Lock()
		for i, r := range res {
			l.outcomes[r.Outcome]++
			if r.Outcome == uplink.Confirmed {
				l.confirmed[r.MessageID]++
				if r.Err != nil {
					t.Errorf("confirmed with error %v", r.Err)
				}
			} else {
				keep = append(keep, left[i])
			}
		}
		if err != nil {
			l.errs[errKind(err)]++
		}
		l.mu.Unlock()
		left = append(keep, left[n:]...)
		if err != nil || len(keep) == n {
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// confirmedCount is how many distinct ids were confirmed so far.
func (l *ledger) confirmedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.confirmed)
}

func errKind(err error) string {
	for _, e := range []error{uplink.ErrNotConnected, uplink.ErrConnectionLost, uplink.ErrConfirmTimeout, context.DeadlineExceeded, context.Canceled} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return "other: " + err.Error()
}

// queued empties queue and returns how many copies of each message id it held.
func queued(t *testing.T, url, queue string) map[string]int {
	t.Helper()
	got := map[string]int{}
	rabbittest.WithChannel(t, url, func(ch *amqp.Channel) {
		for {
			d, ok, err := ch.Get(queue, true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				return
			}
			got[d.MessageId]++
		}
	})
	return got
}

// checkDelivered asserts the durability contract: every message was
// confirmed at least once, and every confirmed id is in the queue.
func checkDelivered(t *testing.T, msgs []wire.Message, l *ledger, inQueue map[string]int) {
	t.Helper()
	for _, m := range msgs {
		if l.confirmed[m.MessageID] == 0 {
			t.Errorf("%s never confirmed", m.MessageID)
		}
	}
	for id := range l.confirmed {
		if inQueue[id] == 0 {
			t.Errorf("%s reported confirmed but not in the queue", id)
		}
	}
	dups := 0
	for _, n := range inQueue {
		dups += n - 1
	}
	t.Logf("%d messages, outcomes %v, batch errors %v, %d duplicates in queue", len(msgs), l.outcomes, l.errs, dups)
}
