package uplink

import (
	"math/rand/v2"
	"time"
)

// backoff computes jittered exponential delays between connection attempts:
// attempt n waits a random time in [d/2, d) where d = min·2^n capped at max
// ("equal jitter"), so a fleet of devices does not reconnect in lockstep
// after a broker restart.
type backoff struct {
	min, max time.Duration
	n        int
	rand     func() float64 // in [0, 1)
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, rand: rand.Float64}
}

// ceiling is the un-jittered delay of the next attempt.
func (b *backoff) ceiling() time.Duration {
	d := b.min
	for i := 0; i < b.n && d < b.max; i++ {
		d *= 2
	}
	return min(d, b.max)
}

// next returns the delay before the next attempt and advances.
func (b *backoff) next() time.Duration {
	d := b.ceiling()
	b.n++
	return d/2 + time.Duration(b.rand()*float64(d/2))
}

// reset starts over from min after a connection proved stable.
func (b *backoff) reset() { b.n = 0 }
