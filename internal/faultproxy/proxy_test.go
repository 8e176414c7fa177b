package faultproxy_test

import (
	"net"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/faultproxy"
)

func TestProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { buf := make([]byte, 64); n, _ := c.Read(buf); c.Write(buf[:n]); c.Close() }()
		}
	}()
	p := faultproxy.New(t, ln.Addr().String())
	echo := func() (string, error) {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(300 * time.Millisecond))
		c.Write([]byte("ping"))
		buf := make([]byte, 4)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	if s, err := echo(); s != "ping" {
		t.Fatalf("echo through proxy: %q %v", s, err)
	}
	p.Stall(true)
	if s, _ := echo(); s != "" {
		t.Fatalf("stalled proxy passed %q", s)
	}
	p.Stall(false)
	p.Refuse(true)
	if s, _ := echo(); s != "" {
		t.Fatalf("refusing proxy passed %q", s)
	}
	p.Refuse(false)
	if s, err := echo(); s != "ping" {
		t.Fatalf("echo after refuse off: %q %v", s, err)
	}
}
