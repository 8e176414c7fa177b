package uplink_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// countingProxy forwards TCP connections to target and counts the bytes
// the client sends.
type countingProxy struct {
	ln   net.Listener
	sent atomic.Int64
	wg   sync.WaitGroup
}

// counter counts what is written through it.
type counter struct {
	w io.Writer
	n *atomic.Int64
}

func (c counter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func newCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(counter{s, &p.sent}, c); s.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, s); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

// TestSizeIsWhatGoesOnTheWire publishes frames of several shapes through
// a byte-counting proxy to the real broker: what the client sends for
// each equals Size exactly.
func TestSizeIsWhatGoesOnTheWire(t *testing.T) {
	b := rabbittest.Shared(t)
	rabbittest.FramesQueue(t, b.URL, "size-test", nil)
	t.Cleanup(func() { rabbittest.Purge(t, b.URL, "size-test") })
	leakCheck(t)
	proxy := newCountingProxy(t, "127.0.0.1:"+itoa(b.Port))
	o := testOptions(strings.Replace(b.URL, "127.0.0.1:"+itoa(b.Port), proxy.ln.Addr().String(), 1))
	o.Heartbeat = time.Hour // no heartbeat frames during the count
	p := start(t, o)
	waitState(t, p, uplink.StateConnected, 10*time.Second)
	frame := func(body int, extra map[string]any) wire.Message {
		f := &wire.Frame{ID: "dev-1-000000000001", Device: "dev-1", Seq: 1, Captured: time.Now(), ContentType: wire.WebP,
			Image: make([]byte, body), Width: 640, Height: 640, Coverage: 0.5, Model: "forest-unet/1", Mask: []byte("mask"),
			Agent: "forest-agent/test", Source: "0001.jpg", SourceType: "dir"}
		m, err := wire.Encode(f)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range extra {
			m.Headers[k] = v
		}
		return m
	}
	cases := []wire.Message{
		frame(1000, nil),
		frame(uplink.DefaultFrameMax-8-4, nil), // image + mask fill one body frame exactly
		frame(uplink.DefaultFrameMax, nil),     // two body frames
		frame(300_000, map[string]any{wire.HeaderGPSLat: 41.7, wire.HeaderGPSLon: 2.4, wire.HeaderCameraMake: "DJI"}),
	}
	// A first publish, uncounted, so that the channel is in confirm mode.
	if _, err := p.Publish(context.Background(), []wire.Message{frame(10, nil)}); err != nil {
		t.Fatal(err)
	}
	for i, m := range cases {
		before := proxy.sent.Load()
		res, err := p.Publish(context.Background(), []wire.Message{m})
		if err != nil || res[0].Outcome != uplink.Confirmed {
			t.Fatalf("publish %d: %v %v", i, err, res)
		}
		got := proxy.sent.Load() - before
		if want := p.SizeFor(&m); got != want {
			t.Errorf("message %d (%d bytes of body): %d bytes on the wire, Size says %d", i, len(m.Body), got, want)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
