package cloud_test

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSystemdNotify runs the service under a fake systemd (a unix datagram
// socket in $NOTIFY_SOCKET, a 300 ms watchdog) while S3 is down at start:
// READY=1 comes with a STATUS saying it waits for S3, WATCHDOG=1
// keep-alives go on while it waits (a healthy idle state), STATUS changes
// once S3 answers and it consumes, and STOPPING=1 comes on shutdown.
func TestSystemdNotify(t *testing.T) {
	// The servers first: they must not inherit the variables below.
	srv := startS3(t)
	e := newEnv(t, srv)
	e.declare(t)
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "300000")
	t.Setenv("WATCHDOG_PID", "")
	srv.Stop(t)
	cfg := *e.cfg
	cfg.HTTP.Listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := e.start(t, &cfg)
	buf := make([]byte, 1024)
	var got []string
	read := func() string {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, string(buf[:n]))
		return string(buf[:n])
	}
	if m := read(); !strings.HasPrefix(m, "READY=1\nSTATUS=") {
		t.Fatalf("first message %q, want READY=1 with a STATUS", m)
	}
	// Waiting for S3: not ready, yet alive.
	pings, sawWaiting := 0, false
	for pings < 4 {
		switch m := read(); {
		case m == "WATCHDOG=1":
			pings++
		case strings.HasPrefix(m, "STATUS=") && strings.Contains(m, "S3 does not answer"):
			sawWaiting = true
		}
	}
	if !sawWaiting && !strings.Contains(got[0], "S3 does not answer") {
		t.Errorf("no STATUS saying the service waits for S3: %q", got)
	}
	srv.Start(t)
	deadline := time.Now().Add(30 * time.Second)
	for m := read(); !strings.HasPrefix(m, "STATUS=consuming"); m = read() {
		if time.Now().After(deadline) {
			t.Fatalf("no STATUS=consuming after S3 came back: %q", got)
		}
	}
	if m := read(); m != "WATCHDOG=1" {
		t.Errorf("got %q while consuming, want WATCHDOG=1", m)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	for m := read(); m != "STOPPING=1"; m = read() {
		if m != "WATCHDOG=1" && !strings.HasPrefix(m, "STATUS=") {
			t.Fatalf("got %q, want STOPPING=1", m)
		}
	}
}
