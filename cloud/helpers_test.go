package cloud_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/internal/s3test"
	"github.com/forestwatch/forest/wire"
)

// childEnv names the config file a re-executed test binary runs the
// consumer with (the kill -9 test).
const childEnv = "FOREST_CLOUD_TEST_CHILD_CONFIG"

func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		os.Exit(runChild(path))
	}
	// The parallel tests wait on servers, not CPU (the S3 outage test
	// sleeps 60 s): run them together unless -test.parallel says otherwise.
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "4")
	}
	code := m.Run()
	rabbittest.StopShared()
	s3test.StopShared()
	os.Exit(code)
}

// runChild is the consumer process of the kill test.
func runChild(path string) int {
	cfg, err := cloud.LoadConfig(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	svc, err := cloud.New(ctx, cloud.Options{Config: cfg})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := svc.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// env is one test's broker vhost, bucket and configuration.
type env struct {
	t      testing.TB
	broker *rabbittest.Broker
	url    string
	s3     *s3test.Server
	bucket string
	cfg    *cloud.Config
	yaml   []byte
}

// newEnv makes a vhost on the shared broker and a bucket on srv (the shared
// S3 server when nil) and a configuration for them.
func newEnv(t testing.TB, srv *s3test.Server, devices ...string) *env {
	t.Helper()
	b := rabbittest.Shared(t)
	if srv == nil {
		srv = s3test.Shared(t)
	}
	e := &env{t: t, broker: b, url: b.Vhost(t), s3: srv, bucket: srv.Bucket(t)}
	if len(devices) == 0 {
		devices = []string{"dev-a", "dev-b", "dev-c"}
	}
	raw := map[string]any{
		"amqp": map[string]any{"url": e.url, "prefetch": 32, "reconnect_min": "100ms", "reconnect_max": "1s", "confirm_timeout": "10s"},
		"s3": map[string]any{
			"bucket": e.bucket, "endpoint": srv.Endpoint, "region": srv.Region, "path_style": true,
			"access_key_id": srv.AccessKey, "secret_access_key": srv.SecretKey,
			"retry_min": "50ms", "retry_max": "1s", "retry_max_elapsed": "10s", "request_timeout": "5s",
		},
		"consumer": map[string]any{"workers": 4, "shutdown_timeout": "10s", "max_message_bytes": 1 << 20, "max_pixels": 4 << 20},
		"identity": map[string]any{"devices": map[string]any{rabbittest.AdminUser: devices}},
		"legacy":   map[string]any{"users": []string{rabbittest.AdminUser}},
		"log":      map[string]any{"level": "debug", "format": "text"},
	}
	var err error
	if e.yaml, err = yaml.Marshal(raw); err != nil {
		t.Fatal(err)
	}
	if e.cfg, err = cloud.ParseConfig(e.yaml); err != nil {
		t.Fatal(err)
	}
	return e
}

// running is a Service running in this process.
type running struct {
	svc  *cloud.Service
	reg  *prometheus.Registry
	stop func() error
}

// start runs a Service with e's configuration until stop (or cleanup).
func (e *env) start(t testing.TB, cfg *cloud.Config) *running {
	t.Helper()
	return e.startLogging(t, cfg, testLogger(t))
}

// startLogging is start with the service's logs going to log.
func (e *env) startLogging(t testing.TB, cfg *cloud.Config, log *slog.Logger) *running {
	t.Helper()
	if cfg == nil {
		cfg = e.cfg
	}
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := cloud.New(ctx, cloud.Options{Config: cfg, Registry: reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(60 * time.Second):
				runErr = fmt.Errorf("service did not stop within 60s")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("service: %v", err)
		}
	})
	return &running{svc: svc, reg: reg, stop: stop}
}

// counter sums a metric's series whose labels include the given pairs.
func counter(reg *prometheus.Registry, name string, labels ...string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

// frame is a test frame and what it must become in S3.
type frame struct {
	f   *wire.Frame
	pub amqp.Publishing
	key string
}

// testImage returns a small PNG unique to n.
func testImage(n int, w, h int) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.NRGBA{uint8(n), uint8(n >> 8), uint8(n>>16 ^ x ^ y), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

var captured = time.Date(2026, 6, 1, 10, 30, 0, 0, time.UTC)

// makeFrame builds frame n of device with a mask on even n, published by
// user (the admin by default, mapped to the test devices).
func makeFrame(t testing.TB, prefix, device string, n int, user string) frame {
	t.Helper()
	f := &wire.Frame{
		ID: fmt.Sprintf("%s-%06d", device, n), Device: device, Seq: uint64(n),
		Captured: captured.Add(time.Duration(n) * time.Second), ContentType: wire.PNG,
		Image: testImage(n, 8, 8), Width: 8, Height: 8, Coverage: 0.5, Model: "test/1",
		Agent: "forest-agent/test", User: user, Sent: captured,
	}
	if n%2 == 0 {
		f.Mask = testImage(n+1, 8, 8)
		f.GPS = &wire.GPS{Lat: -3.1, Lon: -60.0}
	}
	m, err := wire.Encode(f)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := cloud.KeysFor(prefix, f.Device, f.ID, f.Captured, f.ContentType)
	if err != nil {
		t.Fatal(err)
	}
	return frame{f: f, pub: publishing(m), key: keys.Image}
}

// publishing maps a wire.Message to an AMQP publishing.
func publishing(m wire.Message) amqp.Publishing {
	h := amqp.Table{}
	for k, v := range m.Headers {
		h[k] = v
	}
	return amqp.Publishing{
		ContentType: m.ContentType, MessageId: m.MessageID, Timestamp: m.Timestamp, AppId: m.AppID,
		Type: m.Type, UserId: m.UserID, Headers: h, Body: m.Body, DeliveryMode: amqp.Persistent,
	}
}

// declare applies the queue policy for e.cfg as an operator would
// (rabbitmqctl set_policy, on a harness broker) and declares the
// consumer's topology, so messages can be published before a consumer
// runs.
func (e *env) declare(t testing.TB) {
	t.Helper()
	p := cloud.PolicyFor(e.cfg)
	if out, err := e.broker.CtlErr("set_policy", "-p", p.Vhost, "--apply-to", p.ApplyTo, "--priority", strconv.Itoa(p.Priority),
		p.Name, p.Pattern, p.DefinitionJSON()); err != nil && !strings.Contains(err.Error(), "external broker") {
		t.Fatalf("set_policy: %v: %s", err, out)
	}
	svc, err := cloud.New(context.Background(), cloud.Options{Config: e.cfg})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// publish publishes messages to the frames exchange with confirms, as url's
// user.
func (e *env) publish(t testing.TB, url string, routingKey func(i int) string, msgs ...amqp.Publishing) {
	t.Helper()
	if url == "" {
		url = e.url
	}
	rabbittest.WithChannel(t, url, func(ch *amqp.Channel) {
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var dcs []*amqp.DeferredConfirmation
		for i, m := range msgs {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, e.cfg.AMQP.Exchange, routingKey(i), true, false, m)
			if err != nil {
				t.Fatal(err)
			}
			dcs = append(dcs, dc)
		}
		for _, dc := range dcs {
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				t.Fatalf("publish not confirmed: ok=%v err=%v", ok, err)
			}
		}
	})
}

func (e *env) publishFrames(t testing.TB, frames []frame) {
	t.Helper()
	msgs := make([]amqp.Publishing, len(frames))
	for i, f := range frames {
		msgs[i] = f.pub
	}
	e.publish(t, "", func(i int) string { return "frames." + frames[i].f.Device }, msgs...)
}

// queueDepth returns the ready message count of a queue.
func (e *env) queueDepth(t testing.TB, queue string) int {
	t.Helper()
	var n int
	rabbittest.WithChannel(t, e.url, func(ch *amqp.Channel) {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
		if err != nil {
			t.Fatal(err)
		}
		n = q.Messages
	})
	return n
}

// keys lists every key in the bucket.
func (e *env) keys(t testing.TB) map[string]int64 {
	t.Helper()
	c := e.s3.Client()
	out := map[string]int64{}
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(e.bucket)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			if strings.Contains(aws.ToString(o.Key), ".forest-cloud-check") {
				continue
			}
			out[aws.ToString(o.Key)] = aws.ToInt64(o.Size)
		}
	}
	return out
}

// get reads an object.
func (e *env) get(t testing.TB, key string) []byte {
	t.Helper()
	out, err := e.s3.Client().GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(e.bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// expectedKeys returns the keys the frames must produce.
func expectedKeys(t testing.TB, prefix string, frames []frame) map[string]bool {
	t.Helper()
	want := map[string]bool{}
	for _, f := range frames {
		k, err := cloud.KeysFor(prefix, f.f.Device, f.f.ID, f.f.Captured, f.f.ContentType)
		if err != nil {
			t.Fatal(err)
		}
		want[k.Image], want[k.Sidecar] = true, true
		if f.f.Mask != nil {
			want[k.Mask] = true
		}
	}
	return want
}

// verifyExactlyOnce checks that the bucket holds exactly the frames'
// objects, each image and mask with the right SHA-256.
func (e *env) verifyExactlyOnce(t testing.TB, frames []frame) {
	t.Helper()
	want := expectedKeys(t, e.cfg.S3.Prefix, frames)
	got := e.keys(t)
	for k := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("missing object %s", k)
		}
	}
	for k := range got {
		if !want[k] {
			t.Errorf("unexpected object %s", k)
		}
	}
	for _, f := range frames {
		keys, _ := cloud.KeysFor(e.cfg.S3.Prefix, f.f.Device, f.f.ID, f.f.Captured, f.f.ContentType)
		if sha256.Sum256(e.get(t, keys.Image)) != sha256.Sum256(f.f.Image) {
			t.Errorf("%s: wrong content", keys.Image)
		}
		if e.cfg.S3.Checksum == "sha256" {
			// The checksum travelled with the PUT and the server kept it.
			h, err := e.s3.Client().HeadObject(context.Background(), &s3.HeadObjectInput{
				Bucket: aws.String(e.bucket), Key: aws.String(keys.Image), ChecksumMode: types.ChecksumModeEnabled})
			sum := sha256.Sum256(f.f.Image)
			if err != nil || aws.ToString(h.ChecksumSHA256) != base64.StdEncoding.EncodeToString(sum[:]) {
				t.Errorf("%s: stored checksum %q (%v)", keys.Image, aws.ToString(h.ChecksumSHA256), err)
			}
		}
		if f.f.Mask != nil && sha256.Sum256(e.get(t, keys.Mask)) != sha256.Sum256(f.f.Mask) {
			t.Errorf("%s: wrong content", keys.Mask)
		}
	}
}

// noLeaks checks on cleanup (after the services registered later have
// stopped) that no goroutine started after this call is left.
func noLeaks(t *testing.T) {
	t.Helper()
	opts := []goleak.Option{goleak.IgnoreCurrent(),
		// Idle keep-alive connections of the test's own S3 clients.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	}
	t.Cleanup(func() {
		// Let the HTTP and AMQP clients' idle goroutines wind down.
		var err error
		for range 50 {
			if err = goleak.Find(opts...); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Error(err)
	})
}

func writeFile(t testing.TB, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startS3 starts a private S3 server this test may stop.
func startS3(t testing.TB) *s3test.Server {
	t.Helper()
	return s3test.Start(t)
}
