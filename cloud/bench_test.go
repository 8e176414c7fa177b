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
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/uplink/uplinktest"
	"github.com/forestwatch/forest/uplink/wire"
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

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
// their ratio (target >= 0.8), the ratio against bare PUTs of every object
// the consumer writes (image and sidecar), consumer CPU per message and the
// process's peak RSS.
func BenchmarkEndToEnd(b *testing.B) {
	const prefetch = 32

	const msgsPerIter = 500
	e := newEnv(b, nil)
	e.cfg.AMQP.Prefetch = prefetch
	e.cfg.Consumer.Workers = 8 // the production default
	e.declare(b)
	body := noisePNG(256, 260)
	mask := testImage(1, 256, 256)
	b.Logf("message body %d bytes", len(body))
	sum := sha256.Sum256(body)
	maskSum := sha256.Sum256(mask)
	workers := e.cfg.Consumer.Workers
	c := e.s3.Client()
	b.ResetTimer()
	var consumerT, bareT, bare2T, brokerT, cpu time.Duration
	total := 0
	for iter := 0; b.Loop(); iter++ {
		// Pre-load the queue.
		msgs := make([]amqp.Publishing, msgsPerIter)
		var sidecarLen int
		for i := range msgs {
			f := &wire.Frame{
				ID: fmt.Sprintf("bench-%d-%06d", iter, i), Device: "dev-a", Seq: uint64(i), Captured: captured,
				ContentType: wire.PNG, Image: body, Width: 256, Height: 260, Coverage: 0.4, Model: "bench/1", Mask: mask,
				User: uplinktest.AdminUser, Sent: captured,
			}
			m, err := wire.Encode(f)
			if err != nil {
				b.Fatal(err)
			}
			msgs[i] = publishing(m)
		}
		sidecarLen = 900
		e.publish(b, "", func(int) string { return "frames.dev-a" }, msgs...)

		bare := func(prefix string, all bool) time.Duration {
			side := bytes.Repeat([]byte("x"), 900)
			type obj struct {
				ext  string
				body []byte
				sum  [32]byte
			}
			objs := []obj{{".png", body, sum}}
			if all {
				objs = append(objs, obj{".mask.png", mask, maskSum}, obj{".json", side, sha256.Sum256(side)})
			}
			jobs := make(chan int)
			var wg sync.WaitGroup
			t0 := time.Now()
			for range workers {
				wg.Go(func() {
					for i := range jobs {
						for _, o := range objs {
							_, err := c.PutObject(context.Background(), &s3.PutObjectInput{
								Bucket: aws.String(e.bucket), Key: aws.String(fmt.Sprintf("%s/%06d%s", prefix, i, o.ext)), Body: bytes.NewReader(o.body),
								ChecksumAlgorithm: types.ChecksumAlgorithmSha256, ChecksumSHA256: aws.String(base64.StdEncoding.EncodeToString(o.sum[:])),
							})
							if err != nil {
								b.Error(err)
							}
						}
					}
				})
			}
			for i := range msgsPerIter {
				jobs <- i
			}
			close(jobs)
			wg.Wait()
			return time.Since(t0)
		}
		bareT += bare(fmt.Sprintf("bare-b/%d", iter), false)
		bare2T += bare(fmt.Sprintf("bare2-b/%d", iter), true)

		// Consumer.
		// Timed from the moment the consumer is ready (start-up checks
		// done, consuming) until the last message is stored.
		r := e.start(b, nil)
		for !r.svc.Ready() {
			time.Sleep(time.Millisecond)
		}
		cpu0 := cpuTime()
		t0 := time.Now()
		for counter(r.reg, "forest_cloud_messages_total", "result", "stored") < msgsPerIter {
			time.Sleep(2 * time.Millisecond)
		}
		consumerT += time.Since(t0)
		cpu += cpuTime() - cpu0
		if iter == 0 {
			b.Logf("mean s3 put %.1fms, mean handle %.1fms", 1000*histMean(r.reg, "forest_cloud_s3_put_seconds"), 1000*histMean(r.reg, "forest_cloud_handle_seconds"))
		}
		if err := r.stop(); err != nil {
			b.Fatal(err)
		}

		// Broker alone: the same messages consumed and acked, no S3.
		e.publish(b, "", func(int) string { return "frames.dev-a" }, msgs...)
		brokerT += drainOnly(b, e.url, e.cfg.AMQP.Queue, prefetch, msgsPerIter)

		// Bare PUTs at the same concurrency: of the image alone, and of the
		// same objects the consumer writes (image, mask, sidecar), each
		// measured before and after the consumer's run against load drift.
		bareT += bare(fmt.Sprintf("bare-a/%d", iter), false)
		bare2T += bare(fmt.Sprintf("bare2-a/%d", iter), true)
		_ = sidecarLen
		total += msgsPerIter
	}
	cr := float64(total) / consumerT.Seconds()
	br := float64(2*total) / bareT.Seconds()
	b2 := float64(2*total) / bare2T.Seconds()
	b.ReportMetric(cr, "consumer_msgs/s")
	b.ReportMetric(br, "bare_put_msgs/s")
	b.ReportMetric(float64(total)/brokerT.Seconds(), "broker_only_msgs/s")
	b.ReportMetric(cr/br, "ratio")
	b.ReportMetric(cr/b2, "ratio_same_objects")
	b.ReportMetric(float64(cpu.Microseconds())/float64(total), "cpu_us/msg")
	b.ReportMetric(maxRSSMB(), "peak_rss_MB")
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
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
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
	return time.Since(t0)
}
