package cloud_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/jpeg"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/image/draw"

	_ "image/png"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/freeport"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/internal/s3test"
)

// The legacy benchmark's load: the old devices' messages.
const (
	legacyW, legacyH = 1024, 768
	legacyTarget     = 200 << 10 // JPEG bytes
)

// legacyPython is the interpreter of the old service (Debian's, with its
// python3-pika, python3-boto3 and python3-pil).
const legacyPython = "/usr/bin/python3"

// sharedDir is the team's shared directory: $FOREST_SHARED, or ../shared
// beside the checkout.
func sharedDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("FOREST_SHARED")
	if dir == "" {
		dir = filepath.Join("..", "..", "shared")
	}
	if _, err := os.Stat(filepath.Join(dir, "peers", "legacy_consumer.py")); err != nil {
		tb.Fatalf("the team's shared directory (peers/legacy_consumer.py, data/) is not at %s: put it beside the checkout or set FOREST_SHARED", dir)
	}
	return dir
}

// legacyImages builds 1024×768 aerial JPEGs of about 200 KB from the
// aerial and NEON images of the shared data, as the old devices' cameras
// sent them: each source image scaled to cover 1024×768 (Catmull-Rom),
// cropped to the centre, and encoded at the JPEG quality whose size is
// nearest 200 KB.
func legacyImages(tb testing.TB, shared string) [][]byte {
	tb.Helper()
	var files []string
	for _, g := range []string{"data/aerial-trees/*/images/*.jpg", "data/neon-tree-crowns/*.jpg", "data/neon-tree-crowns/*.png"} {
		m, _ := filepath.Glob(filepath.Join(shared, g))
		files = append(files, m...)
	}
	slices.Sort(files)
	if len(files) == 0 {
		tb.Fatalf("no aerial images under %s/data", shared)
	}
	var out [][]byte
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		src, _, err := image.Decode(bytes.NewReader(raw))
		if err != nil {
			tb.Fatalf("%s: %v", f, err)
		}
		sb := src.Bounds()
		scale := max(float64(legacyW)/float64(sb.Dx()), float64(legacyH)/float64(sb.Dy()))
		sw, sh := int(float64(sb.Dx())*scale+0.5), int(float64(sb.Dy())*scale+0.5)
		big := image.NewRGBA(image.Rect(0, 0, sw, sh))
		draw.CatmullRom.Scale(big, big.Bounds(), src, sb, draw.Src, nil)
		x0, y0 := (sw-legacyW)/2, (sh-legacyH)/2
		frame := big.SubImage(image.Rect(x0, y0, x0+legacyW, y0+legacyH))
		best, bestDiff := []byte(nil), 1<<30
		lo, hi := 30, 98
		for lo <= hi {
			q := (lo + hi) / 2
			var buf bytes.Buffer
			if err := jpeg.Encode(&buf, frame, &jpeg.Options{Quality: q}); err != nil {
				tb.Fatal(err)
			}
			if d := abs(buf.Len() - legacyTarget); d < bestDiff {
				best, bestDiff = buf.Bytes(), d
			}
			if buf.Len() < legacyTarget {
				lo = q + 1
			} else {
				hi = q - 1
			}
		}
		out = append(out, best)
	}
	return out
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// legacyMessage is one old device's message: the JPEG as base64 in JSON.
func legacyMessage(img []byte, name string) []byte {
	b, _ := json.Marshal(map[string]any{
		"image":          base64.StdEncoding.EncodeToString(img),
		"image_metadata": map[string]any{"image_name": name},
	})
	return b
}

// consumerRun is what one consumer did with the benchmark's messages.
type consumerRun struct {
	name     string
	images   int
	elapsed  time.Duration // first object stored to the last
	cpu      time.Duration // the process's user + system CPU, start-up included
	peakRSS  int64         // bytes (VmHWM)
	startup  time.Duration // process start to the first object stored
	imgBytes int64         // bytes stored
}

func (r consumerRun) rate() float64 { return float64(r.images-1) / r.elapsed.Seconds() }
func (r consumerRun) cpuMS() float64 {
	return float64(r.cpu) / float64(time.Millisecond) / float64(r.images)
}
func (r consumerRun) rssMB() float64 { return float64(r.peakRSS) / 1e6 }

// procUsage reads a process's CPU time (user + system) and peak RSS.
func procUsage(pid int) (time.Duration, int64, error) {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(st)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	u, _ := strconv.ParseUint(f[11], 10, 64)
	k, _ := strconv.ParseUint(f[12], 10, 64)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	var hwm int64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			hwm = kb << 10
		}
	}
	// USER_HZ is 100 on Linux.
	return time.Duration(u+k) * 10 * time.Millisecond, hwm, nil
}

// runConsumer starts cmd and waits until it has stored n images, reads the
// process's CPU and peak RSS and kills it. With fromLog, the times of the
// first and the last image stored are those of forest-cloud's "stored" log
// lines (sent once S3 has the object and the ack goes out); otherwise the
// bucket's listing is polled every 50 ms (the Python service logs nothing
// and takes a second per few images, so 50 ms is well within 1 % of its
// run).
func runConsumer(b *testing.B, name string, cmd *exec.Cmd, srv *s3test.Server, bucket string, n int, fromLog bool, within time.Duration) consumerRun {
	b.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var tailMu sync.Mutex
	var tail []string
	stored := make(chan time.Time, n)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			tailMu.Lock()
			tail = append(tail[max(0, len(tail)-19):], line)
			tailMu.Unlock()
			var l struct {
				Time time.Time `json:"time"`
				Msg  string    `json:"msg"`
			}
			if fromLog && json.Unmarshal([]byte(line), &l) == nil && l.Msg == "stored" {
				select {
				case stored <- l.Time:
				default:
				}
			}
		}
	}()
	logTail := func() string {
		tailMu.Lock()
		defer tailMu.Unlock()
		return strings.Join(tail, "\n")
	}
	c := srv.Client()
	count := func() (int, int64) {
		var objs int
		var size int64
		p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
		for p.HasMorePages() {
			page, err := p.NextPage(context.Background())
			if err != nil {
				return -1, 0
			}
			for _, o := range page.Contents {
				if !strings.Contains(aws.ToString(o.Key), ".forest-cloud-check") {
					objs++
					size += aws.ToInt64(o.Size)
				}
			}
		}
		return objs, size
	}
	settle()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() { <-scanned; _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}()
	r := consumerRun{name: name, images: n}
	var first, last time.Time
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	complete := 0 // listings in a row that found every object (fromLog)
	for got, ticks := 0, 0; got < n; {
		select {
		case <-exited:
			b.Fatalf("%s exited after storing %d of %d images:\n%s", name, got, n, logTail())
		case <-deadline.C:
			b.Fatalf("%s stored %d of %d images in %s:\n%s", name, got, n, within, logTail())
		case at := <-stored:
			if got == 0 {
				first = at
			}
			got, last = got+1, at
		case now := <-poll.C:
			if ticks++; fromLog && ticks%20 != 0 {
				continue
			}
			objs, _ := count()
			if fromLog {
				// A log line lost or garbled must not stall the run: once
				// the bucket holds everything for a second, the last line
				// seen ends it.
				if objs >= n && got > 0 {
					if complete++; complete == 2 {
						b.Logf("%s: %d of %d stored lines read; the listing has every object", name, got, n)
						got = n
					}
				}
				continue
			}
			if objs > 0 && first.IsZero() {
				first = now
			}
			got, last = objs, now
		}
	}
	if r.cpu, r.peakRSS, err = procUsage(cmd.Process.Pid); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	r.elapsed, r.startup = last.Sub(first), first.Sub(t0)
	if objs, size := count(); objs != n {
		b.Fatalf("%s: %d objects stored, want %d", name, objs, n)
	} else {
		r.imgBytes = size
	}
	return r
}

// BenchmarkLegacy runs the service forest-cloud replaces
// (../shared/peers/legacy_consumer.py, the old devices' Python consumer)
// and forest-cloud, each as its own process with its defaults (forest-cloud:
// 8 workers, prefetch 32), on the same N legacy messages (1024×768 aerial
// JPEGs of about 200 KB built from ../shared/data, base64 in JSON) through
// the same broker and S3 server, one after the other in each iteration:
// Python, forest-cloud storing the images as sent (legacy.format original,
// the default), forest-cloud converting them to PNG (legacy.format png,
// what the Python service does). It reports each one's images/s (from the
// first object stored to the last), CPU per image and peak RSS, and the
// ratios to Python. FOREST_LEGACY_N sets N (default 300).
func BenchmarkLegacy(b *testing.B) {
	shared := sharedDir(b)
	if out, err := exec.Command(legacyPython, "-c", "import pika, boto3, PIL").CombinedOutput(); err != nil {
		b.Fatalf("the old service needs Debian's python3-pika, python3-boto3 and python3-pil (make bench installs them): %v: %s", err, out)
	}
	n := 300
	if v, err := strconv.Atoi(os.Getenv("FOREST_LEGACY_N")); err == nil && v > 1 {
		n = v
	}
	imgs := legacyImages(b, shared)
	var msgs []amqp.Publishing
	var imgBytes, msgBytes int
	for i := range n {
		img := imgs[i%len(imgs)]
		body := legacyMessage(img, fmt.Sprintf("mast-%02d/IMG_%05d.jpg", i%7, i))
		imgBytes += len(img)
		msgBytes += len(body)
		// user_id, as RabbitMQ checks it against the publishing user: what
		// lets forest-cloud tell which broker user a legacy message came from.
		msgs = append(msgs, amqp.Publishing{Body: body, UserId: rabbittest.AdminUser})
	}
	b.Logf("%d messages from %d images: %dx%d JPEG, %.0f KB on average, %.0f KB per message",
		n, len(imgs), legacyW, legacyH, float64(imgBytes)/float64(n)/1024, float64(msgBytes)/float64(n)/1024)

	bin := b.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/forest-cloud")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build forest-cloud: %v\n%s", err, out)
	}
	broker := rabbittest.Shared(b)
	url := broker.Vhost(b)
	srv := s3test.Shared(b)
	const pyQueue = "images" // the old service's queue (its routing_key)

	// publish loads the messages into a queue, with confirms.
	publish := func(exchange, key string) {
		rabbittest.WithChannel(b, url, func(ch *amqp.Channel) {
			if err := ch.Confirm(false); err != nil {
				b.Fatal(err)
			}
			for from := 0; from < len(msgs); from += 64 {
				var dcs []*amqp.DeferredConfirmation
				for _, m := range msgs[from:min(from+64, len(msgs))] {
					dc, err := ch.PublishWithDeferredConfirm(exchange, key, true, false, m)
					if err != nil {
						b.Fatal(err)
					}
					dcs = append(dcs, dc)
				}
				for _, dc := range dcs {
					if !dc.Wait() {
						b.Fatal("publish nacked")
					}
				}
			}
		})
	}
	python := func() consumerRun {
		bucket := srv.Bucket(b)
		rabbittest.WithChannel(b, url, func(ch *amqp.Channel) {
			// As the old service declares it (pika's defaults).
			if _, err := ch.QueueDeclare(pyQueue, false, false, false, false, nil); err != nil {
				b.Fatal(err)
			}
		})
		publish("", pyQueue)
		cmd := exec.Command(legacyPython, filepath.Join(shared, "peers", "legacy_consumer.py"))
		cmd.Env = []string{
			"PATH=/usr/bin:/bin", "HOME=" + b.TempDir(),
			"AMQP_URL=" + url, "QUEUE=" + pyQueue, "S3_BUCKET=" + bucket,
			"S3_ENDPOINT_URL=" + srv.Endpoint, "S3_ADDRESSING_STYLE=path",
			"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey, "AWS_DEFAULT_REGION=" + srv.Region,
		}
		return runConsumer(b, "python", cmd, srv, bucket, n, false, 30*time.Minute)
	}
	forestCloud := func(format string) consumerRun {
		bucket := srv.Bucket(b)
		ports, err := freeport.Ports(1)
		if err != nil {
			b.Fatal(err)
		}
		cfgYAML := fmt.Sprintf(`amqp:
  url: %s
s3:
  bucket: %s
  endpoint: %s
  region: %s
  path_style: true
  access_key_id: ${FOREST_BENCH_S3_KEY}
  secret_access_key: ${FOREST_BENCH_S3_SECRET}
legacy:
  users: [%s]
  format: %s
http:
  listen: 127.0.0.1:%d
log:
  level: debug
  format: json
`, url, bucket, srv.Endpoint, srv.Region, rabbittest.AdminUser, format, ports[0])
		path := filepath.Join(b.TempDir(), "cloud.yaml")
		if err := os.WriteFile(path, []byte(cfgYAML), 0o600); err != nil {
			b.Fatal(err)
		}
		b.Setenv("FOREST_BENCH_S3_KEY", srv.AccessKey)
		b.Setenv("FOREST_BENCH_S3_SECRET", srv.SecretKey)
		cfg, err := cloud.LoadConfig(path)
		if err != nil {
			b.Fatal(err)
		}
		// The topology, so that the messages can wait in the queue.
		svc, err := cloud.New(context.Background(), cloud.Options{Config: cfg})
		if err != nil {
			b.Fatal(err)
		}
		if err := svc.Check(context.Background()); err != nil {
			b.Fatal(err)
		}
		publish(cfg.AMQP.Exchange, "frames.legacy")
		cmd := exec.Command(filepath.Join(bin, "forest-cloud"), "run", "--config", path)
		// The command's own GC settings (see cloud.GCPercent).
		cmd.Env = append(os.Environ(), "GOGC=", "GOMEMLIMIT=")
		return runConsumer(b, "forest-cloud "+format, cmd, srv, bucket, n, true, 10*time.Minute)
	}

	var runs [][3]consumerRun
	for b.Loop() {
		py := python()
		orig := forestCloud(cloud.LegacyOriginal)
		conv := forestCloud(cloud.LegacyPNG)
		runs = append(runs, [3]consumerRun{py, orig, conv})
		b.Logf("%-26s %8s %12s %14s %10s %9s %9s", "consumer", "images/s", "CPU ms/image", "peak RSS MB", "MB stored", "× images/s", "× CPU")
		for _, r := range []consumerRun{py, orig, conv} {
			b.Logf("%-26s %8.1f %12.1f %14.1f %10.1f %9.1f %9.3f", r.name, r.rate(), r.cpuMS(), r.rssMB(),
				float64(r.imgBytes)/1e6, r.rate()/py.rate(), r.cpuMS()/py.cpuMS())
		}
	}
	last := runs[len(runs)-1]
	py, orig, conv := last[0], last[1], last[2]
	b.ReportMetric(py.rate(), "python_img/s")
	b.ReportMetric(orig.rate(), "cloud_img/s")
	b.ReportMetric(conv.rate(), "cloud_png_img/s")
	b.ReportMetric(orig.rate()/py.rate(), "ratio_img/s")
	b.ReportMetric(conv.rate()/py.rate(), "ratio_png_img/s")
	b.ReportMetric(py.cpuMS(), "python_cpu_ms/img")
	b.ReportMetric(orig.cpuMS(), "cloud_cpu_ms/img")
	b.ReportMetric(conv.cpuMS(), "cloud_png_cpu_ms/img")
	b.ReportMetric(py.rssMB(), "python_peak_MB")
	b.ReportMetric(orig.rssMB(), "cloud_peak_MB")
	b.ReportMetric(conv.rssMB(), "cloud_png_peak_MB")
}
