package agent

import (
	"errors"
	"net"
	"os"
	"strconv"
	"time"
)

// notifier speaks systemd's sd_notify datagram protocol: it sends
// "READY=1", "WATCHDOG=1", "STOPPING=1" and "STATUS=..." to the unix
// datagram socket named by $NOTIFY_SOCKET (a leading '@' names an abstract
// socket). Without $NOTIFY_SOCKET every call is a no-op.
type notifier struct {
	addr string
}

func newNotifier() *notifier { return &notifier{addr: os.Getenv("NOTIFY_SOCKET")} }

// send delivers one state message; it is a no-op without a socket.
func (n *notifier) send(state string) error {
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

// watchdogInterval returns half of $WATCHDOG_USEC when the watchdog is
// enabled for this process ($WATCHDOG_PID unset or ours), else 0.
func watchdogInterval() (time.Duration, error) {
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
