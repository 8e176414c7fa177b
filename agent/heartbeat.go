package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// statusSender is what the heartbeat needs from the uplink: *uplink.Publisher.
type statusSender interface {
	Send(ctx context.Context, key string, m wire.Message) error
	State() uplink.Status
}

// heartbeat publishes the agent's status report (wire.Status): once the
// link is up after start, every interval, at once after each reconnect,
// and a last one when the agent stops. A report is never spooled and never
// retried: it goes on the uplink's side channel (Publisher.Send), so it
// never waits behind frames, and when it cannot be sent the next one, built
// afresh, supersedes it. Only the latest report matters.
type heartbeat struct {
	pub      statusSender
	every    time.Duration
	device   string
	agent    string // app_id
	user     string // user_id, "" to leave unset
	build    func(state string) *wire.Status
	log      *slog.Logger
	sent     *prometheus.CounterVec // result: sent, refused, failed
	poll     time.Duration          // how often the link state is looked at
	lastSent time.Time              // successful sends, for the log
	refused  bool                   // the last send was refused (logged once)
}

// statusSendTimeout bounds the wait for one report's confirm.
const statusSendTimeout = 10 * time.Second

func newHeartbeat(pub statusSender, every time.Duration, device, agent, user string, build func(string) *wire.Status,
	reg prometheus.Registerer, log *slog.Logger) (*heartbeat, error) {
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "forest_agent_status_reports_total",
		Help: "Status reports (uplink.status_interval) by result: sent (confirmed by the broker), refused (by the broker, e.g. no write permission on status.<device>), failed (link lost, no confirm).",
	}, []string{"result"})
	for _, r := range []string{"sent", "refused", "failed"} {
		sent.WithLabelValues(r)
	}
	if err := reg.Register(sent); err != nil {
		return nil, err
	}
	return &heartbeat{pub: pub, every: every, device: device, agent: agent, user: user, build: build,
		log: log, sent: sent, poll: time.Second}, nil
}

// Run reports until stop ends, then sends the "stopping" report, bounded by
// final (the shutdown deadline).
func (h *heartbeat) Run(stop, final context.Context) {
	state := wire.StatusStarting
	var next time.Time // when the next report is due; zero: as soon as the link is up
	wasUp := false
	tick := time.NewTicker(h.poll)
	defer tick.Stop()
	for {
		up := h.pub.State().State == uplink.StateConnected
		if up && !wasUp {
			next = time.Time{} // (re)connected: report at once
		}
		wasUp = up
		if up && !time.Now().Before(next) {
			if h.send(stop, state) {
				state = wire.StatusRunning
			}
			// A failed report is not retried before the next interval,
			// unless the link comes back.
			next = time.Now().Add(h.every)
		}
		select {
		case <-stop.Done():
			if h.pub.State().State == uplink.StateConnected {
				ctx, cancel := context.WithTimeout(final, 2*time.Second)
				h.send(ctx, wire.StatusStopping)
				cancel()
			}
			return
		case <-tick.C:
		}
	}
}

// send builds and sends one report, and reports whether the broker
// confirmed it.
func (h *heartbeat) send(ctx context.Context, state string) bool {
	m, err := wire.EncodeStatus(h.build(state), h.agent, h.user)
	if err != nil {
		h.log.Error("status report cannot be encoded", "err", err)
		h.sent.WithLabelValues("failed").Inc()
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, statusSendTimeout)
	defer cancel()
	err = h.pub.Send(ctx, wire.StatusRoute(h.device), m)
	switch {
	case err == nil:
		h.sent.WithLabelValues("sent").Inc()
		if h.refused {
			h.log.Info("status reports accepted by the broker again")
		}
		h.refused, h.lastSent = false, time.Now()
		h.log.Debug("status report sent", "state", state)
		return true
	case errors.Is(err, uplink.ErrRefused):
		h.sent.WithLabelValues("refused").Inc()
		if !h.refused {
			h.log.Warn("broker refused the status report; frames are not affected. Grant the device's broker user write permission on routing key status.<device> (topic permission ^(frames|status)\\.<device>$, see firmware/rabbitmq/definitions.json)",
				"routing_key", wire.StatusRoute(h.device), "err", err)
		}
		h.refused = true
	default:
		h.sent.WithLabelValues("failed").Inc()
		h.log.Debug("status report not sent", "state", state, "err", err)
	}
	return false
}

// statusReport builds the agent's status report in state.
func (a *Agent) statusReport(state string) *wire.Status {
	now := time.Now()
	r := a.status.Report()
	st, _ := a.spoolStats()
	s := &wire.Status{
		Device: a.cfg.Device.ID, SentAt: now, State: state, IntervalSeconds: a.cfg.Uplink.StatusInterval.D().Seconds(),
		Version: Version, Model: a.modelID, StartedAt: r.Started,
		Spool: wire.SpoolStatus{
			Frames: st.Frames, Bytes: st.Bytes, MaxBytes: a.cfg.Spool.MaxBytes, OldestAt: st.OldestCreated.UTC(),
			Evicted: st.Evictions, Published: r.Published,
		},
		Capture: wire.CaptureStatus{LastAt: r.LastCapture.UTC(), Frames: r.Spooled, Failing: r.CaptureFails, LastError: r.LastCapErr},
	}
	if len(st.QuarantinedBy) > 0 {
		s.Spool.Quarantined = st.QuarantinedBy
	}
	synced := a.clockSynced()
	s.ClockSynced = &synced
	if a.pub != nil {
		ls := a.pub.State()
		s.Link = wire.LinkStatus{State: ls.State.String(), Since: ls.Since.UTC(), Reconnects: ls.Reconnects}
		if ls.LastError != nil {
			s.Link.LastError = ls.LastError.Error()
		}
	}
	if r.HasCoverage {
		c := r.LastCoverage
		s.Coverage.Last = &c
	}
	for _, h := range r.Hours {
		s.Coverage.Hours = append(s.Coverage.Hours, wire.CoverageHour{Start: h.Start, Frames: h.Frames,
			Mean: min(max(h.Sum/float64(h.Frames), h.Min), h.Max), Min: h.Min, Max: h.Max})
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(a.cfg.Spool.Dir, &fs); err == nil {
		s.Disk = &wire.DiskStatus{FreeBytes: fs.Bavail * uint64(fs.Bsize), TotalBytes: fs.Blocks * uint64(fs.Bsize)}
	}
	return s
}

// waitFor waits for wg, at most d, and reports whether it is done.
func waitFor(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
