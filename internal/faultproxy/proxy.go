// Package faultproxy is a TCP proxy for tests that cuts, stalls, refuses
// and half-opens the links through it, as a flaky LTE or satellite modem does.
package faultproxy

import (
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP proxy on 127.0.0.1 between a client and a target that can
// cut, stall and half-open the link, as a flaky LTE or satellite modem does.
type Proxy struct {
	target string
	ln     net.Listener

	mu      sync.Mutex
	refuse  bool
	stalled bool
	wake    chan struct{} // closed when a stall ends
	links   map[*link]struct{}
	// halfOpen are client sides left open by HalfOpen, closed by Close.
	halfOpen []net.Conn
	wg       sync.WaitGroup
}

type link struct {
	client, server net.Conn
}

// New listens on a free loopback port and forwards to target
// (host:port) until the test ends.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := Listen(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// Listen is New outside a test; the caller must Close the proxy.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln, links: map[*link]struct{}{}, wake: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops the proxy and closes every link.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
	p.Stall(false)
	p.mu.Lock()
	for _, c := range p.halfOpen {
		c.Close()
	}
	p.halfOpen = nil
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		p.mu.Unlock()
		if refuse {
			c.Close()
			continue
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		l := &link{client: c, server: s}
		p.mu.Lock()
		p.links[l] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(l, c, s)
		go p.pipe(l, s, c)
	}
}

// pipe copies src to dst, holding bytes back while the proxy is stalled.
func (p *Proxy) pipe(l *link, src, dst net.Conn) {
	defer p.wg.Done()
	defer p.drop(l)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.waitStall()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) waitStall() {
	p.mu.Lock()
	stalled, wake := p.stalled, p.wake
	p.mu.Unlock()
	if stalled {
		<-wake
	}
}

func (p *Proxy) drop(l *link) {
	p.mu.Lock()
	_, ok := p.links[l]
	delete(p.links, l)
	p.mu.Unlock()
	if ok {
		l.client.Close()
		l.server.Close()
	}
}

// Cut closes every open link at once, like a modem losing its carrier.
// New connections are still accepted unless Refuse is on.
func (p *Proxy) Cut() {
	p.mu.Lock()
	links := p.links
	p.links = map[*link]struct{}{}
	p.mu.Unlock()
	for l := range links {
		if tc, ok := l.client.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN
		}
		l.client.Close()
		l.server.Close()
	}
}

// Refuse makes the proxy close new connections at once (on) or accept and
// forward them again (off).
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Stall holds every byte in both directions (on) without closing anything,
// like a link that stops moving data, or releases them (off).
func (p *Proxy) Stall(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on == p.stalled {
		return
	}
	p.stalled = on
	if !on {
		close(p.wake)
		p.wake = make(chan struct{})
	}
}

// HalfOpen closes the server side of every link but leaves the client side
// open and silent: the client sees neither data nor a close, as when a NAT
// box forgets a connection. Only the client's heartbeat can detect it.
func (p *Proxy) HalfOpen() {
	p.mu.Lock()
	links := p.links
	p.links = map[*link]struct{}{}
	p.mu.Unlock()
	for l := range links {
		l.server.Close()
	}
	p.mu.Lock()
	for l := range links {
		p.halfOpen = append(p.halfOpen, l.client)
	}
	p.mu.Unlock()
}
