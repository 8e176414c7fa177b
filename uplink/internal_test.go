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
		{"cluster", Options{URLs: []string{"amqp://u:p@n1/", "amqp://u:p@n2/", "amqp://u:p@n3/"}}, true},
		{"url and urls", Options{URL: "amqp://n1/", URLs: []string{"amqp://n2/"}}, false},
		{"mixed schemes", Options{URLs: []string{"amqps://n1/", "amqp://n2/"}}, false},
		{"no host", Options{URLs: []string{"amqp://n1/", "amqp:///vh"}}, false},
		{"tls with amqp cluster", Options{URLs: []string{"amqp://n1/", "amqp://n2/"}, TLS: TLSOptions{ServerName: "x"}}, false},
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
			if tt.ok && len(o.URLs) != max(len(tt.o.URLs), 1) {
				t.Fatalf("urls %v from url %q and urls %v", o.URLs, tt.o.URL, tt.o.URLs)
			}
		})
	}
}

// TestTLSServerNamePerNode: each node of a cluster is checked against its
// own host name unless a server name is configured.
func TestTLSServerNamePerNode(t *testing.T) {
	o, err := Options{URLs: []string{"amqps://rabbit-1.example:5671/", "amqps://rabbit-2.example:5671/"}}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := o.tlsConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfgs[0].ServerName != "rabbit-1.example" || cfgs[1].ServerName != "rabbit-2.example" {
		t.Fatalf("server names %q, %q", cfgs[0].ServerName, cfgs[1].ServerName)
	}
	o.TLS.ServerName = "rabbit.example"
	cfgs, _ = o.tlsConfig()
	if cfgs[0].ServerName != "rabbit.example" || cfgs[1].ServerName != "rabbit.example" {
		t.Fatalf("configured server name not used: %q, %q", cfgs[0].ServerName, cfgs[1].ServerName)
	}
}
