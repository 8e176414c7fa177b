package agent

import (
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// BuildUnix is when the build's commit was made, in Unix seconds; the
// Makefile sets it with -ldflags "-X .../agent.BuildUnix=...". A clock
// earlier than that is wrong.
var BuildUnix = "0"

// clockFloor is a time no correct clock is before: the later of this
// package's writing and the build's commit.
func clockFloor() time.Time {
	floor := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if s, err := strconv.ParseInt(BuildUnix, 10, 64); err == nil && time.Unix(s, 0).After(floor) {
		floor = time.Unix(s, 0)
	}
	return floor
}

// clockSynced reports whether the system clock can be trusted: it is not
// before clockFloor, and the kernel does not mark it unsynchronised (what
// systemd-timesyncd, chrony or ntpd clear once they set it; `timedatectl`
// shows it as "System clock synchronized"). A device without a real-time
// clock boots at the epoch or at the last shutdown's time, unsynchronised.
func clockSynced() bool {
	if time.Now().Before(clockFloor()) {
		return false
	}
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	return err == nil && state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0
}
