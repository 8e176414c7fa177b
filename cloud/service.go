package cloud

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/wire"
)

// GCPercent is the garbage collector setting forest-cloud runs with unless
// GOGC is set: every message body (typically 200 KB, up to
// consumer.max_message_bytes) is garbage once stored while the live heap
// stays small (about prefetch × message size), so Go's default of 100
// collects many times a second. With 400 the queue → S3 benchmark spent
// about 15 % less CPU per message; the heap may grow to about five times
// the live messages.
const GCPercent = 400

// Options configure a Service. Config is required; the rest have useful
// zero values.
type Options struct {
	// Config is the validated configuration (LoadConfig or ParseConfig).
	Config *Config
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Registry receives the forest_cloud_* metrics and is served on
	// /metrics; nil makes a private registry.
	Registry *prometheus.Registry
	// Version is reported in logs and the connection name.
	Version string
}

// Service is a running forest-cloud consumer. Create it with New and run it
// with Run; it is not reusable after Run returns.
type Service struct {
	cfg     *Config
	log     *slog.Logger
	reg     *prometheus.Registry
	m       *metrics
	store   *store
	creds   aws.CredentialsProvider
	hc      *transports
	ownUser string
	url     string // the broker URL with credentials (Config.BrokerURL)
	fleet   *fleet // status reports and the fleet page (fleet.go)
	version string

	ready atomic.Bool
}

// New builds a Service: the S3 client from the AWS configuration and the
// metrics. It does not contact the broker or S3 (Check does).
func New(ctx context.Context, opts Options) (*Service, error) {
	if opts.Config == nil {
		return nil, &FieldError{Field: "config", Reason: "must be set"}
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	cfg := opts.Config
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	url, err := cfg.BrokerURL()
	if err != nil {
		return nil, err
	}
	client, creds, hc, err := newS3Client(ctx, &cfg.S3)
	if err != nil {
		return nil, err
	}
	s := &Service{url: url, hc: hc, cfg: cfg, log: log.With("component", "cloud"), reg: reg, m: newMetrics(reg), creds: creds, version: opts.Version}
	s.store = &store{
		c: client, bucket: cfg.S3.Bucket, checksum: cfg.S3.Checksum == "sha256", conditional: *cfg.S3.ConditionalPut,
		timeout: cfg.S3.RequestTimeout, retryMin: cfg.S3.RetryMin, retryMax: cfg.S3.RetryMax,
		retryFor: cfg.S3.RetryMaxElapsed, m: s.m, log: s.log,
	}
	s.ownUser = userOf(url)
	if s.fleet, err = newFleet(s, reg); err != nil {
		return nil, err
	}
	return s, nil
}

// Check runs the start-up checks: S3 credentials can be had, the bucket
// exists and is writable, the broker is reachable and the topology can be
// declared. The error (matching ErrStartup) says what is missing and how to
// fix it.
func (s *Service) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := s.creds.Retrieve(ctx); err != nil {
		return &StartupError{Check: "s3 credentials", Err: err,
			Fix: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE (s3.profile), an instance role, or s3.access_key_id/s3.secret_access_key from ${ENV}"}
	}
	c := s.store.c
	if _, err := c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.cfg.S3.Bucket)}); err != nil {
		fix := "check s3.endpoint, s3.region and network access to S3"
		switch httpStatus(err) {
		case http.StatusNotFound:
			fix = fmt.Sprintf("create the bucket (aws s3 mb s3://%s) or correct s3.bucket", s.cfg.S3.Bucket)
		case http.StatusForbidden:
			fix = "grant s3:ListBucket on the bucket to these credentials, or correct them"
		case http.StatusMovedPermanently:
			fix = "set s3.region to the bucket's region"
		}
		return &StartupError{Check: "s3 bucket " + s.cfg.S3.Bucket, Err: err, Fix: fix}
	}
	host, _ := os.Hostname()
	probe := fmt.Sprintf("%s/.forest-cloud-check/%s-%d-%08x", s.cfg.S3.Prefix, host, os.Getpid(), rand.Uint32())
	if s.cfg.S3.Prefix == "" {
		probe = probe[1:]
	}
	// Replicas starting together race on some servers (a posix-backed
	// server removes the probe directory another replica is writing
	// into): retry a few times before calling the bucket unwritable.
	for attempt := 1; ; attempt++ {
		_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(s.cfg.S3.Bucket), Key: aws.String(probe),
			Body: http.NoBody, ContentLength: aws.Int64(0)})
		if err == nil {
			break
		}
		if st := httpStatus(err); attempt == 4 || st == http.StatusForbidden || st == http.StatusNotFound || ctx.Err() != nil {
			return &StartupError{Check: "s3 bucket " + s.cfg.S3.Bucket + " writable", Err: err,
				Fix: "grant s3:PutObject on " + s.cfg.S3.Bucket + "/" + s.cfg.S3.Prefix + "/* to these credentials"}
		}
		time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
	}
	if _, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.cfg.S3.Bucket), Key: aws.String(probe)}); err != nil {
		s.log.Warn("cannot delete start-up probe object", "key", probe, "err", err)
	}
	conn, err := s.dial()
	if err != nil {
		return &StartupError{Check: "broker", Err: err, Fix: "check amqp.url (host, port, vhost, user, password) and that RabbitMQ is running"}
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return &StartupError{Check: "broker channel", Err: err, Fix: "check the broker's channel limits"}
	}
	defer ch.Close()
	if err := declare(ch, &s.cfg.AMQP); err != nil {
		return &StartupError{Check: "broker topology", Err: err,
			Fix: "grant this user configure/write/read on the queues and exchanges, or delete queues declared with other arguments"}
	}
	return nil
}

func (s *Service) dial() (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	host, _ := os.Hostname()
	props.SetClientConnectionName(fmt.Sprintf("forest-cloud %s %s", s.version, host))
	return amqp.DialConfig(s.url, amqp.Config{
		Heartbeat:  s.cfg.AMQP.Heartbeat,
		Properties: props,
		Dial:       amqp.DefaultDial(30 * time.Second),
	})
}

// declare declares the exchange, the quorum queue with its dead-letter
// exchange and delivery limit, the dead-letter exchange and queue, and the
// bindings.
func declare(ch *amqp.Channel, a *AMQPConfig) error {
	if err := ch.ExchangeDeclare(a.Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", a.Exchange, err)
	}
	if err := ch.ExchangeDeclare(a.DeadLetterExchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", a.DeadLetterExchange, err)
	}
	if _, err := ch.QueueDeclare(a.DeadLetterQueue, true, false, false, false, amqp.Table{
		amqp.QueueTypeArg: amqp.QueueTypeQuorum,
	}); err != nil {
		return fmt.Errorf("declare queue %s: %w", a.DeadLetterQueue, err)
	}
	if err := ch.QueueBind(a.DeadLetterQueue, "", a.DeadLetterExchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s: %w", a.DeadLetterQueue, err)
	}
	if _, err := ch.QueueDeclare(a.Queue, true, false, false, false, amqp.Table{
		amqp.QueueTypeArg:        amqp.QueueTypeQuorum,
		"x-dead-letter-exchange": a.DeadLetterExchange,
		"x-delivery-limit":       int64(a.DeliveryLimit),
	}); err != nil {
		return fmt.Errorf("declare queue %s: %w", a.Queue, err)
	}
	if err := ch.QueueBind(a.Queue, a.BindingKey, a.Exchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s: %w", a.Queue, err)
	}
	return nil
}

// Handler serves /metrics, /healthz (the process runs), /readyz (the
// consumer is connected and S3 writes are succeeding) and the fleet page
// under /fleet (fleetpage.go).
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.Ready() {
			http.Error(w, "not ready: broker not consuming or S3 failing", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	s.fleet.routes(mux)
	return mux
}

// Ready reports whether the service is consuming and S3 writes succeed.
func (s *Service) Ready() bool { return s.ready.Load() && !s.m.s3Down.Load() }

// Run checks the environment (Check), serves HTTP if configured, and
// consumes until ctx is cancelled, reconnecting to the broker with jittered
// backoff. It returns nil after a clean shutdown, or the start-up error.
func (s *Service) Run(ctx context.Context) error {
	defer s.hc.CloseIdleConnections()
	if err := s.Check(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped during start-up
		}
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.cfg.HTTP.Listen != "" {
		l, err := net.Listen("tcp", s.cfg.HTTP.Listen)
		if err != nil {
			return &StartupError{Check: "http listen " + s.cfg.HTTP.Listen, Err: err, Fix: "choose a free http.listen address"}
		}
		srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
		wg.Add(2)
		go func() { defer wg.Done(); _ = srv.Serve(l) }()
		go func() {
			defer wg.Done()
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		s.log.Info("serving http", "addr", l.Addr().String())
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.fleet.run(ctx) }()
	s.log.Info("consuming", "queue", s.cfg.AMQP.Queue, "bucket", s.cfg.S3.Bucket, "workers", s.cfg.Consumer.Workers, "prefetch", s.cfg.AMQP.Prefetch, "version", s.version)
	delay := s.cfg.AMQP.ReconnectMin
	for first := true; ; first = false {
		if !first {
			s.m.reconnects.Inc()
		}
		start := time.Now()
		err := s.session(ctx)
		if ctx.Err() != nil {
			s.log.Info("stopped")
			return nil
		}
		if time.Since(start) > time.Minute {
			delay = s.cfg.AMQP.ReconnectMin
		}
		d := delay/2 + rand.N(delay/2+1)
		s.log.Warn("broker session ended; reconnecting", "err", err, "retry_in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
		delay = min(delay*2, s.cfg.AMQP.ReconnectMax)
	}
}

// session runs one broker connection until it fails or ctx is cancelled.
func (s *Service) session(ctx context.Context) error {
	conn, err := s.dial()
	if err != nil {
		return fmt.Errorf("dial broker: %w", err)
	}
	defer conn.Close()
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := declare(ch, &s.cfg.AMQP); err != nil {
		return err
	}
	if err := ch.Qos(s.cfg.AMQP.Prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	pub, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open publish channel: %w", err)
	}
	pubClosed := pub.NotifyClose(make(chan *amqp.Error, 1))
	if err := pub.Confirm(false); err != nil {
		return fmt.Errorf("enable confirms: %w", err)
	}
	deliveries, err := ch.Consume(s.cfg.AMQP.Queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", s.cfg.AMQP.Queue, err)
	}
	s.ready.Store(true)
	s.m.connected.Set(1)
	defer func() { s.ready.Store(false); s.m.connected.Set(0) }()

	// work is cancelled shutdown_timeout after ctx, bounding in-flight work.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	acks := newAcker(ch, ackBatch(s.cfg.AMQP.Prefetch, s.cfg.Consumer.Workers), ackDelay, s.log)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range s.cfg.Consumer.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case d, ok := <-deliveries:
					if !ok {
						return
					}
					acks.begin(d.DeliveryTag)
					s.handle(work, pub, acks, &d)
				}
			}
		}()
	}
	workersDone := make(chan struct{})
	go func() { wg.Wait(); close(workersDone) }()
	var cause error
	select {
	case <-workersDone:
		// The delivery channel closed: the broker cancelled the consumer
		// (queue deleted, node shutting down) or the channel died.
		cause = errors.New("consumer cancelled by the broker")
	case <-ctx.Done():
	case e := <-connClosed:
		cause = fmt.Errorf("connection closed: %w", amqpErr(e))
	case e := <-chClosed:
		cause = fmt.Errorf("channel closed: %w", amqpErr(e))
	case e := <-pubClosed:
		cause = fmt.Errorf("publish channel closed: %w", amqpErr(e))
	}
	close(stop)
	done := workersDone
	if cause == nil {
		s.log.Info("shutting down: finishing in-flight messages", "timeout", s.cfg.Consumer.ShutdownTimeout)
		select {
		case <-done:
		case <-time.After(s.cfg.Consumer.ShutdownTimeout):
			s.log.Warn("shutdown timeout: returning in-flight messages to the queue")
			cancelWork()
			<-done
		}
	} else {
		cancelWork()
		<-done
	}
	// Send the held acks; closing the channel then returns every
	// unacknowledged delivery to the queue.
	acks.close()
	_ = ch.Close()
	_ = pub.Close()
	if err := conn.Close(); err != nil && cause == nil && !errors.Is(err, amqp.ErrClosed) {
		cause = err
	}
	return cause
}

func amqpErr(e *amqp.Error) error {
	if e == nil {
		return amqp.ErrClosed
	}
	return e
}

// handle processes one delivery and settles it: ack when stored, dead
// letter when poison, nack with requeue otherwise. The result is counted
// once the ack is sent (see acker).
func (s *Service) handle(ctx context.Context, pub *amqp.Channel, acks *acker, d *amqp.Delivery) {
	t0 := time.Now()
	s.m.inflight.Inc()
	defer func() { s.m.inflight.Dec(); s.m.handleSeconds.Observe(time.Since(t0).Seconds()) }()
	m := toMessage(d)
	log := s.log.With("delivery_tag", d.DeliveryTag, "message_id", d.MessageId, "routing_key", d.RoutingKey)
	requeue := func() {
		if err := acks.nack(d.DeliveryTag); err != nil {
			log.Warn("nack failed; the broker will redeliver", "err", err)
		}
		s.m.messages.WithLabelValues("requeued").Inc()
	}
	p, err := s.plan(m, t0)
	dups := 0
	if err == nil {
		dups, err = s.storeAll(ctx, p)
	}
	var pe *PoisonError
	switch {
	case err == nil:
		// The held ack must not keep the message's bodies alive.
		device, id, objects := p.device, p.id, len(p.objects)
		acks.ack(d.DeliveryTag, func() {
			result := "stored"
			if dups == objects {
				result = "duplicate"
			}
			s.m.messages.WithLabelValues(result).Inc()
			log.Debug("stored", "device", device, "frame_id", id, "objects", objects, "duplicates", dups)
		})
	case errors.As(err, &pe):
		if derr := s.deadLetter(ctx, pub, d, pe); derr != nil {
			log.Warn("dead-lettering failed; returning the message", "reason", string(pe.Reason), "err", derr)
			requeue()
			return
		}
		acks.ack(d.DeliveryTag, func() {
			s.m.messages.WithLabelValues("dead_lettered").Inc()
			s.m.deadLetters.WithLabelValues(string(pe.Reason)).Inc()
			log.Warn("dead-lettered", "reason", string(pe.Reason), "err", pe.Err)
		})
	default:
		log.Warn("cannot store; returning the message to the queue", "err", err)
		requeue()
	}
}

// deadLetter republishes d to the dead-letter exchange with the reason and
// waits for the broker's confirm.
func (s *Service) deadLetter(ctx context.Context, pub *amqp.Channel, d *amqp.Delivery, pe *PoisonError) error {
	h := amqp.Table{}
	for k, v := range d.Headers {
		h[k] = v
	}
	h[HeaderReason] = string(pe.Reason)
	h[HeaderReasonDetail] = truncate(pe.Err.Error(), 1000)
	h[HeaderRoutingKey] = d.RoutingKey
	h[HeaderDeadLetteredAt] = time.Now().UTC().Format(time.RFC3339Nano)
	// Only a copy published by this user carries a trusted original user:
	// drop a header the device may have forged, record the real one.
	if s.ownUser == "" || d.UserId != s.ownUser {
		delete(h, HeaderUserID)
		if d.UserId != "" {
			h[HeaderUserID] = d.UserId
		}
	}
	p := amqp.Publishing{
		Headers: h, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding,
		DeliveryMode: amqp.Persistent, CorrelationId: d.CorrelationId, MessageId: d.MessageId,
		Timestamp: d.Timestamp, Type: d.Type, AppId: d.AppId, Body: d.Body,
	}
	p.UserId = s.ownUser // validated by the broker: marks the copy as ours ("" if unknown)
	cctx, cancel := context.WithTimeout(ctx, s.cfg.AMQP.ConfirmTimeout)
	defer cancel()
	dc, err := pub.PublishWithDeferredConfirmWithContext(cctx, s.cfg.AMQP.DeadLetterExchange, d.RoutingKey, false, false, p)
	if err != nil {
		return fmt.Errorf("publish dead letter: %w", err)
	}
	ok, err := dc.WaitContext(cctx)
	if err != nil {
		return fmt.Errorf("confirm dead letter: %w", err)
	}
	if !ok {
		return errors.New("broker nacked the dead letter")
	}
	return nil
}

// toMessage maps a delivery to the transport-neutral wire.Message.
func toMessage(d *amqp.Delivery) wire.Message {
	m := wire.Message{
		ContentType: d.ContentType, MessageID: d.MessageId, Timestamp: d.Timestamp, AppID: d.AppId,
		Type: d.Type, UserID: d.UserId, Body: d.Body, Headers: make(map[string]any, len(d.Headers)),
	}
	for k, v := range d.Headers {
		switch x := v.(type) {
		case int8:
			m.Headers[k] = int64(x)
		case int16:
			m.Headers[k] = int64(x)
		case int32:
			m.Headers[k] = int64(x)
		case int:
			m.Headers[k] = int64(x)
		case uint8:
			m.Headers[k] = int64(x)
		case uint16:
			m.Headers[k] = int64(x)
		case uint32:
			m.Headers[k] = int64(x)
		case float32:
			m.Headers[k] = float64(x)
		default:
			m.Headers[k] = v
		}
	}
	return m
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
