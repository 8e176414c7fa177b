package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/forestwatch/forest/agent/status"
)

// BudgetFile is the name of the link budget's state file in
// device.state_dir.
const BudgetFile = "uplink-budget.json"

// budget enforces uplink.daily_bytes and uplink.windows for the drain.
//
// The budget is per UTC day: it resets at 00:00 UTC, the same instant on
// every device, which is how carriers meter a day. Every byte a publish
// puts on the connection counts (image, mask, headers, properties and AMQP
// framing; uplink.Size), when it is handed to the link, confirmed or not:
// a frame sent again after a lost confirm is paid twice, as the link
// charges it.
//
// The state — the day and the bytes spent on it — is written to
// device.state_dir/BudgetFile (temp file, fsync, rename, directory fsync)
// before the bytes are sent, so a device that reboots or crashes keeps
// what it spent: at worst it counts a batch it never finished sending. It
// lives in the agent's state directory, not in the spool: the spool owns
// its file and its records, and the budget is not a property of records
// (a record's bytes are paid each time it is sent, and the spend must
// outlive the records it paid for).
//
// A clock that goes back (a device without a real-time clock booting
// before NTP) does not open a new day: the day only moves forward, also
// across restarts. A file
// that cannot be read counts today as spent, and is renamed aside.
type budget struct {
	daily   int64
	windows []window
	path    string
	now     func() time.Time
	poll    time.Duration // longest sleep before looking again
	log     *slog.Logger

	mu   sync.Mutex
	day  time.Time // UTC midnight of the day being counted
	used int64
	// full is set when the next frame in drain order did not fit: the
	// day's remainder stays unused rather than let a later frame pass it.
	full bool
	sent prometheus.Counter
}

// window is a daily interval of UTC minutes [from, to); from > to wraps
// past midnight.
type window struct{ from, to int }

func (w window) contains(m int) bool {
	if w.from < w.to {
		return m >= w.from && m < w.to
	}
	return m >= w.from || m < w.to
}

func (w window) String() string {
	f := func(m int) string { return fmt.Sprintf("%02d:%02d", m/60, m%60) }
	return f(w.from) + "-" + f(w.to)
}

// parseWindow reads "HH:MM-HH:MM" (UTC; the end may be 24:00).
func parseWindow(s string) (window, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return window{}, fmt.Errorf("want HH:MM-HH:MM (got %q)", s)
	}
	from, err := parseClock(a, false)
	if err != nil {
		return window{}, err
	}
	to, err := parseClock(b, true)
	if err != nil {
		return window{}, err
	}
	if from == to%(24*60) {
		return window{}, fmt.Errorf("window %q is empty; leave uplink.windows empty to send at any time", s)
	}
	return window{from: from, to: to}, nil
}

func parseClock(s string, end bool) (int, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	switch {
	case !ok || err1 != nil || err2 != nil || len(m) != 2 || mm < 0 || mm > 59 || hh < 0:
		return 0, fmt.Errorf("want HH:MM (got %q)", s)
	case hh == 24 && mm == 0 && end:
		return 24 * 60, nil
	case hh > 23:
		return 0, fmt.Errorf("hour out of range in %q", s)
	}
	return hh*60 + mm, nil
}

// budgetState is the file's content.
type budgetState struct {
	V    int    `json:"v"`
	Day  string `json:"day"` // 2006-01-02, UTC
	Used int64  `json:"used_bytes"`
}

// openBudget reads the budget's state from dir (created when missing).
// With neither a daily limit nor windows it returns nil: no budget.
func openBudget(u UplinkConfig, dir string, now func() time.Time, log *slog.Logger) (*budget, error) {
	if u.DailyBytes == 0 && len(u.Windows) == 0 {
		return nil, nil
	}
	if now == nil {
		now = time.Now
	}
	b := &budget{daily: u.DailyBytes, path: filepath.Join(dir, BudgetFile), now: now, poll: time.Minute, log: log,
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_agent_uplink_sent_bytes_total",
			Help: "Bytes the drain put on the link (uplink.Size: AMQP framing included), counted against uplink.daily_bytes.",
		})}
	for _, s := range u.Windows {
		w, err := parseWindow(s)
		if err != nil {
			return nil, fmt.Errorf("%w: uplink.windows: %w", ErrConfig, err)
		}
		b.windows = append(b.windows, w)
	}
	b.day = midnight(now())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("link budget: %w", err)
	}
	raw, err := os.ReadFile(b.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return b, nil
	case err != nil:
		return nil, fmt.Errorf("link budget: %w", err)
	}
	var st budgetState
	var day time.Time
	err = json.Unmarshal(raw, &st)
	if err == nil {
		day, err = time.Parse(time.DateOnly, st.Day)
	}
	if err != nil || st.V != 1 || st.Used < 0 {
		// Unreadable: count today as spent rather than hand out a second
		// budget, and keep the file for a person to look at.
		aside := b.path + ".corrupt-" + now().UTC().Format("20060102T150405Z")
		log.Error("link budget state unreadable; today's budget counts as spent", "file", b.path, "renamed_to", aside, "err", err)
		if err := os.Rename(b.path, aside); err != nil {
			return nil, fmt.Errorf("link budget: %w", err)
		}
		b.used = max(b.daily, 1)
		return b, b.save()
	}
	if !day.Before(b.day) {
		// Today, or a later day: this clock is behind the one that wrote
		// the file (a device without a real-time clock before NTP). Keep
		// counting against the stored day: a day never restarts because
		// the clock went back. (Were the earlier clock wrong instead, the
		// stored day holds until the clock reaches it; delete the file to
		// start today afresh.)
		if day.After(b.day) {
			log.Warn("link budget state is dated after this clock; counting against its day until the clock passes it", "file", b.path, "day", st.Day)
		}
		b.day, b.used = day, st.Used
	}
	return b, nil
}

func midnight(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// rollLocked moves to a new day when the clock has passed midnight of the
// counted day. b.mu must be held.
func (b *budget) rollLocked(now time.Time) {
	if d := midnight(now); d.After(b.day) {
		b.day, b.used, b.full = d, 0, false
	}
}

// save writes the state durably: temp file, fsync, rename, dir fsync.
func (b *budget) save() error {
	raw, _ := json.Marshal(budgetState{V: 1, Day: b.day.Format(time.DateOnly), Used: b.used})
	tmp := b.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("save link budget: %w", err)
	}
	_, err = f.Write(append(raw, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, b.path)
	}
	if err == nil {
		var d *os.File
		if d, err = os.Open(filepath.Dir(b.path)); err == nil {
			err = errors.Join(d.Sync(), d.Close())
		}
	}
	if err != nil {
		return fmt.Errorf("save link budget: %w", err)
	}
	return nil
}

// blocked returns why sending is not allowed now and when to look again,
// or "" when it is allowed. b.mu must be held.
func (b *budget) blockedLocked(now time.Time) (string, time.Time) {
	b.rollLocked(now)
	if len(b.windows) > 0 {
		m := now.UTC().Hour()*60 + now.UTC().Minute()
		open := false
		for _, w := range b.windows {
			open = open || w.contains(m)
		}
		if !open {
			return "outside uplink.windows", b.nextOpen(now)
		}
	}
	if b.daily > 0 && (b.used >= b.daily || b.full) {
		return "uplink.daily_bytes spent", b.day.Add(24 * time.Hour)
	}
	return "", time.Time{}
}

// nextOpen is the start of the next window after now.
func (b *budget) nextOpen(now time.Time) time.Time {
	base := midnight(now)
	var best time.Time
	for _, w := range b.windows {
		for _, d := range []int{0, 1} {
			t := base.AddDate(0, 0, d).Add(time.Duration(w.from) * time.Minute)
			if t.After(now) && (best.IsZero() || t.Before(best)) {
				best = t
			}
		}
	}
	return best
}

// wait blocks until sending is allowed or ctx is done. It looks again at
// least every b.poll, so a clock that is set meanwhile takes effect.
func (b *budget) wait(ctx context.Context) error {
	logged := false
	for {
		b.mu.Lock()
		why, until := b.blockedLocked(b.now())
		b.mu.Unlock()
		if why == "" {
			return nil
		}
		if !logged {
			b.log.Info("drain waits: "+why, "until", until.Format(time.RFC3339))
			logged = true
		}
		d := min(time.Until(until), b.poll)
		d = max(d, 10*time.Millisecond)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// take spends the budget on the longest prefix of a batch (sizes in drain
// order) that fits, writes the new total durably and returns the
// prefix's length. A frame larger than the whole daily budget is let
// through alone at the start of a day, where nothing else could be sent
// before it; otherwise, when the next frame does not fit, the rest of the
// day's budget stays unused, so that no later (lower-priority or newer)
// frame passes it.
func (b *budget) take(sizes []int64) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if why, _ := b.blockedLocked(now); why != "" {
		return 0, nil
	}
	n := len(sizes)
	var sum int64
	if b.daily > 0 {
		n = 0
		for _, s := range sizes {
			if b.used+sum+s > b.daily && !(b.used == 0 && n == 0) {
				b.full = true
				break
			}
			sum += s
			n++
			if b.used+sum >= b.daily {
				break
			}
		}
	} else {
		for _, s := range sizes {
			sum += s
		}
	}
	if n == 0 {
		return 0, nil
	}
	b.used += sum
	if b.daily > 0 {
		if err := b.save(); err != nil {
			b.used -= sum
			return 0, err
		}
	}
	return n, nil
}

// refund returns n bytes taken today for messages that were never sent
// (the link was down). Bytes taken on an earlier day are not refunded.
func (b *budget) refund(n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	day := b.day
	b.rollLocked(b.now())
	if b.day != day || b.used == 0 {
		return nil
	}
	n = min(n, b.used)
	b.used -= n
	b.full = false
	if b.daily > 0 {
		return b.save()
	}
	return nil
}

// state reports the budget for the metrics and the status page.
func (b *budget) state() status.Budget {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	why, until := b.blockedLocked(now)
	st := status.Budget{Enabled: true, Daily: b.daily, Used: b.used, Resets: b.day.Add(24 * time.Hour),
		Blocked: why, Until: until}
	if b.daily > 0 {
		st.Left = max(0, b.daily-b.used)
		if b.full {
			st.Left = 0
		}
	}
	for _, w := range b.windows {
		st.Windows = append(st.Windows, w.String())
	}
	return st
}

// register adds the budget's metrics to reg.
func (b *budget) register(reg prometheus.Registerer) error {
	gauge := func(name, help string, f func(status.Budget) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(b.state()) })
	}
	for _, c := range []prometheus.Collector{
		b.sent,
		gauge("forest_agent_uplink_budget_bytes", "uplink.daily_bytes: the link budget per UTC day (0: none).",
			func(s status.Budget) float64 { return float64(s.Daily) }),
		gauge("forest_agent_uplink_budget_used_bytes", "Bytes spent from today's link budget (UTC day).",
			func(s status.Budget) float64 { return float64(s.Used) }),
		gauge("forest_agent_uplink_budget_left_bytes", "Bytes left in today's link budget (UTC day); 0 when the next frame does not fit.",
			func(s status.Budget) float64 { return float64(s.Left) }),
		gauge("forest_agent_uplink_send_allowed", "1 when the drain may send now (inside uplink.windows, budget left), else 0.",
			func(s status.Budget) float64 {
				if s.Blocked == "" {
					return 1
				}
				return 0
			}),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
