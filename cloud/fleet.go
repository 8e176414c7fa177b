package cloud

import (
	"container/list"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/forestwatch/forest/wire"
)

// fleet is what forest-cloud knows of the devices: their latest status
// reports (received here, or stored in S3 by any replica), per-device
// metrics and the fleet page (fleetpage.go).
//
// State: the reports live in S3 ({fleet.status_prefix}/{device}.json), so
// replicas stay stateless; each replica keeps a copy in memory, refreshed
// from S3 every fleet.refresh and updated at once by the reports it
// receives itself (the newest sent_at wins). Only known devices are kept:
// fleet.devices, plus devices that report, up to fleet.max_devices, which
// bounds the metrics' series.
//
// Concurrency: run owns the status consumer, the refresh loop and the
// dead-letter scans; the page's handlers read the state under mu and fetch
// frames through bounded caches.
type fleet struct {
	s       *Service
	log     *slog.Logger
	allow   []netip.Prefix
	user    string   // basic-auth user ("" for a token)
	secret  string   // token or password; "" when no auth
	brokers *brokers // the status consumer's own turn over the broker addresses

	mu      sync.Mutex
	devices map[string]*device
	etags   map[string]string // status key → ETag last read

	statusMsgs       *prometheus.CounterVec
	dlqMessages      atomic.Int64 // -1 until known
	statusPutFailing atomic.Bool

	sidecars *lru[*Sidecar]
	thumbs   *lru[[]byte]
	listings *lru[*listing]
	thumbSem chan struct{}
	flights  flightGroup

	dlqMu    sync.Mutex
	dlq      dlqCensus
	dlqWant  chan struct{} // asks run for a scan
	scanning atomic.Bool
}

// device is one known device.
type device struct {
	id  string
	rec *StatusRecord // nil: never reported
	// latest is the device's newest stored frame, looked up at most every
	// fleet.refresh.
	latest        string // sidecar key
	latestChecked time.Time
}

// dlqCensus is the dead-letter queue read through: messages by device and
// reason.
type dlqCensus struct {
	At       time.Time
	Scanned  int
	ByDevice map[string]map[string]int // "" holds messages of no known device
	Err      string
}

func newFleet(s *Service, reg prometheus.Registerer) (*fleet, error) {
	fc := &s.cfg.Fleet
	user, secret, err := fc.secret()
	if err != nil {
		return nil, err
	}
	allow, err := parseAllow(fc.Allow, secret != "")
	if err != nil {
		return nil, err
	}
	f := &fleet{
		s: s, log: s.log.With("component", "fleet"), allow: allow, user: user, secret: secret,
		devices: map[string]*device{}, etags: map[string]string{},
		statusMsgs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_cloud_status_reports_total",
			Help: "Agents' status reports received, by result (stored, not_stored: S3 failed, stale, unknown_device: beyond fleet.max_devices, dead_lettered, dropped).",
		}, []string{"result"}),
		sidecars: newLRU[*Sidecar](4096),
		thumbs:   newLRU[[]byte](fc.ThumbCache),
		listings: newLRU[*listing](16),
		thumbSem: make(chan struct{}, fc.ThumbWorkers),
		dlqWant:  make(chan struct{}, 1),
	}
	f.dlqMessages.Store(-1)
	for _, d := range fc.Devices {
		f.devices[d] = &device{id: d}
	}
	for _, r := range []string{"stored", "not_stored", "stale", "unknown_device", "dead_lettered", "dropped"} {
		f.statusMsgs.WithLabelValues(r)
	}
	if err := reg.Register(f.statusMsgs); err != nil {
		return nil, err
	}
	if err := reg.Register(fleetCollector{f}); err != nil {
		return nil, err
	}
	return f, nil
}

// run consumes status reports, refreshes the stored ones from S3 and scans
// the dead-letter queue when the page asks, until ctx ends.
func (f *fleet) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { f.consumeStatus(ctx) })
	wg.Go(func() {
		t := time.NewTicker(f.s.cfg.Fleet.Refresh)
		defer t.Stop()
		for {
			if err := f.loadStatuses(ctx); err != nil && ctx.Err() == nil {
				f.log.Debug("refresh stored status reports", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-f.dlqWant:
				f.scanDLQ(ctx)
			}
		}
	})
	wg.Wait()
}

type keepResult int

const (
	keepNewer keepResult = iota
	keepStale
	keepUnknown
)

// keep records rec if its device is known (or there is room for one more)
// and it is newer than what is known.
func (f *fleet) keep(rec *StatusRecord) keepResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[rec.Status.Device]
	if !ok {
		if len(f.devices) >= f.s.cfg.Fleet.MaxDevices {
			return keepUnknown
		}
		d = &device{id: rec.Status.Device}
		f.devices[d.id] = d
	}
	if d.rec != nil && !rec.Status.SentAt.After(d.rec.Status.SentAt) {
		return keepStale
	}
	d.rec = rec
	return keepNewer
}

func (f *fleet) changed(key, etag string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return etag == "" || f.etags[key] != etag
}

func (f *fleet) seenETag(key, etag string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.etags) < 4*f.s.cfg.Fleet.MaxDevices {
		f.etags[key] = etag
	}
}

// deviceView is one device as the page and the metrics see it.
type deviceView struct {
	ID       string
	Rec      *StatusRecord
	Silent   bool
	Interval time.Duration
	Latest   string
}

// snapshot returns the known devices sorted by id.
func (f *fleet) snapshot(now time.Time) []deviceView {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]deviceView, 0, len(f.devices))
	for _, d := range f.devices {
		v := deviceView{ID: d.id, Rec: d.rec, Latest: d.latest, Interval: f.s.cfg.Fleet.DefaultInterval}
		if d.rec != nil && d.rec.Status.IntervalSeconds > 0 {
			v.Interval = time.Duration(d.rec.Status.IntervalSeconds * float64(time.Second))
		}
		v.Silent = d.rec == nil || d.rec.Status.State == wire.StatusStopping ||
			now.Sub(d.rec.ReceivedAt) > time.Duration(f.s.cfg.Fleet.SilentAfter)*v.Interval
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// known reports whether id is a known device.
func (f *fleet) known(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.devices[id]
	return ok
}

// dayPrefix is the key prefix of a device's frames captured on day (UTC).
func (f *fleet) dayPrefix(device string, day time.Time) string {
	keys, _ := KeysFor(f.s.cfg.S3.Prefix, device, device, day, wire.JPEG)
	return path.Dir(keys.Image) + "/"
}

// listSidecars lists the sidecar keys under prefix after startAfter, in
// key order (which is sequence order within a day), at most pages pages.
func (f *fleet) listSidecars(ctx context.Context, prefix, startAfter string, pages int) ([]string, error) {
	st := f.s.store
	in := &s3.ListObjectsV2Input{Bucket: aws.String(st.bucket), Prefix: aws.String(prefix)}
	if startAfter != "" {
		in.StartAfter = aws.String(startAfter)
	}
	var keys []string
	for range pages {
		out, err := st.c.ListObjectsV2(ctx, in)
		if err != nil {
			return keys, fmt.Errorf("list %s: %w", prefix, err)
		}
		for _, o := range out.Contents {
			if k := aws.ToString(o.Key); strings.HasSuffix(k, ".json") {
				keys = append(keys, k)
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			break
		}
		in.ContinuationToken = out.NextContinuationToken
	}
	return keys, nil
}

// latestFrame returns the newest stored frame of a device captured today
// or yesterday (UTC), looking it up at most every fleet.refresh; nil when
// there is none.
func (f *fleet) latestFrame(ctx context.Context, id string, now time.Time) *Sidecar {
	f.mu.Lock()
	d, ok := f.devices[id]
	if !ok {
		f.mu.Unlock()
		return nil
	}
	latest, fresh := d.latest, now.Sub(d.latestChecked) < f.s.cfg.Fleet.Refresh
	f.mu.Unlock()
	if !fresh {
		// Today first, then yesterday: listed after the newest frame known
		// of that day, so a refresh reads only what is new.
		for _, day := range []time.Time{now, now.Add(-24 * time.Hour)} {
			prefix := f.dayPrefix(id, day)
			mine := strings.HasPrefix(latest, prefix)
			if latest > prefix && !mine {
				break // the newest known frame is of a later day
			}
			after := ""
			if mine {
				after = latest
			}
			keys, err := f.listSidecars(ctx, prefix, after, 10)
			if err != nil {
				f.log.Debug("list frames", "device", id, "err", err)
				break
			}
			if len(keys) > 0 {
				latest = keys[len(keys)-1]
				break
			}
			if mine {
				break // nothing newer than the newest known
			}
		}
		f.mu.Lock()
		d.latest, d.latestChecked = latest, now
		f.mu.Unlock()
	}
	if latest == "" {
		return nil
	}
	sc, err := f.sidecar(ctx, latest)
	if err != nil {
		return nil
	}
	return sc
}

// sidecar reads a frame's sidecar (immutable once stored, so cached).
func (f *fleet) sidecar(ctx context.Context, key string) (*Sidecar, error) {
	if sc, ok := f.sidecars.get(key); ok {
		return sc, nil
	}
	b, found, err := f.s.store.get(ctx, key)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%s: not found", key)
	}
	var sc Sidecar
	if err := json.Unmarshal(b, &sc); err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	f.sidecars.put(key, &sc)
	return &sc, nil
}

// listing is a device's sidecar keys of yesterday and today, in capture
// order, as listed at At.
type listing struct {
	At   time.Time
	Keys []string
}

// maxDayPages bounds the LIST pages read for one device and day (1,000
// keys each: a frame a minute makes 4,320 keys a day).
const maxDayPages = 20

// maxDeviceFrames bounds the frames shown on a device page.
const maxDeviceFrames = 96

// recentFrames returns up to maxDeviceFrames of a device's frames captured
// in the 24 h before now, evenly spread over them, oldest first, and how
// many there are in all.
func (f *fleet) recentFrames(ctx context.Context, id string, now time.Time) ([]*Sidecar, int, error) {
	l, ok := f.listings.get(id)
	if !ok || now.Sub(l.At) > f.s.cfg.Fleet.Refresh {
		var keys []string
		for _, day := range []time.Time{now.Add(-24 * time.Hour), now} {
			k, err := f.listSidecars(ctx, f.dayPrefix(id, day), "", maxDayPages)
			if err != nil {
				return nil, 0, err
			}
			keys = append(keys, k...)
		}
		l = &listing{At: now, Keys: keys}
		f.listings.put(id, l)
	}
	keys := l.Keys
	since := now.Add(-24 * time.Hour)
	// Keys are in capture order: find the first captured since, reading
	// O(log n) sidecars.
	first := sort.Search(len(keys), func(i int) bool {
		sc, err := f.sidecar(ctx, keys[i])
		return err != nil || !sc.CapturedAt.Before(since)
	})
	keys = keys[first:]
	total := len(keys)
	if len(keys) > maxDeviceFrames {
		picked := make([]string, 0, maxDeviceFrames)
		for i := range maxDeviceFrames {
			picked = append(picked, keys[(len(keys)-1)-(maxDeviceFrames-1-i)*(len(keys)-1)/(maxDeviceFrames-1)])
		}
		keys = slices.Compact(picked)
	}
	out := make([]*Sidecar, len(keys))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, k := range keys {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if sc, err := f.sidecar(ctx, k); err == nil {
				out[i] = sc
			}
		})
	}
	wg.Wait()
	return slices.DeleteFunc(out, func(s *Sidecar) bool { return s == nil }), total, nil
}

// census returns the last dead-letter census and asks for a new one when
// it is older than fleet.dlq_scan_interval.
func (f *fleet) census(now time.Time) dlqCensus {
	f.dlqMu.Lock()
	c := f.dlq
	f.dlqMu.Unlock()
	if now.Sub(c.At) > f.s.cfg.Fleet.DLQScanInterval && !f.scanning.Load() {
		select {
		case f.dlqWant <- struct{}{}:
		default:
		}
	}
	return c
}

// scanDLQ reads through up to fleet.dlq_scan_limit dead letters (leaving
// them in the queue) and counts them by device and reason.
func (f *fleet) scanDLQ(ctx context.Context) {
	f.scanning.Store(true)
	defer f.scanning.Store(false)
	c := dlqCensus{At: time.Now(), ByDevice: map[string]map[string]int{}}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	dls, err := ListDeadLetters(ctx, f.s.cfg, DLQOptions{Limit: f.s.cfg.Fleet.DLQScanLimit})
	if err != nil {
		c.Err = err.Error()
	}
	for _, dl := range dls {
		dev := ""
		if _, d, ok := strings.Cut(dl.RoutingKey, "."); ok && f.known(d) {
			dev = d
		} else if f.known(dl.User) {
			dev = dl.User
		}
		if c.ByDevice[dev] == nil {
			c.ByDevice[dev] = map[string]int{}
		}
		reason := dl.Reason
		if reason == "" {
			reason = "unknown"
		}
		c.ByDevice[dev][reason]++
		c.Scanned++
	}
	f.dlqMu.Lock()
	f.dlq = c
	f.dlqMu.Unlock()
}

// fleetCollector exports per-device gauges of the known devices at scrape
// time.
type fleetCollector struct{ f *fleet }

var (
	descLastSeen    = prometheus.NewDesc("forest_cloud_device_last_seen_timestamp_seconds", "When the device's latest status report was received (Unix time).", []string{"device"}, nil)
	descInterval    = prometheus.NewDesc("forest_cloud_device_status_interval_seconds", "The device's status interval (uplink.status_interval).", []string{"device"}, nil)
	descSilent      = prometheus.NewDesc("forest_cloud_device_silent", "1 when the device sent no status report for fleet.silent_after intervals, has stopped, or never reported.", []string{"device"}, nil)
	descSpoolFrames = prometheus.NewDesc("forest_cloud_device_spool_frames", "Frames in the device's spool, unsent, at its latest report.", []string{"device"}, nil)
	descSpoolBytes  = prometheus.NewDesc("forest_cloud_device_spool_bytes", "Bytes in the device's spool at its latest report.", []string{"device"}, nil)
	descSpoolOldest = prometheus.NewDesc("forest_cloud_device_spool_oldest_timestamp_seconds", "When the device's oldest unsent frame was spooled (Unix time); 0 when its spool was empty.", []string{"device"}, nil)
	descEvicted     = prometheus.NewDesc("forest_cloud_device_frames_evicted_total", "Frames the device's spool evicted unsent, by reason, over the spool's life (from its reports).", []string{"device", "reason"}, nil)
	descQuarantined = prometheus.NewDesc("forest_cloud_device_frames_quarantined_total", "Frames the device's spool set aside in quarantine, by reason, over the spool's life (from its reports).", []string{"device", "reason"}, nil)
	descClockSynced = prometheus.NewDesc("forest_cloud_device_clock_synced", "1 when the device reports its clock synchronised, 0 when it reports it is not (absent when it cannot tell).", []string{"device"}, nil)
	descClockSkew   = prometheus.NewDesc("forest_cloud_device_clock_skew_seconds", "The device's clock minus forest-cloud's when its latest report arrived (includes transit time).", []string{"device"}, nil)
	descDevices     = prometheus.NewDesc("forest_cloud_fleet_devices", "Known devices (fleet.devices and devices that reported, at most fleet.max_devices).", nil, nil)
	descDLQ         = prometheus.NewDesc("forest_cloud_dead_letter_queue_messages", "Messages in the dead-letter queue (amqp.dead_letter_queue), as last seen.", nil, nil)
)

func (c fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLastSeen, descInterval, descSilent, descSpoolFrames, descSpoolBytes, descSpoolOldest,
		descEvicted, descQuarantined, descClockSynced, descClockSkew, descDevices, descDLQ} {
		ch <- d
	}
}

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	devs := c.f.snapshot(time.Now())
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descDevices, float64(len(devs)))
	if n := c.f.dlqMessages.Load(); n >= 0 {
		gauge(descDLQ, float64(n))
	}
	for _, d := range devs {
		silent := 0.0
		if d.Silent {
			silent = 1
		}
		gauge(descSilent, silent, d.ID)
		if d.Rec == nil {
			continue
		}
		s := d.Rec.Status
		gauge(descLastSeen, float64(d.Rec.ReceivedAt.UnixMilli())/1000, d.ID)
		gauge(descInterval, d.Interval.Seconds(), d.ID)
		gauge(descSpoolFrames, float64(s.Spool.Frames), d.ID)
		gauge(descSpoolBytes, float64(s.Spool.Bytes), d.ID)
		oldest := 0.0
		if !s.Spool.OldestAt.IsZero() {
			oldest = float64(s.Spool.OldestAt.UnixMilli()) / 1000
		}
		gauge(descSpoolOldest, oldest, d.ID)
		for r, n := range s.Spool.Quarantined {
			ch <- prometheus.MustNewConstMetric(descQuarantined, prometheus.CounterValue, float64(n), d.ID, r)
		}
		if s.ClockSynced != nil {
			synced := 0.0
			if *s.ClockSynced {
				synced = 1
			}
			gauge(descClockSynced, synced, d.ID)
		}
		gauge(descClockSkew, s.SentAt.Sub(d.Rec.ReceivedAt).Seconds(), d.ID)
		for _, r := range evictionReasons(s) {
			ch <- prometheus.MustNewConstMetric(descEvicted, prometheus.CounterValue, float64(s.Spool.Evicted[r]), d.ID, r)
		}
	}
}

// evictionReasons are the spool's reasons plus any the report names.
func evictionReasons(s *wire.Status) []string {
	rs := []string{"max_bytes", "min_free", "max_age"}
	for r := range s.Spool.Evicted {
		if !slices.Contains(rs, r) {
			rs = append(rs, r)
		}
	}
	return rs
}

// lru is a small least-recently-used cache, safe for concurrent use.
type lru[V any] struct {
	mu    sync.Mutex
	max   int
	order *list.List // of *lruEntry[V], front = most recent
	items map[string]*list.Element
}

type lruEntry[V any] struct {
	key string
	val V
}

func newLRU[V any](max int) *lru[V] {
	return &lru[V]{max: max, order: list.New(), items: map[string]*list.Element{}}
}

func (c *lru[V]) get(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*lruEntry[V]).val, true
	}
	var zero V
	return zero, false
}

func (c *lru[V]) put(key string, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		e.Value.(*lruEntry[V]).val = v
		c.order.MoveToFront(e)
		return
	}
	c.items[key] = c.order.PushFront(&lruEntry[V]{key: key, val: v})
	for c.order.Len() > c.max {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.items, old.Value.(*lruEntry[V]).key)
	}
}

// flightGroup runs one call per key at a time; later callers for the same
// key wait for its result.
type flightGroup struct {
	mu    sync.Mutex
	calls map[string]*flightCall
}

type flightCall struct {
	done chan struct{}
	val  []byte
	err  error
}

func (g *flightGroup) do(ctx context.Context, key string, fn func() ([]byte, error)) ([]byte, error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*flightCall{}
	}
	if c, ok := g.calls[key]; ok {
		g.mu.Unlock()
		select {
		case <-c.done:
			return c.val, c.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &flightCall{done: make(chan struct{})}
	g.calls[key] = c
	g.mu.Unlock()
	c.val, c.err = fn()
	close(c.done)
	g.mu.Lock()
	delete(g.calls, key)
	g.mu.Unlock()
	return c.val, c.err
}
