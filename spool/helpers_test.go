package spool

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	goleak.VerifyTestMain(m)
}

// openT opens a spool in dir and, on cleanup, closes it and checks that the
// file passes Check.
func openT(t *testing.T, dir string, opts Options) *Queue {
	t.Helper()
	q, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		rep, err := Check(dir, false)
		if err != nil {
			t.Errorf("Check after test: %v", err)
		} else if !rep.OK {
			t.Errorf("Check after test: problems %+v", rep.Problems)
		}
	})
	return q
}

// rec builds a record whose payload is derived from seed, so content can be
// verified after reading it back.
func rec(seed, size, prio int) *Record {
	img := make([]byte, size)
	for i := range img {
		img[i] = byte(seed*31 + i)
	}
	return &Record{
		Priority: prio,
		Image:    img,
		Mask:     []byte{byte(seed), 0, 255},
		Meta:     fmt.Appendf(nil, `{"seed":%d}`, seed),
	}
}

func putT(t *testing.T, q *Queue, r *Record) uint64 {
	t.Helper()
	id, err := q.Put(context.Background(), r)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return id
}

func nextIDs(t *testing.T, q *Queue, n int) []uint64 {
	t.Helper()
	rs, err := q.Next(n)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return recordIDs(rs)
}

func sameRecord(a, b *Record) bool {
	return a.Priority == b.Priority && bytes.Equal(a.Image, b.Image) && bytes.Equal(a.Mask, b.Mask) &&
		bytes.Equal(a.Meta, b.Meta) && a.Created.Equal(b.Created)
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// logSink records log messages.
type logSink struct {
	mu   sync.Mutex
	msgs []slog.Record
}

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *logSink) Handle(_ context.Context, r slog.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, r)
	return nil
}
func (s *logSink) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s *logSink) WithGroup(string) slog.Handler      { return s }

func (s *logSink) count(msg string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.msgs {
		if r.Message == msg {
			n++
		}
	}
	return n
}
