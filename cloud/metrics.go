package cloud

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are forest-cloud's Prometheus metrics, registered on the registry
// passed in Options.
type metrics struct {
	messages      *prometheus.CounterVec // result: stored, duplicate, dead_lettered, requeued, parked
	deadLetters   *prometheus.CounterVec // reason
	objects       *prometheus.CounterVec // kind
	duplicates    prometheus.Counter
	bytes         prometheus.Counter
	s3Put         prometheus.Histogram
	s3Retries     prometheus.Counter
	s3Errors      prometheus.Counter
	s3Healthy     prometheus.Gauge
	s3Outages     prometheus.Counter
	s3Probes      *prometheus.CounterVec // result: ok, failed
	connected     prometheus.Gauge
	legacyArgs    prometheus.Gauge
	reconnects    prometheus.Counter
	inflight      prometheus.Gauge
	handleSeconds prometheus.Histogram

	// progress is the time (Unix ns) of the last sign of progress, for
	// the systemd watchdog (see Service.healthy).
	progress atomic.Int64
}

// tick records progress.
func (m *metrics) tick() { m.progress.Store(time.Now().UnixNano()) }

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_cloud_messages_total", Help: "Messages handled, by result (stored, duplicate, dead_lettered, requeued, parked).",
		}, []string{"result"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_cloud_dead_letters_total", Help: "Messages dead-lettered by this consumer, by reason.",
		}, []string{"reason"}),
		objects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_cloud_objects_stored_total", Help: "Objects written to S3, by kind (image, mask, sidecar, legacy).",
		}, []string{"kind"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_cloud_duplicates_suppressed_total", Help: "Objects found already stored with the same content (redeliveries).",
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_cloud_stored_bytes_total", Help: "Bytes of objects written to S3.",
		}),
		s3Put: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "forest_cloud_s3_put_seconds", Help: "Duration of S3 PUT requests.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		s3Retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_cloud_s3_retries_total", Help: "S3 writes retried after a transient error.",
		}),
		s3Errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_cloud_s3_errors_total", Help: "Transient S3 errors.",
		}),
		s3Healthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "forest_cloud_s3_healthy", Help: "0 while the S3 circuit breaker is open (writes and probes failing; consumption paused), else 1.",
		}),
		s3Outages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_cloud_s3_outages_total", Help: "Times the S3 circuit breaker opened.",
		}),
		s3Probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forest_cloud_s3_probes_total", Help: "S3 probes of the circuit breaker, by result (ok, failed).",
		}, []string{"result"}),
		legacyArgs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "forest_cloud_queue_legacy_arguments", Help: "1 if the frames queue was declared with arguments by an earlier version (they override the policy; see forest-cloud queue migrate).",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "forest_cloud_broker_connected", Help: "1 while consuming from the broker, else 0.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forest_cloud_broker_reconnects_total", Help: "Broker sessions lost and re-established.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "forest_cloud_inflight_messages", Help: "Messages being handled by workers.",
		}),
		handleSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "forest_cloud_handle_seconds", Help: "Time from delivery to ack, nack or dead letter.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	m.s3Healthy.Set(1)
	m.tick()
	reg.MustRegister(m.messages, m.deadLetters, m.objects, m.duplicates, m.bytes, m.s3Put, m.s3Retries,
		m.s3Errors, m.s3Healthy, m.s3Outages, m.s3Probes, m.legacyArgs, m.connected, m.reconnects, m.inflight, m.handleSeconds)
	return m
}
