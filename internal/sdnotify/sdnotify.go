// Package sdnotify speaks systemd's sd_notify protocol for the services
// forest-agent and forest-cloud: READY=1, WATCHDOG=1, STOPPING=1 and
// STATUS=... datagrams to $NOTIFY_SOCKET, and the watchdog interval from
// $WATCHDOG_USEC. Without $NOTIFY_SOCKET every Send is a no-op.
package sdnotify

import (
	"errors"
	"net"
	"os"
	"strconv"
	"time"
)

// Notifier sends state messages to the unix datagram socket named by
// $NOTIFY_SOCKET when it was made (a leading '@' names an abstract socket).
type Notifier struct {
	addr string
}

// New returns a Notifier for $NOTIFY_SOCKET.
func New() *Notifier { return &Notifier{addr: os.Getenv("NOTIFY_SOCKET")} }

// Send delivers one state message, such as "READY=1"; it is a no-op
// without a socket.
func (n *Notifier) Send(state string) error {
	if n == nil || n.addr == "" {
		return nil
	}
	addr := &net.UnixAddr{Name: n.addr, Net: "unixgram"}
	if addr.Name[0] == '@' {
		addr.Name = "\x00" + addr.Name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// WatchdogInterval returns half of $WATCHDOG_USEC when the watchdog is
// enabled for this process ($WATCHDOG_PID unset or ours), else 0.
func WatchdogInterval() (time.Duration, error) {
	us := os.Getenv("WATCHDOG_USEC")
	if us == "" {
		return 0, nil
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0, nil
	}
	v, err := strconv.ParseInt(us, 10, 64)
	if err != nil || v <= 0 {
		return 0, errors.New("bad WATCHDOG_USEC")
	}
	return time.Duration(v) * time.Microsecond / 2, nil
}
