package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/forestwatch/forest/agent/source"
	"github.com/forestwatch/forest/agent/status"
	"github.com/forestwatch/forest/internal/human"
	"github.com/forestwatch/forest/internal/sdnotify"
	"github.com/forestwatch/forest/segment"
	"github.com/forestwatch/forest/spool"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// Version and Commit identify the build; the Makefile sets them with
// -ldflags "-X github.com/forestwatch/forest/agent.Version=... -X ...Commit=...".
var (
	Version = "dev"
	Commit  = "unknown"
)

// Options configure an Agent beyond its Config. The zero value is usable.
type Options struct {
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// Registry receives the metrics; nil creates a fresh registry with the
	// Go and process collectors.
	Registry *prometheus.Registry
	// Listener, when set, serves HTTP instead of listening on
	// Config.HTTP.Listen (tests pass a 127.0.0.1:0 listener).
	Listener net.Listener
	// Report, when set, is called after each processed capture.
	Report func(FrameReport)
	// ConfigPath names the configuration file in messages to people.
	ConfigPath string
	// GoMemoryLimit, when > 0, holds the Go heap to this soft limit
	// (debug.SetMemoryLimit), raised to 5 bytes per pixel for a frame
	// that needs more, so that a large frame does not spend its time
	// collecting garbage. forest-agent run sets it unless GOMEMLIMIT is.
	GoMemoryLimit int64

	// trace, in tests, records shutdown steps in order.
	trace func(step string)
	// clockSynced, in tests, replaces clockSynced.
	clockSynced func() bool
	// newPublisher, in tests, replaces uplink.New.
	newPublisher func(uplink.Options) (linkPublisher, error)
	// now, in tests, is the link budget's clock.
	now func() time.Time
	// budgetPoll, in tests, is how often a waiting drain looks at the
	// link budget again (default one minute).
	budgetPoll time.Duration
}

// linkPublisher is the uplink as Run uses it: *uplink.Publisher.
type linkPublisher interface {
	publisher
	statusSender
	Run(ctx context.Context) error
}

// Agent is the on-device daemon: capture → segment → spool → drain. Create
// it with New, start it with Run (or RunOnce) and it closes everything it
// opened when Run returns.
type Agent struct {
	cfg     *Config
	opts    Options
	log     *slog.Logger
	reg     *prometheus.Registry
	m       *status.Metrics
	status  *status.Tracker
	q       *spool.Queue
	model   *segment.Model
	modelID string
	encoder string // how frames are re-encoded, for the status page and /metrics
	pub     linkPublisher
	src     source.Source
	pipe    *pipeline
	notify  *sdnotify.Notifier
	keep    *keeper
	// clockSynced reports whether the clock can be trusted.
	clockSynced func() bool
	budget      *budget // nil without uplink.daily_bytes and uplink.windows

	closeOnce sync.Once
}

// New opens what the agent needs — state directory, spool, model — and
// prepares the source and (when uplink.url is set) the publisher. Nothing
// runs until Run. Close releases it all if Run is not called.
func New(cfg *Config, opts Options) (a *Agent, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a = &Agent{cfg: cfg, opts: opts, log: log.With("component", "agent"), status: status.NewTracker(), notify: sdnotify.New()}
	a.reg = opts.Registry
	if a.reg == nil {
		a.reg = prometheus.NewRegistry()
		a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, a.Close())
			a = nil
		}
	}()
	if a.clockSynced = opts.clockSynced; a.clockSynced == nil {
		a.clockSynced = clockSynced
	}
	a.keep = newKeeper(cfg, nil, log.With("component", "keep"))
	var webpBy string
	var fallback error
	a.encoder, webpBy, fallback = encoderLabel(cfg.Encode.Mode)
	if fallback != nil {
		log.Info("WebP frames are encoded by the built-in WebAssembly libwebp; install libwebp-dev for an encoder "+
			"about 4 times faster, with a peak about 40 MB lower", "reason", fallback)
	}
	if a.m, err = status.NewMetrics(a.reg, status.Inputs{Spool: a.spoolStats, LinkUp: a.linkUp, ClockSynced: a.clockSynced,
		KeptBytes: a.keep.bytes.Load, EncodeMode: cfg.Encode.Mode, WebP: webpBy}); err != nil {
		return a, fmt.Errorf("register metrics: %w", err)
	}
	a.keep.m = a.m
	a.keep.prune()
	var pol spool.Policy
	var ord spool.Order
	_ = pol.UnmarshalText([]byte(cfg.Spool.Policy))
	_ = ord.UnmarshalText([]byte(cfg.Spool.Order))
	a.q, err = spool.Open(cfg.Spool.Dir, spool.Options{
		MaxBytes: cfg.Spool.MaxBytes, MinFreeBytes: cfg.Spool.MinFreeBytes, Policy: pol,
		MaxAge: cfg.Spool.MaxAge.D(), Order: ord, Logger: log.With("component", "spool"),
		ClockSynced: a.clockSynced, Reclaim: a.keep.reclaim,
	})
	if err != nil {
		return a, fmt.Errorf("open spool %s: %w", cfg.Spool.Dir, err)
	}
	if err := migrateState(cfg.Device.StateDir, a.q); err != nil {
		return a, err
	}
	if a.budget, err = openBudget(cfg.Uplink, cfg.Device.StateDir, opts.now, log.With("component", "budget")); err != nil {
		return a, err
	}
	if a.budget != nil {
		if opts.budgetPoll > 0 {
			a.budget.poll = opts.budgetPoll
		}
		if err := a.budget.register(a.reg); err != nil {
			return a, fmt.Errorf("register metrics: %w", err)
		}
	}
	tiling, _ := segment.ParseTiling(cfg.Segment.Tiling)
	a.model, err = segment.Load(cfg.Segment.Model, segment.Options{
		Threads: cfg.Segment.Threads, LibraryPath: cfg.Segment.Library, Threshold: cfg.Segment.Threshold,
		Tiling: tiling, PixelSize: cfg.Segment.PixelSize, Logger: log,
	})
	if err != nil {
		return a, fmt.Errorf("load model: %w", err)
	}
	info := a.model.Info()
	a.modelID = info.ID + "/" + info.Version
	a.pipe = &pipeline{cfg: cfg, model: a.model, modelID: a.modelID, q: a.q, m: a.m, clockSynced: a.clockSynced,
		status: a.status, log: a.log, report: opts.Report, memLimit: opts.GoMemoryLimit}
	if opts.GoMemoryLimit > 0 {
		debug.SetMemoryLimit(opts.GoMemoryLimit)
	}
	a.src = source.New(cfg.Source, source.Env{
		Log: log.With("component", "source", "source", cfg.Source.Type),
		Failed: func(src string, err error) {
			a.m.CaptureErrors.WithLabelValues(src).Inc()
			a.status.CaptureFailed(err)
			a.log.Warn("capture failed", "source", src, "err", err)
		},
		OK: func(string) { a.status.CaptureOK() },
	})
	if len(cfg.Uplink.Brokers()) > 0 {
		urls, err := cfg.brokerURLs()
		if err != nil {
			return a, err
		}
		uo := uplink.Options{
			URLs: urls, Exchange: cfg.Uplink.Exchange, DeclareExchange: cfg.Uplink.DeclareExchange,
			TLS: uplink.TLSOptions{CAFile: cfg.Uplink.TLS.CAFile, CertFile: cfg.Uplink.TLS.CertFile,
				KeyFile: cfg.Uplink.TLS.KeyFile, ServerName: cfg.Uplink.TLS.ServerName},
			Window: cfg.Uplink.Window, ConfirmTimeout: cfg.Uplink.ConfirmTimeout.D(),
			DialTimeout: cfg.Uplink.DialTimeout.D(), Heartbeat: cfg.Uplink.Heartbeat.D(),
			BackoffMax: cfg.Uplink.BackoffMax.D(), RateLimit: cfg.Uplink.RateLimit, MaxMessageBytes: cfg.Uplink.MaxMessageBytes,
			CloseTimeout: cfg.ShutdownTimeout.D() / 3,
			Name:         "forest-agent/" + cfg.Device.ID, Logger: log, Registerer: a.reg,
		}
		if uo.BackoffMin = uplink.DefaultBackoffMin; uo.BackoffMin > uo.BackoffMax {
			uo.BackoffMin = uo.BackoffMax
		}
		newPub := opts.newPublisher
		if newPub == nil {
			newPub = func(o uplink.Options) (linkPublisher, error) { return uplink.New(o) }
		}
		if a.pub, err = newPub(uo); err != nil {
			return a, fmt.Errorf("%w: uplink: %w", ErrConfig, err)
		}
	}
	return a, nil
}

// Registry returns the registry holding the agent's metrics.
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

func (a *Agent) spoolStats() (spool.Stats, bool) {
	if a.q == nil {
		return spool.Stats{}, false
	}
	return a.q.Stats(), true
}

func (a *Agent) link() status.Link {
	if a.pub == nil {
		return status.Link{Offline: true, State: "offline"}
	}
	s := a.pub.State()
	li := status.Link{State: s.State.String(), Since: s.Since, Connected: s.State == uplink.StateConnected}
	if s.LastError != nil {
		li.LastError = s.LastError.Error()
	}
	return li
}

// linkUp is the value of forest_agent_link_up.
func (a *Agent) linkUp() float64 {
	switch l := a.link(); {
	case l.Offline:
		return -1
	case l.Connected:
		return 1
	}
	return 0
}

func (a *Agent) trace(step string) {
	a.log.Debug("shutdown step", "step", step)
	if a.opts.trace != nil {
		a.opts.trace(step)
	}
}

// Close releases what New opened: the model and the spool (last). Run
// calls it; call it yourself only when Run is not called.
func (a *Agent) Close() error {
	var err error
	a.closeOnce.Do(func() {
		if a.model != nil {
			err = errors.Join(err, a.model.Close())
		}
		if a.q != nil {
			a.trace("close spool")
			err = errors.Join(err, a.q.Close())
		}
	})
	return err
}

// Run runs the agent until ctx is cancelled, then shuts down in this order,
// bounded by Config.ShutdownTimeout:
//
//  1. stop capture: the source takes no new capture;
//  2. finish the frame in flight: the capture goroutine returns once the
//     frame being processed is spooled;
//  3. wait for outstanding confirms: the drain starts no new batch and
//     waits for the confirms of the batch it published (until the
//     deadline); unconfirmed frames are released and stay in the spool;
//  4. send the last status report (state "stopping", at most 2 s) and
//     close the connection to the broker;
//  5. stop the HTTP server, close the model, close the spool.
//
// systemd is told READY=1 once everything runs, WATCHDOG=1 every half
// $WATCHDOG_USEC while no frame has been in flight for longer than
// $WATCHDOG_USEC (so a hung frame gets the agent restarted), and
// STOPPING=1 when shutdown starts. Run returns nil on
// a clean shutdown, or the first error that stopped a component.
func (a *Agent) Run(ctx context.Context) (err error) {
	defer func() { err = errors.Join(err, a.Close()) }()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	fail := func(what string, err error) {
		if err != nil {
			errc <- fmt.Errorf("%s: %w", what, err)
		}
	}
	// Contexts of the shutdown stages.
	captureCtx, stopCapture := context.WithCancel(context.Background())
	drainStop, stopDrain := context.WithCancel(context.Background())
	hard, cancelHard := context.WithCancel(context.Background())
	linkCtx, stopLink := context.WithCancel(context.Background())
	defer func() { stopCapture(); stopDrain(); cancelHard(); stopLink() }()

	// HTTP.
	var srv *http.Server
	var httpWG sync.WaitGroup
	if ln, lerr := a.listen(); lerr != nil {
		return lerr
	} else if ln != nil {
		pg := &status.Page{
			Registry: a.reg, Tracker: a.status, Device: a.cfg.Device.ID, Version: Version, Model: a.modelID,
			Source: a.cfg.Source.Type, Encoder: a.encoder, Refresh: a.cfg.HTTP.Refresh.D(), Link: a.link, Ready: a.Ready, Log: a.log,
			ClockSynced: a.clockSynced, KeptBytes: a.keep.bytes.Load,
			Spool: func() spool.Stats { st, _ := a.spoolStats(); return st },
		}
		if a.budget != nil {
			pg.Budget = a.budget.state
		}
		srv = &http.Server{Handler: pg.Handler(), ReadHeaderTimeout: 5 * time.Second}
		httpWG.Add(1)
		go func() {
			defer httpWG.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fail("http", err)
			}
		}()
		a.log.Info("status page", "url", "http://"+ln.Addr().String()+"/")
	}

	// Uplink connection supervisor and drain.
	var linkWG, drainWG, statusWG sync.WaitGroup
	statusStop, stopStatus := context.WithCancel(context.Background())
	defer stopStatus()
	if a.pub != nil {
		linkWG.Add(1)
		go func() { defer linkWG.Done(); fail("uplink", a.pub.Run(linkCtx)) }()
		user := a.brokerUser()
		d := &drain{q: a.q, pub: a.pub, batch: a.cfg.Uplink.Batch, agent: "forest-agent/" + Version, user: user,
			m: a.m, status: a.status, log: a.log.With("component", "drain"),
			backoffMin: 200 * time.Millisecond, backoffMax: 5 * time.Second}
		if a.budget != nil {
			exchange, key := a.cfg.Uplink.Exchange, "frames."+a.cfg.Device.ID
			d.budget, d.size = a.budget, func(m *wire.Message) int64 { return uplink.Size(m, exchange, key) }
		}
		drainWG.Add(1)
		go func() { defer drainWG.Done(); fail("drain", d.Run(drainStop, hard)) }()
		if every := a.cfg.Uplink.StatusInterval.D(); every > 0 {
			hb, err := newHeartbeat(a.pub, every, a.cfg.Device.ID, "forest-agent/"+Version, user, a.statusReport, a.reg, a.log.With("component", "status"))
			if err != nil {
				return fmt.Errorf("register metrics: %w", err)
			}
			statusWG.Add(1)
			go func() { defer statusWG.Done(); hb.Run(statusStop, hard) }()
		}
		a.log.Info("agent started", "device", a.cfg.Device.ID, "source", a.cfg.Source.Type, "model", a.modelID,
			"spool", a.cfg.Spool.Dir, "brokers", redactURLs(a.cfg.Uplink.Brokers()))
	} else {
		a.log.Warn("no broker configured (uplink.url and uplink.urls are empty): running offline, frames stay in the spool",
			"device", a.cfg.Device.ID, "source", a.cfg.Source.Type, "model", a.modelID, "spool", a.cfg.Spool.Dir)
	}

	// Kept files: done/, failed/ and overlays within their budgets.
	var keepWG sync.WaitGroup
	keepWG.Add(1)
	go func() {
		defer keepWG.Done()
		t := time.NewTicker(keepEvery)
		defer t.Stop()
		for {
			select {
			case <-captureCtx.Done():
				return
			case <-t.C:
				a.keep.prune()
			}
		}
	}()

	// Capture. The frame in flight is processed with a context that
	// outlives the stop of capture, so it is finished, not abandoned.
	a.status.SetCapturing(true)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer a.status.SetCapturing(false)
		h := func(_ context.Context, c *source.Capture) error { return a.pipe.handle(hard, c) }
		fail("capture", a.src.Run(captureCtx, h))
	}()

	// systemd.
	if err := a.notify.Send("READY=1\nSTATUS=capturing"); err != nil {
		a.log.Warn("sd_notify", "err", err)
	}
	wd, werr := sdnotify.WatchdogInterval()
	if werr != nil {
		a.log.Warn("systemd watchdog", "err", werr)
	}
	var tick <-chan time.Time
	if wd > 0 {
		t := time.NewTicker(wd)
		defer t.Stop()
		tick = t.C
	}
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case runErr = <-errc:
			a.log.Error("component failed, shutting down", "err", runErr)
			break loop
		case <-tick:
			// A frame stuck for longer than the watchdog timeout (a hung
			// camera read or inference) stops the keep-alives, so systemd
			// restarts the agent.
			if d := a.pipe.busyFor(); d > 2*wd {
				a.log.Error("frame in flight for longer than the watchdog timeout; withholding WATCHDOG=1", "busy", d.Round(time.Second))
				continue
			}
			_ = a.notify.Send("WATCHDOG=1")
		}
	}

	// Shutdown, in order, bounded by the shutdown timeout.
	_ = a.notify.Send("STOPPING=1")
	a.log.Info("shutting down", "timeout", a.cfg.ShutdownTimeout.D())
	deadline := time.AfterFunc(a.cfg.ShutdownTimeout.D(), func() {
		a.log.Warn("shutdown timeout reached; abandoning the frame in flight and outstanding confirms")
		cancelHard()
	})
	defer deadline.Stop()
	a.trace("stop capture")
	stopCapture()
	wg.Wait()
	keepWG.Wait()
	a.trace("capture stopped")
	stopDrain()
	drainWG.Wait()
	a.trace("confirms settled")
	// The last status report, while the link is still up. Its write may
	// be stuck on a stalled link, which only closing the connection
	// releases: wait for it a bounded time, and for good after the close.
	stopStatus()
	waitFor(&statusWG, 3*time.Second)
	stopLink()
	linkWG.Wait()
	statusWG.Wait()
	if a.pub != nil {
		a.trace("connection closed")
	}
	if srv != nil {
		sctx, c := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(sctx)
		c()
		httpWG.Wait()
	}
	for {
		select {
		case e := <-errc:
			runErr = errors.Join(runErr, e)
		default:
			return runErr
		}
	}
}

// keepEvery is how often the kept files are pruned to their budgets.
const keepEvery = time.Minute

// brokerUser is the AMQP user the agent connects as: the user_id of its
// messages.
func (a *Agent) brokerUser() string {
	if a.cfg.Uplink.User != "" {
		return a.cfg.Uplink.User
	}
	brokers := a.cfg.Uplink.Brokers()
	if len(brokers) == 0 {
		return ""
	}
	// All name the same user (Validate): the first says which.
	if u, err := url.Parse(brokers[0]); err == nil && u.User != nil {
		return u.User.Username()
	}
	return ""
}

// Ready reports whether the agent makes forward progress, and why (or why
// not): capture works, and either the link is down and known (frames wait
// in the spool) or the drain is advancing.
func (a *Agent) Ready() (bool, string) {
	st, _ := a.spoolStats()
	stall := 2*a.cfg.Uplink.ConfirmTimeout.D() + 10*time.Second
	return a.status.Readiness(a.link(), st.Frames, st.InFlight, stall)
}

func (a *Agent) listen() (net.Listener, error) {
	if a.opts.Listener != nil {
		return a.opts.Listener, nil
	}
	if a.cfg.HTTP.Listen == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", a.cfg.HTTP.Listen)
	if err != nil {
		return nil, fmt.Errorf("http listen: %w", err)
	}
	return ln, nil
}

// OnceSummary is what RunOnce did.
type OnceSummary struct {
	Frames   int // captures processed
	Spooled  int
	Filtered int
	Failed   int
	Spool    spool.Stats
}

// RunOnce processes what the source has now (dir: the complete files
// present; http and exec: one capture), waits for the spool writes, writes
// one line per frame and a summary to w, and closes the agent. It does not
// publish: frames stay in the spool for a later `run`.
func (a *Agent) RunOnce(ctx context.Context, w io.Writer) (sum OnceSummary, err error) {
	defer func() { err = errors.Join(err, a.Close()) }()
	if a.pub == nil {
		fmt.Fprintln(w, "offline: no broker configured (uplink.url and uplink.urls are empty); frames stay in the spool")
	} else {
		fmt.Fprintf(w, "--once does not publish; frames stay in the spool for `forest-agent run` (broker %s)\n", strings.Join(redactURLs(a.cfg.Uplink.Brokers()), ", "))
	}
	report := a.pipe.report
	a.pipe.report = func(r FrameReport) {
		sum.Frames++
		switch {
		case r.Filtered != "":
			sum.Filtered++
			fmt.Fprintf(w, "%-44s coverage %5.1f%%  %s (below segment.min_coverage %.2f)\n", r.Name, r.Coverage*100, r.Filtered, a.cfg.Segment.MinCoverage)
		default:
			sum.Spooled++
			scaled := ""
			if r.Scale > 0 && r.Scale != 1 {
				scaled = fmt.Sprintf(", segmented at %.2g× for its pixel size", r.Scale)
			}
			fmt.Fprintf(w, "%-44s coverage %5.1f%%  spooled id %d as %s (%dx%d%s, %s, %d ms)\n", r.Name, r.Coverage*100,
				r.SpoolID, wire.FrameID(a.cfg.Device.ID, r.Seq), r.Width, r.Height, scaled, human.Bytes(int64(r.Bytes)), r.Duration.Milliseconds())
		}
		if report != nil {
			report(r)
		}
	}
	src := source.New(a.cfg.Source, source.Env{
		Log: a.log,
		Failed: func(src string, err error) {
			sum.Failed++
			a.m.CaptureErrors.WithLabelValues(src).Inc()
			fmt.Fprintf(w, "capture failed: %v\n", err)
		},
		OK: func(string) {},
	})
	if err := src.Once(ctx, a.pipe.handle); err != nil {
		return sum, err
	}
	sum.Spool = a.q.Stats()
	abs := func(p string) string {
		if q, err := filepath.Abs(p); err == nil {
			return q
		}
		return p
	}
	fmt.Fprintf(w, "\n%d frame(s): %d spooled, %d filtered, %d failed\n", sum.Frames, sum.Spooled, sum.Filtered, sum.Failed)
	fmt.Fprintf(w, "model:    %s\n", a.modelID)
	fmt.Fprintf(w, "spool:    %s (%d frame(s), %s)\n", abs(a.cfg.Spool.Dir), sum.Spool.Frames, human.Bytes(sum.Spool.Bytes))
	if d := a.cfg.Segment.OverlayDir; d != "" {
		fmt.Fprintf(w, "overlays: %s\n", abs(d))
	}
	if a.cfg.HTTP.Listen != "" {
		cp := a.opts.ConfigPath
		if cp == "" {
			cp = "FILE"
		}
		fmt.Fprintf(w, "status:   http://%s/ (served while `forest-agent run --config %s` runs)\n", a.cfg.HTTP.Listen, cp)
	}
	fmt.Fprintf(w, "inspect:  forest-agent spool stats %s\n", abs(a.cfg.Spool.Dir))
	return sum, nil
}

// BuildInfo describes the binary for `forest-agent version`.
func BuildInfo(library string) string {
	ort, path, err := segment.RuntimeVersion(library)
	if err != nil {
		ort = "unavailable (" + err.Error() + ")"
	}
	_, webpBy, _ := webpEncoder()
	return fmt.Sprintf("forest-agent %s\ncommit %s\ngo %s %s/%s\nonnxruntime %s (%s)\nwebp %s\n", Version, Commit,
		runtime.Version(), runtime.GOOS, runtime.GOARCH, ort, path, webpBy)
}
