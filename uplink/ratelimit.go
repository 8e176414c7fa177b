package uplink

import (
	"context"
	"sync"
	"time"
)

// bucket is a token bucket of bytes. A nil *bucket never waits.
type bucket struct {
	rate  float64 // bytes per second
	burst float64

	mu     sync.Mutex
	tokens float64
	last   time.Time
	now    func() time.Time
}

func newBucket(rate, burst int64) *bucket {
	if rate <= 0 {
		return nil
	}
	return &bucket{rate: float64(rate), burst: float64(burst), tokens: float64(burst), now: time.Now}
}

// reserve takes n tokens, going into debt if need be, and returns how long
// the caller must wait before the debt is paid.
func (b *bucket) reserve(n int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// refund gives back n tokens taken by a reserve whose wait was abandoned.
func (b *bucket) refund(n int) {
	b.mu.Lock()
	b.tokens = min(b.burst, b.tokens+float64(n))
	b.mu.Unlock()
}

// wait blocks until n bytes may be sent or ctx is done.
func (b *bucket) wait(ctx context.Context, n int) error {
	if b == nil {
		return nil
	}
	d := b.reserve(n)
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		b.refund(n)
		return ctx.Err()
	}
}
