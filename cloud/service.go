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
	"runtime"
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

// GCPercentFor is the garbage collector setting forest-cloud runs cfg with
// unless GOGC is set: GCPercent, or 100 with legacy.format png. Converting
// keeps megabytes of decoded pixels and PNG bytes live per worker: with
// 400 the legacy benchmark's peak RSS was 169–189 MB, with 100 it is 76–79
// MB, at the same 22–24 ms of CPU per converted image (BENCHMARKS.md,
// legacy path).
func GCPercentFor(cfg *Config) int {
	if cfg.Legacy.Format == LegacyPNG {
		return 100
	}
	return GCPercent
}

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
	urls    []string // the broker addresses with credentials (Config.BrokerURLs)
	brokers *brokers // the session loop's and the start-up check's turn over urls
	fleet   *fleet   // status reports and the fleet page (fleet.go)
	version string

	brk      *breaker
	probeKey string

	ready      atomic.Bool  // consuming
	busy       atomic.Int64 // messages in workers' hands
	warnedArgs atomic.Bool
	startWait  atomic.Value // string: why start-up waits ("" when not)
	brokerWhy  atomic.Value // string: why the last broker session ended
	// converting bounds the legacy images converted to PNG at once to
	// GOMAXPROCS.
	converting chan struct{}
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
	urls, err := cfg.BrokerURLs()
	if err != nil {
		return nil, err
	}
	client, creds, hc, err := newS3Client(ctx, &cfg.S3)
	if err != nil {
		return nil, err
	}
	s := &Service{urls: urls, hc: hc, cfg: cfg, converting: make(chan struct{}, runtime.GOMAXPROCS(0)), log: log.With("component", "cloud"), reg: reg, m: newMetrics(reg), creds: creds, version: opts.Version}
	s.store = &store{
		c: client, bucket: cfg.S3.Bucket, checksum: cfg.S3.Checksum == "sha256", conditional: *cfg.S3.ConditionalPut,
		timeout: cfg.S3.RequestTimeout, retryMin: cfg.S3.RetryMin, retryMax: cfg.S3.RetryMax,
		retryFor: cfg.S3.RetryMaxElapsed, m: s.m, log: s.log,
	}
	s.brk = newBreaker(s.probe, cfg.S3.RetryMin, cfg.S3.RetryMax, s.log, func(open bool, err error) {
		if open {
			s.m.s3Healthy.Set(0)
			s.m.s3Outages.Inc()
		} else {
			s.m.s3Healthy.Set(1)
			s.deleteProbe()
		}
	})
	s.store.brk = s.brk
	s.ownUser = userOf(urls[0])
	host, _ := os.Hostname()
	s.brokers = s.newBrokers()
	s.probeKey = fmt.Sprintf("%s/.forest-cloud-check/probe-%s-%d", cfg.S3.Prefix, host, os.Getpid())
	if s.fleet, err = newFleet(s, reg); err != nil {
		return nil, err
	}
	return s, nil
}

// deleteProbe removes the breaker's probe object once S3 answers again.
func (s *Service) deleteProbe() {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.S3.RequestTimeout)
	defer cancel()
	if _, err := s.store.c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.cfg.S3.Bucket), Key: aws.String(s.probeKey)}); err != nil {
		s.log.Warn("cannot delete the S3 probe object", "key", s.probeKey, "err", err)
	}
}

// probe is the breaker's cheap request: a PUT of an empty object under the
// start-up check's prefix (overwritten each time; deleted when S3 answers
// again). A write, not a HEAD, because what must work again is writing: a
// server that still answers HEAD while refusing writes (a full disk,
// throttling) keeps the breaker open.
func (s *Service) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.S3.RequestTimeout)
	defer cancel()
	_, err := s.store.c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(s.cfg.S3.Bucket), Key: aws.String(s.probeKey),
		Body: http.NoBody, ContentLength: aws.Int64(0)})
	s.m.tick()
	if err != nil {
		s.m.s3Probes.WithLabelValues("failed").Inc()
		return fmt.Errorf("probe put %s: %w", s.probeKey, err)
	}
	s.m.s3Probes.WithLabelValues("ok").Inc()
	return nil
}

// Check runs the start-up checks: S3 credentials can be had, the bucket
// exists and is writable, the broker is reachable and the topology can be
// declared. The error (matching ErrStartup) says what is missing and how to
// fix it.
func (s *Service) Check(ctx context.Context) error {
	if err := s.checkS3(ctx); err != nil {
		return err
	}
	return s.checkBroker(ctx)
}

// checkS3 is the S3 half of Check. A *StartupError with Transient set
// means S3 did not answer (a network error, a timeout, a 5xx): Run then
// waits for it instead of exiting.
func (s *Service) checkS3(ctx context.Context) error {
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
		return &StartupError{Check: "s3 bucket " + s.cfg.S3.Bucket, Err: err, Fix: fix, Transient: transientS3(err)}
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
				Fix: "grant s3:PutObject on " + s.cfg.S3.Bucket + "/" + s.cfg.S3.Prefix + "/* to these credentials", Transient: transientS3(err)}
		}
		time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
	}
	if _, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.cfg.S3.Bucket), Key: aws.String(probe)}); err != nil {
		s.log.Warn("cannot delete start-up probe object", "key", probe, "err", err)
	}
	return nil
}

// noteLegacyArgs records whether the frames queue carries arguments of an
// earlier version, and warns once when it does.
func (s *Service) noteLegacyArgs(legacy bool) {
	if legacy {
		s.m.legacyArgs.Set(1)
		if !s.warnedArgs.Swap(true) {
			s.log.Warn(legacyArgsWarning(&s.cfg.AMQP))
		}
	} else {
		s.m.legacyArgs.Set(0)
	}
}

// transientS3 reports whether an S3 error may pass by itself: no HTTP
// answer at all (refused, reset, timed out) or a 5xx or 429 one. A 4xx
// answer (no such bucket, forbidden, wrong region) needs a person.
func transientS3(err error) bool {
	st := httpStatus(err)
	return st == 0 || st >= 500 || st == http.StatusTooManyRequests
}

// checkBroker is the broker half of Check.
func (s *Service) checkBroker(ctx context.Context) error {
	conn, _, err := s.brokers.dial()
	if err != nil {
		return &StartupError{Check: "broker", Err: err, Fix: "check amqp.url or amqp.urls (host, port, vhost, user, password) and that RabbitMQ is running"}
	}
	defer conn.Close()
	legacy, err := declare(conn, &s.cfg.AMQP)
	if err != nil {
		return &StartupError{Check: "broker topology", Err: err,
			Fix: "grant this user configure/write/read on the queues and exchanges"}
	}
	s.noteLegacyArgs(legacy)
	return nil
}

// newBrokers returns a turn over the broker addresses for one user of
// them (brokers are not safe for concurrent use): the session loop, the
// status consumer.
func (s *Service) newBrokers() *brokers {
	host, _ := os.Hostname()
	return newBrokers(s.urls, s.cfg.AMQP.Heartbeat, fmt.Sprintf("forest-cloud %s %s", s.version, host))
}

// declare declares the exchange, the dead-letter exchange and queue, the
// frames quorum queue (with no argument but its type: its settings come
// from the policy, see Policy) and the bindings, each on a channel of its
// own. legacy reports a frames queue declared with arguments by an
// earlier version, which is used as it is.
func declare(conn *amqp.Connection, a *AMQPConfig) (legacy bool, err error) {
	err = withChannel(conn, func(ch *amqp.Channel) error {
		if err := ch.ExchangeDeclare(a.Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %s: %w", a.Exchange, err)
		}
		if err := ch.ExchangeDeclare(a.DeadLetterExchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %s: %w", a.DeadLetterExchange, err)
		}
		if _, err := ch.QueueDeclare(a.DeadLetterQueue, true, false, false, false, queueArgs); err != nil {
			return fmt.Errorf("declare queue %s: %w", a.DeadLetterQueue, err)
		}
		if err := ch.QueueBind(a.DeadLetterQueue, "", a.DeadLetterExchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %s: %w", a.DeadLetterQueue, err)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if legacy, err = declareQueue(conn, a.Queue); err != nil {
		return false, fmt.Errorf("declare queue %s: %w", a.Queue, err)
	}
	err = withChannel(conn, func(ch *amqp.Channel) error {
		if err := ch.QueueBind(a.Queue, a.BindingKey, a.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %s: %w", a.Queue, err)
		}
		return nil
	})
	return legacy, err
}

// Handler serves /metrics, /healthz (the process runs), /readyz (the
// consumer is consuming and S3 answers; otherwise 503 with the reason) and
// the fleet page under /fleet (fleetpage.go).
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := s.Readiness()
		if !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready: "+why+"\n")
	})
	s.fleet.routes(mux)
	return mux
}

// Ready reports whether the service is consuming and S3 answers.
func (s *Service) Ready() bool { ok, _ := s.Readiness(); return ok }

// Readiness reports whether the service is consuming and S3 answers, and
// why not: waiting for S3 at start, S3 out (the circuit breaker open:
// consumption paused, messages wait in the queue), or not consuming from
// the broker.
func (s *Service) Readiness() (bool, string) {
	if why, _ := s.startWait.Load().(string); why != "" {
		return false, why
	}
	if open, since, err := s.brk.status(); open {
		return false, fmt.Sprintf("S3 failing since %s (last probe: %v); consumption paused, messages wait in the queue",
			since.UTC().Format(time.RFC3339), err)
	}
	if !s.ready.Load() {
		why, _ := s.brokerWhy.Load().(string)
		if why == "" {
			why = "connecting"
		}
		return false, "not consuming from the broker: " + why
	}
	return true, "consuming from " + s.cfg.AMQP.Queue
}

// Run serves HTTP if configured, checks the environment (Check; while S3
// does not answer it waits, not ready, instead of exiting), and consumes
// until ctx is cancelled, reconnecting to the broker with jittered backoff.
// It returns nil after a clean shutdown, or the start-up error.
func (s *Service) Run(ctx context.Context) error {
	defer s.hc.CloseIdleConnections()
	var wg sync.WaitGroup
	defer wg.Wait()
	// The HTTP server and the systemd notifier stop when Run returns,
	// also with a start-up error.
	helpers, stopHelpers := context.WithCancel(ctx)
	defer stopHelpers()
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
			<-helpers.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		s.log.Info("serving http", "addr", l.Addr().String())
	}
	wg.Go(func() { s.notify(helpers) })
	if err := s.waitS3(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped during start-up
		}
		return err
	}
	if err := s.checkBroker(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	// The breaker's prober outlives the sessions (stopped after them).
	bctx, stopBreaker := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBreaker()
	wg.Add(1)
	go func() { defer wg.Done(); s.brk.run(bctx) }()

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
		s.m.tick()
		if ctx.Err() != nil {
			s.log.Info("stopped")
			return nil
		}
		s.brokerWhy.Store(err.Error())
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

// waitS3 runs the S3 start-up checks until they pass, retrying with jittered
// backoff (s3.retry_min to s3.retry_max) while S3 does not answer; /readyz
// says so meanwhile. A check that needs a person (no bucket, forbidden)
// returns its error at once.
func (s *Service) waitS3(ctx context.Context) error {
	defer s.startWait.Store("")
	delay := s.cfg.S3.RetryMin
	for attempt := 0; ; attempt++ {
		err := s.checkS3(ctx)
		s.m.tick()
		var se *StartupError
		if err == nil || ctx.Err() != nil || !errors.As(err, &se) || !se.Transient {
			if err == nil && attempt > 0 {
				s.log.Info("S3 answers; starting", "waited_probes", attempt)
			}
			return err
		}
		s.startWait.Store(fmt.Sprintf("starting: S3 does not answer (%v); waiting for it", se.Err))
		if attempt == 0 {
			s.log.Error("S3 does not answer at start; waiting for it before consuming", "check", se.Check, "err", se.Err)
		}
		d := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
		delay = min(delay*2, s.cfg.S3.RetryMax)
	}
}

// session runs one broker connection until it fails or ctx is cancelled.
// It consumes in rounds: while the S3 circuit breaker is open it takes
// nothing; when the breaker opens during a round, the consumer is
// cancelled, the deliveries already sent are parked (see park), and the
// next round starts once S3 answers. A connection that was made and then
// lost moves the next attempt on to the next broker address.
func (s *Service) session(ctx context.Context) error {
	conn, addr, err := s.brokers.dial()
	if err != nil {
		return fmt.Errorf("dial broker: %w", err)
	}
	defer conn.Close()
	defer func() {
		if ctx.Err() == nil {
			s.brokers.lost()
		}
	}()
	s.log.Info("connected to the broker", "url", addr)
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	legacy, err := declare(conn, &s.cfg.AMQP)
	if err != nil {
		return err
	}
	s.noteLegacyArgs(legacy)
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
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
	s.m.connected.Set(1)
	defer func() { s.ready.Store(false); s.m.connected.Set(0) }()
	// lost receives the first failure of the connection or its channels.
	lost := make(chan error, 1)
	watchDone := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		var err error
		select {
		case e := <-connClosed:
			err = fmt.Errorf("connection closed: %w", amqpErr(e))
		case e := <-chClosed:
			err = fmt.Errorf("channel closed: %w", amqpErr(e))
		case e := <-pubClosed:
			err = fmt.Errorf("publish channel closed: %w", amqpErr(e))
		case <-watchDone:
			return
		}
		lost <- err
	})
	defer watch.Wait()
	defer close(watchDone)

	// work is cancelled shutdown_timeout after ctx, bounding in-flight work.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	acks := newAcker(ch, ackBatch(s.cfg.AMQP.Prefetch, s.cfg.Consumer.Workers), ackDelay, s.log)
	host, _ := os.Hostname()
	var cause error
	for round := 1; cause == nil && ctx.Err() == nil; round++ {
		open, changed := s.brk.state()
		if open {
			s.ready.Store(false)
			select {
			case <-changed:
			case <-ctx.Done():
			case cause = <-lost:
			}
			continue
		}
		tag := fmt.Sprintf("forest-cloud-%s-%d-%d", host, os.Getpid(), round)
		deliveries, err := ch.Consume(s.cfg.AMQP.Queue, tag, false, false, false, false, nil)
		if err != nil {
			cause = fmt.Errorf("consume %s: %w", s.cfg.AMQP.Queue, err)
			break
		}
		s.ready.Store(true)
		s.brokerWhy.Store("")
		cause = s.consume(ctx, work, cancelWork, ch, pub, acks, tag, deliveries, changed, lost)
		s.ready.Store(false)
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

// consume runs one round: the workers handle deliveries until ctx ends, the
// connection fails (lost), the broker cancels the consumer, or the breaker
// opens (breakerChanged): then the consumer is cancelled and the workers
// park what was already delivered. It returns nil when the round ended
// because of the breaker or ctx.
func (s *Service) consume(ctx, work context.Context, cancelWork func(), ch, pub *amqp.Channel, acks *acker, tag string,
	deliveries <-chan amqp.Delivery, breakerChanged <-chan struct{}, lost <-chan error) error {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range s.cfg.Consumer.Workers {
		wg.Go(func() {
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
		})
	}
	workersDone := make(chan struct{})
	go func() { wg.Wait(); close(workersDone) }()
	abandon := func(err error) error {
		close(stop)
		cancelWork()
		<-workersDone
		return err
	}
	select {
	case <-workersDone:
		// The delivery channel closed: the broker cancelled the consumer
		// (queue deleted, node shutting down) or the channel died.
		select {
		case err := <-lost:
			return err
		case <-time.After(100 * time.Millisecond):
			return errors.New("consumer cancelled by the broker")
		}
	case err := <-lost:
		return abandon(err)
	case <-breakerChanged:
		// S3 is out: take nothing more. The deliveries already sent still
		// arrive (the client library drains its buffer before it closes
		// the delivery channel) and are parked; then the round ends.
		s.log.Warn("S3 out: cancelling the consumer; parking the messages it holds")
		if err := ch.Cancel(tag, false); err != nil {
			return abandon(fmt.Errorf("cancel consumer: %w", err))
		}
		select {
		case <-workersDone:
			return nil
		case err := <-lost:
			cancelWork()
			<-workersDone
			return err
		}
	case <-ctx.Done():
	}
	close(stop)
	s.log.Info("shutting down: finishing in-flight messages", "timeout", s.cfg.Consumer.ShutdownTimeout)
	select {
	case <-workersDone:
	case <-time.After(s.cfg.Consumer.ShutdownTimeout):
		s.log.Warn("shutdown timeout: returning in-flight messages to the queue")
		cancelWork()
		<-workersDone
	}
	return nil
}

func amqpErr(e *amqp.Error) error {
	if e == nil {
		return amqp.ErrClosed
	}
	return e
}

// handle processes one delivery and settles it: ack when stored, dead
// letter when poison, park when S3 is out, nack with requeue when the
// failure is the message's own. The result is counted once the ack is sent
// (see acker).
func (s *Service) handle(ctx context.Context, pub *amqp.Channel, acks *acker, d *amqp.Delivery) {
	t0 := time.Now()
	s.m.inflight.Inc()
	s.busy.Add(1)
	defer func() {
		s.busy.Add(-1)
		s.m.tick()
		s.m.inflight.Dec()
		s.m.handleSeconds.Observe(time.Since(t0).Seconds())
	}()
	log := s.log.With("delivery_tag", d.DeliveryTag, "message_id", d.MessageId, "routing_key", d.RoutingKey)
	requeue := func() {
		if err := acks.nack(d.DeliveryTag); err != nil {
			log.Warn("nack failed; the broker will redeliver", "err", err)
		}
		s.m.messages.WithLabelValues("requeued").Inc()
	}
	m := toMessage(d)
	p, err := s.plan(m, t0)
	dups := 0
	for attempt := 0; ; attempt++ {
		// While S3 is out nothing is attempted: the message is parked,
		// or held until S3 answers where it cannot be parked.
		if err == nil {
			if open, _ := s.brk.state(); open {
				err = ErrOutage
			} else {
				dups, err = s.storeAll(ctx, p)
			}
		}
		if !errors.Is(err, ErrOutage) || ctx.Err() != nil {
			break
		}
		if s.ownUser != "" {
			if perr := s.park(ctx, pub, d); perr != nil {
				log.Warn("parking failed; returning the message", "err", perr)
				requeue()
				return
			}
			acks.ack(d.DeliveryTag, func() {
				s.m.messages.WithLabelValues("parked").Inc()
				log.Debug("parked while S3 is out")
			})
			return
		}
		// Without a known broker user (EXTERNAL authentication) a copy
		// could not carry its publisher: hold the message instead.
		if werr := s.brk.wait(ctx); werr != nil {
			err = werr
			break
		}
		err = nil
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

// copyOf is the publishing that carries d onward as forest-cloud's own
// message (see the package function copyOf).
func (s *Service) copyOf(d *amqp.Delivery) amqp.Publishing { return copyOf(d, s.ownUser) }

// copyOf is the publishing that carries d onward as a message of the
// broker user own: its properties and headers, its original routing key
// and, in x-forest-user-id, the user who published it (trusted by
// forest-cloud only on messages published by its own user, which the
// broker validates).
func copyOf(d *amqp.Delivery, own string) amqp.Publishing {
	h := amqp.Table{}
	for k, v := range d.Headers {
		h[k] = v
	}
	// Only a copy published by this user carries a trusted original user:
	// drop a header the device may have forged, record the real one.
	if own == "" || d.UserId != own {
		delete(h, HeaderUserID)
		if d.UserId != "" {
			h[HeaderUserID] = d.UserId
		}
		h[HeaderRoutingKey] = d.RoutingKey
	} else if _, ok := h[HeaderRoutingKey]; !ok {
		h[HeaderRoutingKey] = d.RoutingKey
	}
	delete(h, "x-delivery-count")
	return amqp.Publishing{
		Headers: h, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding,
		DeliveryMode: amqp.Persistent, CorrelationId: d.CorrelationId, MessageId: d.MessageId,
		Timestamp: d.Timestamp, Type: d.Type, AppId: d.AppId, Body: d.Body,
		UserId: own, // validated by the broker: marks the copy as ours ("" if unknown)
	}
}

// deadLetter republishes d to the dead-letter exchange with the reason and
// waits for the broker's confirm.
func (s *Service) deadLetter(ctx context.Context, pub *amqp.Channel, d *amqp.Delivery, pe *PoisonError) error {
	p := s.copyOf(d)
	p.Headers[HeaderReason] = string(pe.Reason)
	p.Headers[HeaderReasonDetail] = truncate(pe.Err.Error(), 1000)
	p.Headers[HeaderDeadLetteredAt] = time.Now().UTC().Format(time.RFC3339Nano)
	if err := s.publishConfirmed(ctx, pub, s.cfg.AMQP.DeadLetterExchange, d.RoutingKey, p); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	return nil
}

// park puts a copy of d back at the tail of the queue (through the default
// exchange) and, once the broker confirmed it, the caller acks d. The copy
// is a new message to the broker, so its delivery count starts again: an
// S3 outage, however long, is never counted against a message. Its
// publisher is kept in x-forest-user-id (see copyOf), so the identity
// checks still apply to it when it comes back.
func (s *Service) park(ctx context.Context, pub *amqp.Channel, d *amqp.Delivery) error {
	p := s.copyOf(d)
	if err := s.publishConfirmed(ctx, pub, "", s.cfg.AMQP.Queue, p); err != nil {
		return fmt.Errorf("park: %w", err)
	}
	return nil
}

// publishConfirmed publishes p and waits for the broker's confirm.
func (s *Service) publishConfirmed(ctx context.Context, pub *amqp.Channel, exchange, key string, p amqp.Publishing) error {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.AMQP.ConfirmTimeout)
	defer cancel()
	dc, err := pub.PublishWithDeferredConfirmWithContext(cctx, exchange, key, false, false, p)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	ok, err := dc.WaitContext(cctx)
	if err != nil {
		return fmt.Errorf("confirm: %w", err)
	}
	if !ok {
		return errors.New("broker nacked the message")
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
