package status

import "time"

// Budget is the state of the link budget (uplink.daily_bytes and
// uplink.windows) for the status page and the metrics.
type Budget struct {
	// Enabled is false when neither a daily budget nor windows are set.
	Enabled bool
	// Daily is the budget per UTC day in bytes; 0 means no limit.
	Daily int64
	// Used is what today's sends spent; Left what remains (0 also when
	// the next frame does not fit).
	Used, Left int64
	// Resets is when the next UTC day starts.
	Resets time.Time
	// Windows are the times of day (UTC) when sending is allowed; empty
	// means any time.
	Windows []string
	// Blocked says why the drain waits now ("" when it may send), Until
	// when that changes.
	Blocked string
	Until   time.Time
}
