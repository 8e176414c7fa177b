package uplink

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	tests := []struct {
		name     string
		rand     float64
		min, max time.Duration
		want     []time.Duration
	}{
		{"low jitter", 0, 100 * time.Millisecond, time.Second,
			[]time.Duration{50, 100, 200, 400, 500, 500}},
		{"high jitter", 0.999999, 100 * time.Millisecond, time.Second,
			[]time.Duration{100, 200, 400, 800, 1000, 1000}},
		{"min equals max", 0, time.Second, time.Second,
			[]time.Duration{500, 500, 500}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackoff(tt.min, tt.max)
			b.rand = func() float64 { return tt.rand }
			for i, w := range tt.want {
				got := b.next().Round(time.Millisecond)
				if got != w*time.Millisecond {
					t.Errorf("attempt %d: %v, want %v", i, got, w*time.Millisecond)
				}
			}
			b.reset()
			if got := b.ceiling(); got != tt.min {
				t.Errorf("after reset ceiling %v, want %v", got, tt.min)
			}
		})
	}
	// Many attempts never overflow past max.
	b := newBackoff(time.Millisecond, time.Hour)
	for range 200 {
		if d := b.next(); d <= 0 || d > time.Hour {
			t.Fatalf("delay %v out of range", d)
		}
	}
}

func TestBucket(t *testing.T) {
	now := time.Unix(0, 0)
	b := newBucket(1000, 500)
	b.now = func() time.Time { return now }
	if d := b.reserve(500); d != 0 {
		t.Fatalf("burst: wait %v", d)
	}
	if d := b.reserve(250); d != 250*time.Millisecond {
		t.Fatalf("debt of 250 B at 1000 B/s: wait %v", d)
	}
	now = now.Add(250 * time.Millisecond)
	if d := b.reserve(0); d != 0 {
		t.Fatalf("after paying the debt: wait %v", d)
	}
	// Idle time refills only up to the burst.
	now = now.Add(time.Hour)
	if d := b.reserve(600); d != 100*time.Millisecond {
		t.Fatalf("600 B from a full 500 B bucket: wait %v", d)
	}
	// A cancelled wait gives its tokens back.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.wait(ctx, 10_000); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait: %v", err)
	}
	if d := b.reserve(0); d != 100*time.Millisecond {
		t.Fatalf("after refund: wait %v", d)
	}
	var nilBucket *bucket
	if err := nilBucket.wait(ctx, 1<<30); err != nil {
		t.Fatalf("unlimited: %v", err)
	}
	if newBucket(0, 0) != nil {
		t.Fatal("rate 0 must mean unlimited")
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		ok   bool
	}{
		{"defaults", Options{URL: "amqp://u:p@127.0.0.1:5672/"}, true},
		{"no url", Options{}, false},
		{"http url", Options{URL: "http://127.0.0.1/"}, false},
		{"negative window", Options{URL: "amqp://127.0.0.1/", Window: -1}, false},
		{"negative timeout", Options{URL: "amqp://127.0.0.1/", ConfirmTimeout: -time.Second}, false},
		{"backoff max below min", Options{URL: "amqp://127.0.0.1/", BackoffMin: time.Second, BackoffMax: time.Millisecond}, false},
		{"cert without key", Options{URL: "amqps://127.0.0.1/", TLS: TLSOptions{CertFile: "c.pem"}}, false},
		{"negative rate", Options{URL: "amqp://127.0.0.1/", RateLimit: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := tt.o.normalize()
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("err %v does not wrap ErrInvalidOptions", err)
			}
			if tt.ok && (o.Window != DefaultWindow || o.Exchange != DefaultExchange || o.ConfirmTimeout != DefaultConfirmTimeout || o.Logger == nil) {
				t.Fatalf("defaults not applied: %+v", o)
			}
		})
	}
}
