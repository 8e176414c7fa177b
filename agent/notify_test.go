package agent

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestSystemdNotify runs the agent under a fake systemd: a unix datagram
// socket in $NOTIFY_SOCKET and a 300 ms watchdog. It must send READY=1,
// then WATCHDOG=1 keep-alives — withheld while a frame is stuck — then
// STOPPING=1 on shutdown.
func TestSystemdNotify(t *testing.T) {
	needModel(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent()) // Run waits for every goroutine it started
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "300000")
	t.Setenv("WATCHDOG_PID", "")
	cfg := testConfig(t)
	a, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var got []string
	buf := make([]byte, 512)
	read := func() string {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, string(buf[:n]))
		return string(buf[:n])
	}
	if m := read(); !strings.HasPrefix(m, "READY=1") {
		t.Fatalf("first message %q, want READY=1", m)
	}
	t0 := time.Now()
	for i := 0; i < 3; i++ {
		if m := read(); m != "WATCHDOG=1" {
			t.Fatalf("got %q, want WATCHDOG=1", m)
		}
	}
	if d := time.Since(t0); d < 300*time.Millisecond || d > 5*time.Second {
		t.Fatalf("3 keep-alives took %s; want about 450ms (half the watchdog interval each)", d)
	}
	// A frame stuck for longer than the watchdog timeout: keep-alives stop.
	a.pipe.busy.Store(time.Now().Add(-time.Hour).UnixNano())
	time.Sleep(200 * time.Millisecond) // let a keep-alive already due go out
	for drained := false; !drained; {
		conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := conn.Read(buf); err != nil {
			drained = true
		}
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := conn.Read(buf); err == nil {
		t.Fatalf("got %q while a frame was stuck; want no keep-alive", buf[:n])
	}
	a.pipe.busy.Store(0)
	if m := read(); m != "WATCHDOG=1" {
		t.Fatalf("got %q after the frame finished, want WATCHDOG=1", m)
	}
	cancel()
	for {
		if m := read(); m == "STOPPING=1" {
			break
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
