package uplink

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	publish        *prometheus.CounterVec
	byOutcome      map[Outcome]prometheus.Counter
	publishedBytes prometheus.Counter
	latency        prometheus.Histogram
	blocked        prometheus.Counter
	blockedSeconds prometheus.Counter
	reconnects     prometheus.Counter
	state          *prometheus.GaugeVec
	inflight       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		publish: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_agent_uplink_publish_total",
			Help: "Messages published, by outcome: ack, nack, returned, timeout or error (connection lost before the confirm).",
		}, []string{"result"}),
		publishedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_agent_uplink_published_bytes_total",
			Help: "Message body bytes written to the broker, including retries.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "forest_agent_uplink_publish_seconds",
			Help:    "Time from publishing a message to the broker's ack.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		blocked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_agent_uplink_blocked_total",
			Help: "Times the broker blocked the connection (connection.blocked, e.g. memory or disk alarm).",
		}),
		blockedSeconds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_agent_uplink_blocked_seconds_total",
			Help: "Time the connection spent blocked by the broker.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_agent_uplink_reconnects_total",
			Help: "Connections lost and re-dialled by the supervisor.",
		}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "forest_agent_uplink_link_state",
			Help: "1 for the link's current state (down, connecting, connected, blocked), 0 for the others.",
		}, []string{"state"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "forest_agent_uplink_inflight_messages",
			Help: "Messages published and not yet confirmed.",
		}),
	}
	m.byOutcome = map[Outcome]prometheus.Counter{}
	for _, r := range []Outcome{Confirmed, Nacked, Returned, TimedOut, Lost} {
		m.byOutcome[r] = m.publish.WithLabelValues(r.label())
	}
	for s := StateDown; s <= StateBlocked; s++ {
		m.state.WithLabelValues(s.String())
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.publish, m.publishedBytes, m.latency, m.blocked, m.blockedSeconds, m.reconnects, m.state, m.inflight} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register uplink metrics: %w", err)
	}
	return m, nil
}

func (m *metrics) setState(s LinkState) {
	for x := StateDown; x <= StateBlocked; x++ {
		v := 0.0
		if x == s {
			v = 1
		}
		m.state.WithLabelValues(x.String()).Set(v)
	}
}
