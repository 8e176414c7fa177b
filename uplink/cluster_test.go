package uplink_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// steady publishes a stream of messages at a fixed rate, as a device's
// drain does, keeping every unconfirmed message for the next batch, and
// records for each message how long it waited from its first publish
// attempt to its confirm.
type steady struct {
	t     *testing.T
	p     *uplink.Publisher
	every time.Duration // one batch of perTick new messages per tick
	per   int

	mu      sync.Mutex
	sent    []wire.Message
	l       *ledger
	first   map[string]time.Time
	waited  map[string]time.Duration
	confirm map[string]time.Time
}

func (s *steady) run(ctx, stop context.Context) error {
	var pending []wire.Message
	n := 0
	tick := time.NewTicker(s.every)
	defer tick.Stop()
	for {
		if stop.Err() == nil {
			batch := frames(s.t, fmt.Sprintf("%s-%04d", s.t.Name(), n), s.per, 4_000)
			n++
			s.mu.Lock()
			s.sent = append(s.sent, batch...)
			s.mu.Unlock()
			pending = append(pending, batch...)
		} else if len(pending) == 0 {
			return nil
		}
		if len(pending) > 0 {
			now := time.Now()
			b := pending[:min(len(pending), 64)]
			s.mu.Lock()
			for _, m := range b {
				if _, ok := s.first[m.MessageID]; !ok {
					s.first[m.MessageID] = now
				}
			}
			s.mu.Unlock()
			res, err := s.p.Publish(ctx, b)
			done := time.Now()
			var keep []wire.Message
			s.mu.Lock()
			for i, r := range res {
				s.l.outcomes[r.Outcome]++
				if r.Outcome == uplink.Confirmed {
					s.l.confirmed[r.MessageID]++
					s.waited[r.MessageID] = done.Sub(s.first[r.MessageID])
					s.confirm[r.MessageID] = done
				} else {
					keep = append(keep, b[i])
				}
			}
			if err != nil {
				s.l.errs[errKind(err)]++
			}
			s.mu.Unlock()
			pending = append(keep, pending[len(b):]...)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%d messages never confirmed: %w", len(pending), ctx.Err())
		}
	}
}

// longest returns the longest wait of a message confirmed after t0 and
// when it was confirmed.
func (s *steady) longest(t0 time.Time) (time.Duration, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var w time.Duration
	var at time.Time
	for id, d := range s.waited {
		if s.confirm[id].After(t0) && d > w {
			w, at = d, s.confirm[id]
		}
	}
	return w, at
}

// nodeOf returns the cluster node whose AMQP port the redacted URL names.
func nodeOf(t *testing.T, c *rabbittest.Cluster, raw string) *rabbittest.Broker {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range c.Nodes {
		if u.Port() == fmt.Sprint(b.Port) {
			return b
		}
	}
	t.Fatalf("no node of the cluster at %s", raw)
	return nil
}

// TestClusterFailover: a publisher given the three nodes of a cluster
// publishes a steady stream (200 messages/s) into a quorum queue while,
// first, the node it is connected to and then the queue's leader are killed
// with SIGKILL, each restarted and back in the queue before the next kill.
// It fails over to another node each time; every message is confirmed in
// the end and every confirmed message is in the queue. It logs the longest
// time a message waited from its first publish attempt to its confirm
// around each kill.
func TestClusterFailover(t *testing.T) {
	c := rabbittest.StartCluster(t, 3)
	leakCheck(t)
	rabbittest.FramesQueue(t, c.Nodes[0].URL, "frames", nil)
	if _, members, err := c.QueueMembers("/", "frames"); err != nil || len(members) != 3 {
		t.Fatalf("quorum queue members %v, %v; want 3", members, err)
	}
	o := testOptions("")
	o.URL, o.URLs = "", c.URLs("/")
	p := start(t, o)
	waitState(t, p, uplink.StateConnected, 10*time.Second)

	s := &steady{t: t, p: p, every: 50 * time.Millisecond, per: 10, l: newLedger(),
		first: map[string]time.Time{}, waited: map[string]time.Duration{}, confirm: map[string]time.Time{}}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	stop, stopFeed := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.run(ctx, stop) }()

	type kill struct {
		what string
		node *rabbittest.Broker
		at   time.Time
	}
	var kills []kill
	waitConfirmed := func(t *testing.T, l *ledger, n int, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for l.confirmedCount() < n {
			if time.Now().After(deadline) {
				l.mu.Lock()
				defer l.mu.Unlock()
				t.Fatalf("only %d confirmed after %s, want %d; outcomes %v, errors %v, link %+v",
					len(l.confirmed), within, n, l.outcomes, l.errs, p.State())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	killAndRestart := func(what string, node *rabbittest.Broker) {
		before := s.l.confirmedCount()
		kills = append(kills, kill{what, node, time.Now()})
		node.Kill(t)
		// The stream goes on while the node is down: 200 more confirmed.
		waitConfirmed(t, s.l, before+200, time.Minute)
		node.Start(t)
		if err := c.AwaitMembersOnline("/", "frames", 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		waitConfirmed(t, s.l, s.l.confirmedCount()+100, time.Minute)
	}
	waitConfirmed(t, s.l, 200, 30*time.Second)
	connected := nodeOf(t, c, p.State().Broker)
	killAndRestart("the publisher's node "+connected.Name(), connected)
	leader := c.Leader(t, "/", "frames")
	killAndRestart("the queue's leader "+leader.Name(), leader)
	stopFeed()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	s.mu.Lock()
	msgs := s.sent
	s.mu.Unlock()
	checkDelivered(t, msgs, s.l, queued(t, c.Nodes[0].URL, "frames"))
	if st := p.State(); st.Reconnects < 1 {
		t.Errorf("reconnects = %d, want >= 1 (the publisher's node was killed)", st.Reconnects)
	}
	waits := make([]time.Duration, 0, len(s.waited))
	for _, w := range s.waited {
		waits = append(waits, w)
	}
	sort.Slice(waits, func(i, j int) bool { return waits[i] < waits[j] })
	t.Logf("%d messages; wait from first attempt to confirm: median %s, p99 %s, max %s",
		len(waits), waits[len(waits)/2].Round(time.Millisecond), waits[len(waits)*99/100].Round(time.Millisecond), waits[len(waits)-1].Round(time.Millisecond))
	for i, k := range kills {
		w, at := s.longest(k.at)
		if i+1 < len(kills) && at.After(kills[i+1].at) {
			// The longest wait after this kill came after the next one:
			// take the longest before the next kill instead.
			w = 0
			s.mu.Lock()
			for id, d := range s.waited {
				if c := s.confirm[id]; c.After(k.at) && c.Before(kills[i+1].at) && d > w {
					w = d
				}
			}
			s.mu.Unlock()
		}
		t.Logf("killed %s: longest wait of a message %s", k.what, w.Round(time.Millisecond))
	}
}

// TestConnected: Connected is closed while a connection is up, open while
// the broker is down, and closed again once the publisher has reconnected.
func TestConnected(t *testing.T) {
	b := rabbittest.Start(t)
	leakCheck(t)
	p := start(t, testOptions(b.URL))
	select {
	case <-p.Connected():
	case <-time.After(20 * time.Second):
		t.Fatal("not connected within 20s")
	}
	b.Kill(t)
	waitState(t, p, uplink.StateDown, 10*time.Second)
	select {
	case <-p.Connected():
		t.Fatal("Connected is closed while the broker is down")
	default:
	}
	b.Start(t)
	select {
	case <-p.Connected():
	case <-time.After(30 * time.Second):
		t.Fatal("not connected within 30s of the broker's restart")
	}
	if st := p.State(); st.State != uplink.StateConnected {
		t.Fatalf("Connected closed, but the state is %v", st.State)
	}
}

// TestNackedFromStartRedials: a connection whose first confirm is a nack
// is dropped and dialled again, so that a channel RabbitMQ 3.10 left with
// a quorum queue's lost leader (it nacks everything) is not kept; a
// channel that has acked keeps its connection through nacks (TestNacked).
// Here the queue is full (reject-publish) when the publisher connects.
func TestNackedFromStartRedials(t *testing.T) {
	b := rabbittest.Shared(t)
	leakCheck(t)
	url := b.Vhost(t)
	rabbittest.FramesQueue(t, url, "full", amqp.Table{"x-max-length": int64(1), "x-overflow": "reject-publish"})
	// Fill the queue, until it refuses, before the publisher connects.
	rabbittest.WithChannel(t, url, func(ch *amqp.Channel) {
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			dc, err := ch.PublishWithDeferredConfirm("", "full", false, false, amqp.Publishing{Body: []byte("x")})
			if err != nil {
				t.Fatalf("fill: %v", err)
			}
			if !dc.Wait() {
				break
			}
			if i == 10 {
				t.Fatal("the queue of one message took 10")
			}
		}
	})
	p := start(t, testOptions(url))
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs := frames(t, "fromstart", 1, 100)
	res, _ := p.Publish(ctx, msgs)
	if res[0].Outcome != uplink.Nacked {
		t.Fatalf("outcome %v (%v), want nacked by the full queue", res[0].Outcome, res[0].Err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.State().Reconnects < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the connection whose first confirm was a nack was kept: %+v", p.State())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := p.State(); !errors.Is(st.LastError, uplink.ErrNacked) {
		t.Errorf("last error %v, want one wrapping ErrNacked", st.LastError)
	}
	queued(t, url, "full") // room again
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	for {
		res, _ = p.Publish(ctx, msgs)
		if res[0].Outcome == uplink.Confirmed {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("not confirmed after the queue had room: %v", res[0].Err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
