package cloud_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/procstat"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/wire"
)

// noisePNG returns a PNG of random pixels of about 200 KB.
func noisePNG(w, h int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.NRGBA{uint8(r.Uint32()), uint8(r.Uint32()), uint8(r.Uint32()), 255})
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	return buf.Bytes()
}

func maxRSSMB() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Maxrss) / 1024
}

// BenchmarkEndToEnd measures forest-cloud draining a queue pre-loaded with
// 200 KB frames into S3 against bare aws-sdk-go-v2 PUTs of the same image
// bytes at the same concurrency, in the same run on the same servers. Each
// iteration moves msgsPerIter messages both ways. Reported: msgs/s of both,
// their ratio, the ratio against bare PUTs of the same objects the consumer
// writes in the same pattern (image and mask at once, then the sidecar;
// target >= 0.8), the broker's own delivery rate, CPU per message of the
// consumer, the broker and the S3 server, and the process's peak RSS.
func BenchmarkEndToEnd(b *testing.B) {
	for _, last := range []bool{true, false} {
		b.Run(fmt.Sprintf("sidecar_last=%v", last), func(b *testing.B) { benchEndToEnd(b, last) })
	}
}

func benchEndToEnd(b *testing.B, sidecarLast bool) {
	const (
		prefetch = 32
		// Each iteration runs rounds × perRound messages through each of
		// the three paths, alternating them round by round so that load
		// from other jobs on the machine hits all three alike.
		rounds   = 4
		perRound = 125
	)
	e := newEnv(b, nil)
	e.cfg.AMQP.Prefetch = prefetch
	e.cfg.Consumer.Workers = 8 // the production default
	e.cfg.S3.SidecarLast = &sidecarLast
	e.declare(b)
	body := noisePNG(256, 260)
	mask := testImage(1, 256, 256)
	side := bytes.Repeat([]byte("x"), 900) // about a sidecar's size
	b.Logf("message body %d bytes, mask %d bytes", len(body), len(mask))
	type obj struct {
		ext  string
		body []byte
		sum  [32]byte
	}
	img := obj{".png", body, sha256.Sum256(body)}
	same := []obj{img, {".mask.png", mask, sha256.Sum256(mask)}, {".json", side, sha256.Sum256(side)}}
	workers := e.cfg.Consumer.Workers
	c := e.s3.Client()

	// bare PUTs n messages' objects with `workers` goroutines: the image
	// alone, or in the consumer's pattern (image and mask at once, then the
	// sidecar; or all three at once when !sidecarLast).
	bare := func(prefix string, n int, objs []obj) time.Duration {
		putOne := func(i int, o obj) {
			_, err := c.PutObject(context.Background(), &s3.PutObjectInput{
				Bucket: aws.String(e.bucket), Key: aws.String(fmt.Sprintf("%s/%06d%s", prefix, i, o.ext)), Body: bytes.NewReader(o.body),
				ChecksumAlgorithm: types.ChecksumAlgorithmSha256, ChecksumSHA256: aws.String(base64.StdEncoding.EncodeToString(o.sum[:])),
			}, s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)) // as the consumer signs
			if err != nil {
				b.Error(err)
			}
		}
		jobs := make(chan int)
		var wg sync.WaitGroup
		t0 := time.Now()
		for range workers {
			wg.Go(func() {
				for i := range jobs {
					if len(objs) == 1 {
						putOne(i, objs[0])
						continue
					}
					var both sync.WaitGroup
					both.Go(func() { putOne(i, objs[1]) })
					if !sidecarLast {
						both.Go(func() { putOne(i, objs[2]) })
					}
					putOne(i, objs[0])
					both.Wait()
					if sidecarLast {
						putOne(i, objs[2])
					}
				}
			})
		}
		for i := range n {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		return time.Since(t0)
	}

	// The consumer runs in this process: give it forest-cloud's GC setting.
	defer debug.SetGCPercent(debug.SetGCPercent(cloud.GCPercent))
	b.ResetTimer()
	var consumerT, bareT, sameT, brokerT, cpu, sameCPU time.Duration
	var brokerCPU, s3CPU, sameS3CPU time.Duration // the servers' CPU
	total := 0
	for iter := 0; b.Loop(); iter++ {
		for round := range rounds {
			msgs := make([]amqp.Publishing, perRound)
			for i := range msgs {
				f := &wire.Frame{
					ID: fmt.Sprintf("bench-%d-%d-%06d", iter, round, i), Device: "dev-a", Seq: uint64(i), Captured: captured,
					ContentType: wire.PNG, Image: body, Width: 256, Height: 260, Coverage: 0.4, Model: "bench/1", Mask: mask,
					User: rabbittest.AdminUser, Sent: captured,
				}
				m, err := wire.Encode(f)
				if err != nil {
					b.Fatal(err)
				}
				msgs[i] = publishing(m)
			}
			// Pre-load the queue, then time the consumer from the moment
			// it is consuming until the last message is stored.
			e.publish(b, "", func(int) string { return "frames.dev-a" }, msgs...)
			settle()
			stored := newStoredCounter(perRound, testLogger(b).Handler())
			r := e.startLogging(b, nil, slog.New(stored))
			for !r.svc.Ready() {
				time.Sleep(time.Millisecond)
			}
			cpu0 := procstat.ProcessCPU()
			bk0, s30 := serversCPU()
			t0 := time.Now()
			<-stored.done
			consumerT += time.Since(t0)
			cpu += procstat.ProcessCPU() - cpu0
			bk1, s31 := serversCPU()
			brokerCPU += bk1 - bk0
			s3CPU += s31 - s30
			if iter == 0 && round == 0 {
				b.Logf("mean s3 put %.1fms, mean handle %.1fms", 1000*histMean(r.reg, "forest_cloud_s3_put_seconds"), 1000*histMean(r.reg, "forest_cloud_handle_seconds"))
			}
			if err := r.stop(); err != nil {
				b.Fatal(err)
			}
			settle()
			bareT += bare(fmt.Sprintf("bare/%d/%d", iter, round), perRound, []obj{img})
			settle()
			c0 := procstat.ProcessCPU()
			_, s30 = serversCPU()
			sameT += bare(fmt.Sprintf("same/%d/%d", iter, round), perRound, same)
			sameCPU += procstat.ProcessCPU() - c0
			_, s31 = serversCPU()
			sameS3CPU += s31 - s30
			if round == 0 {
				// The broker alone: the same messages consumed and acked.
				e.publish(b, "", func(int) string { return "frames.dev-a" }, msgs...)
				brokerT += drainOnly(b, e.url, e.cfg.AMQP.Queue, prefetch, perRound)
			}
			total += perRound
		}
	}
	cr := float64(total) / consumerT.Seconds()
	br := float64(total) / bareT.Seconds()
	sr := float64(total) / sameT.Seconds()
	b.ReportMetric(cr, "consumer_msgs/s")
	b.ReportMetric(br, "bare_put_msgs/s")
	b.ReportMetric(sr, "bare_same_msgs/s")
	b.ReportMetric(float64(total/rounds)/brokerT.Seconds(), "broker_only_msgs/s")
	b.ReportMetric(cr/br, "ratio")
	b.ReportMetric(cr/sr, "ratio_same_objects")
	perMsg := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(total) }
	b.ReportMetric(perMsg(cpu), "cpu_us/msg")
	b.ReportMetric(perMsg(sameCPU), "bare_same_cpu_us/msg")
	b.ReportMetric(perMsg(brokerCPU), "broker_cpu_us/msg")
	b.ReportMetric(perMsg(s3CPU), "s3_server_cpu_us/msg")
	b.ReportMetric(perMsg(sameS3CPU), "bare_same_s3_server_cpu_us/msg")
	b.ReportMetric(maxRSSMB(), "peak_rss_MB")
}

// storedCounter is a log handler that closes done when the service has
// logged "stored" n times: the benchmark learns of the last stored message
// without polling the metrics (a Gather every few milliseconds took CPU
// from the consumer it measures). Warnings and errors go on to next.
type storedCounter struct {
	n    *atomic.Int64
	done chan struct{}
	next slog.Handler
}

func newStoredCounter(n int, next slog.Handler) storedCounter {
	c := storedCounter{n: new(atomic.Int64), done: make(chan struct{}), next: next}
	c.n.Store(int64(n))
	return c
}

func (c storedCounter) Enabled(_ context.Context, l slog.Level) bool {
	return l == slog.LevelDebug || l >= slog.LevelWarn
}
func (c storedCounter) WithAttrs(as []slog.Attr) slog.Handler {
	c.next = c.next.WithAttrs(as)
	return c
}
func (c storedCounter) WithGroup(g string) slog.Handler {
	c.next = c.next.WithGroup(g)
	return c
}
func (c storedCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		return c.next.Handle(ctx, r)
	}
	if r.Message == "stored" && c.n.Add(-1) == 0 {
		close(c.done)
	}
	return nil
}

// settle waits (at most 3 s) until the machine is mostly idle over 100 ms,
// so that each timed phase starts without the tail of the previous one:
// the broker writing the messages just pre-loaded, or the S3 server
// finishing up the last PUTs.
func settle() {
	busy := func() (busy, total uint64) {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0
		}
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:]
		for i, v := range f {
			n, _ := strconv.ParseUint(v, 10, 64)
			total += n
			if i != 3 && i != 4 { // idle, iowait
				busy += n
			}
		}
		return busy, total
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		b0, t0 := busy()
		time.Sleep(100 * time.Millisecond)
		b1, t1 := busy()
		if t1 == t0 || float64(b1-b0)/float64(t1-t0) < 0.2 {
			return
		}
	}
}

// serversCPU is the CPU time used so far by the broker's (beam.smp) and
// the S3 server's (versitygw) processes, in 10 ms ticks, from one pass over
// /proc: their share of a phase.
func serversCPU() (broker, s3 time.Duration) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: utime and stime are fields 14 and 15.
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < 0 {
			continue
		}
		var sum *time.Duration
		switch s[open+1 : end] {
		case "beam.smp":
			sum = &broker
		case "versitygw":
			sum = &s3
		default:
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseUint(f[11], 10, 64)
		k, _ := strconv.ParseUint(f[12], 10, 64)
		*sum += time.Duration(u+k) * 10 * time.Millisecond
	}
	return broker, s3
}

func histMean(reg interface {
	Gather() ([]*dto.MetricFamily, error)
}, name string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleSum() / float64(h.GetSampleCount())
		}
	}
	return 0
}

// drainOnly consumes n messages from queue and acks each, and returns how
// long it took: the broker's delivery rate with no S3 work.
func drainOnly(b *testing.B, url, queue string, prefetch, n int) time.Duration {
	var el time.Duration
	rabbittest.WithChannel(b, url, func(ch *amqp.Channel) {
		if err := ch.Qos(prefetch, 0, false); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		ds, err := ch.Consume(queue, "", false, false, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		for range n {
			d := <-ds
			if err := d.Ack(false); err != nil {
				b.Fatal(err)
			}
		}
		el = time.Since(t0)
	})
	return el
}
