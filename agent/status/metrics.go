package status

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/forestwatch/forest/spool"
)

// Metrics are the agent's Prometheus metrics. Spool gauges and eviction
// counters are read from spool.Stats at scrape time.
type Metrics struct {
	Captured       *prometheus.CounterVec
	CaptureErrors  *prometheus.CounterVec
	Segmented      prometheus.Counter
	Filtered       *prometheus.CounterVec
	Spooled        prometheus.Counter
	SpoolErrors    prometheus.Counter
	Published      prometheus.Counter
	PublishFailed  *prometheus.CounterVec
	SegmentSeconds prometheus.Histogram
	FrameSeconds   prometheus.Histogram
	// StageSeconds splits a spooled frame's time by stage: decode,
	// segment, encode (the transmitted image), mask (its PNG) and put
	// (the durable spool write).
	StageSeconds   *prometheus.HistogramVec
	PublishSeconds prometheus.Histogram
	PublishWait    prometheus.Histogram
	LinkUp         prometheus.GaugeFunc
	// Abandoned counts captures given up on after source.max_attempts.
	Abandoned prometheus.Counter
	// KeptRemoved counts files removed from done/, failed/ and the overlay
	// directory, by reason (bytes, age, disk).
	KeptRemoved *prometheus.CounterVec
	stats       func() (spool.Stats, bool)
	in          Inputs
}

// Inputs are what the metrics read at scrape time. Nil functions leave
// their metric out.
type Inputs struct {
	// Spool reads the spool's statistics (false when it is not open).
	Spool func() (spool.Stats, bool)
	// LinkUp is forest_agent_link_up.
	LinkUp func() float64
	// ClockSynced is forest_agent_clock_synced.
	ClockSynced func() bool
	// KeptBytes is forest_agent_kept_files_bytes.
	KeptBytes func() int64
	// EncodeMode and WebP label forest_agent_encoder_info: encode.mode and
	// the WebP encoder it uses ("" in modes that use none).
	EncodeMode, WebP string
}

// NewMetrics registers the metrics on reg.
func NewMetrics(reg prometheus.Registerer, in Inputs) (*Metrics, error) {
	stats, linkUp := in.Spool, in.LinkUp
	if linkUp == nil {
		linkUp = func() float64 { return -1 }
	}
	m := &Metrics{
		in: in,
		Abandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_agent_captures_abandoned_total", Help: "Captures given up on after source.max_attempts attempts that crashed or hung the agent (a file goes to failed/).",
		}),
		KeptRemoved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_agent_kept_files_removed_total", Help: "Files removed from done/, failed/ and the overlay directory, by reason (bytes: over its byte budget, age: over its age, disk: to keep the spool's free-disk reserve).",
		}, []string{"reason"}),
		Captured: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_agent_frames_captured_total", Help: "Images captured, by source.",
		}, []string{"source"}),
		CaptureErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_agent_capture_errors_total", Help: "Captures that produced no usable image (failed command, HTTP error, not an image), by source.",
		}, []string{"source"}),
		Segmented: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_agent_frames_segmented_total", Help: "Frames segmented.",
		}),
		Filtered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_agent_frames_filtered_total", Help: "Frames below segment.min_coverage not spooled, by filter (thin, drop).",
		}, []string{"filter"}),
		Spooled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_agent_frames_spooled_total", Help: "Frames durably written to the spool.",
		}),
		SpoolErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_agent_spool_put_errors_total", Help: "Frames the spool refused (full under its policy, or a write error).",
		}),
		Published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_agent_frames_published_total", Help: "Frames confirmed by the broker and removed from the spool.",
		}),
		PublishFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_agent_publish_failures_total", Help: "Frames published without a confirm and kept for a retry, by reason.",
		}, []string{"reason"}),
		SegmentSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "forest_agent_segment_seconds", Help: "Time to segment one frame.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		FrameSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "forest_agent_frame_seconds", Help: "Time from capture to durable spool write (decode, segment, encode, put).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		StageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "forest_agent_stage_seconds", Help: "Time of each stage of a spooled frame: decode, segment, encode (the transmitted image), mask (its PNG), put (the durable spool write).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"stage"}),
		PublishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "forest_agent_publish_seconds", Help: "Time to publish one batch and receive its confirms.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		PublishWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "forest_agent_publish_wait_seconds",
			Help:    "Time from a batch's first publish attempt to the broker's confirms, the failed attempts before (link down, broker node lost, confirm timeout) included: how long frames waited for the broker.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 12),
		}),
		LinkUp: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "forest_agent_link_up", Help: "1 when the broker link is connected, 0 when it is not, -1 when no broker is configured (offline).",
		}, linkUp),
		stats: stats,
	}
	for _, s := range []string{"dir", "http", "exec"} {
		m.Captured.WithLabelValues(s)
		m.CaptureErrors.WithLabelValues(s)
	}
	cs := []prometheus.Collector{m.Captured, m.CaptureErrors, m.Segmented, m.Filtered, m.Spooled, m.SpoolErrors,
		m.Published, m.PublishFailed, m.SegmentSeconds, m.FrameSeconds, m.StageSeconds, m.PublishSeconds, m.PublishWait, m.LinkUp, m.Abandoned, m.KeptRemoved, spoolCollector{m}}
	for _, r := range []string{"bytes", "age", "disk"} {
		m.KeptRemoved.WithLabelValues(r)
	}
	if f := in.ClockSynced; f != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "forest_agent_clock_synced", Help: "1 when the system clock is known to be right (synchronised, and not before the build's date), 0 otherwise: frames captured meanwhile are marked clock_synced=false.",
		}, func() float64 {
			if f() {
				return 1
			}
			return 0
		}))
	}
	if in.EncodeMode != "" {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "forest_agent_encoder_info",
			Help:        "Always 1: how frames are re-encoded (encode.mode, and the WebP encoder it uses, if any).",
			ConstLabels: prometheus.Labels{"mode": in.EncodeMode, "webp": in.WebP},
		}, func() float64 { return 1 }))
	}
	if f := in.KeptBytes; f != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "forest_agent_kept_files_bytes", Help: "Bytes of the files kept in done/, failed/ and the overlay directory.",
		}, func() float64 { return float64(f()) }))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

var (
	descSpoolBytes  = prometheus.NewDesc("forest_agent_spool_bytes", "Accounted bytes of spooled frames (the quantity bounded by spool.max_bytes).", nil, nil)
	descSpoolFrames = prometheus.NewDesc("forest_agent_spool_frames", "Frames in the spool, in flight or not.", nil, nil)
	descSpoolOldest = prometheus.NewDesc("forest_agent_spool_oldest_age_seconds", "Age of the oldest spooled frame; 0 when the spool is empty.", nil, nil)
	descSpoolFile   = prometheus.NewDesc("forest_agent_spool_file_bytes", "Size of the spool's database file.", nil, nil)
	descEvicted     = prometheus.NewDesc("forest_agent_frames_evicted_total", "Frames evicted from the spool unpublished, by reason (max_bytes, min_free, max_age) over the life of the spool.", []string{"reason"}, nil)
	descQuarantined = prometheus.NewDesc("forest_agent_spool_quarantined_frames", "Frames in the spool's quarantine (damaged, or never deliverable).", nil, nil)
	descQuarBy      = prometheus.NewDesc("forest_agent_frames_quarantined_total", "Frames set aside in the spool's quarantine, by reason (damaged, undecodable_meta, undeliverable), over the life of the spool.", []string{"reason"}, nil)
)

// QuarantineReasons are the reasons forest_agent_frames_quarantined_total
// always shows.
var QuarantineReasons = []string{spool.QuarantineDamaged, "undecodable_meta", "undeliverable"}

// spoolCollector reads spool.Stats at scrape time.
type spoolCollector struct{ m *Metrics }

func (c spoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSpoolBytes, descSpoolFrames, descSpoolOldest, descSpoolFile, descEvicted, descQuarantined, descQuarBy} {
		ch <- d
	}
}

func (c spoolCollector) Collect(ch chan<- prometheus.Metric) {
	if c.m.stats == nil {
		return
	}
	s, ok := c.m.stats()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(descSpoolBytes, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(descSpoolFrames, prometheus.GaugeValue, float64(s.Frames))
	ch <- prometheus.MustNewConstMetric(descSpoolOldest, prometheus.GaugeValue, s.OldestAge.Seconds())
	ch <- prometheus.MustNewConstMetric(descSpoolFile, prometheus.GaugeValue, float64(s.FileBytes))
	ch <- prometheus.MustNewConstMetric(descQuarantined, prometheus.GaugeValue, float64(s.Quarantined))
	for _, r := range []string{spool.ReasonMaxBytes, spool.ReasonMinFree, spool.ReasonMaxAge} {
		ch <- prometheus.MustNewConstMetric(descEvicted, prometheus.CounterValue, float64(s.Evictions[r]), r)
	}
	for _, r := range QuarantineReasons {
		ch <- prometheus.MustNewConstMetric(descQuarBy, prometheus.CounterValue, float64(s.QuarantinedBy[r]), r)
	}
}
