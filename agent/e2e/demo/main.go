// Command demo runs the whole chain on this machine for a newcomer to watch:
// a RabbitMQ broker and an S3 server (versitygw) on 127.0.0.1, one
// forest-cloud and two forest-agents fed with the sample frames. It prints
// the fleet page, the agents' status pages and the S3 keys as they appear;
// Ctrl-C stops everything.
//
//	make demo
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/forestwatch/forest/agent/e2e"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/internal/s3test"
)

func main() {
	every := flag.Duration("every", 3*time.Second, "time between sample frames dropped into each agent's folder")
	flag.Parse()
	if err := run(*every); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(every time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, err := e2e.Root()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "forest-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	fmt.Println("building forest-agent and forest-cloud ...")
	bin := filepath.Join(work, "bin")
	if err := e2e.Build(bin); err != nil {
		return err
	}
	fmt.Println("starting RabbitMQ (about 10 s) and the S3 server ...")
	broker, err := rabbittest.Launch()
	if err != nil {
		return fmt.Errorf("rabbitmq: %w (run `make deps`)", err)
	}
	defer broker.Close()
	srv, err := s3test.Launch()
	if err != nil {
		return fmt.Errorf("s3 server: %w (run `make deps`)", err)
	}
	defer srv.Close()
	client := srv.Client()
	const bucket = "forest-demo"
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		return fmt.Errorf("create bucket: %w", err)
	}

	s := &e2e.Stack{Dir: work, Bin: bin, Root: root, Broker: broker, S3: srv, Bucket: bucket}
	// Agents report every 10 s (5 min in production), so that the fleet
	// page shows a stopped one silent within 30 s.
	agents := []e2e.AgentOptions{{Device: "demo-mast-a", StatusInterval: "10s"}, {Device: "demo-mast-b", StatusInterval: "10s"}}
	if err := s.Setup(agents, "fleet:\n  refresh: 5s\n"); err != nil {
		return err
	}
	defer s.Close()
	if err := s.Cloud.Start(); err != nil {
		return err
	}
	if err := e2e.WaitHTTP("http://"+s.Cloud.HTTP+"/readyz", time.Minute); err != nil {
		return err
	}
	for _, a := range s.Agents {
		if err := a.Start(); err != nil {
			return err
		}
	}
	frames, err := e2e.LoadFrames(root, 512)
	if err != nil {
		return err
	}

	fmt.Printf("\nbroker    amqp://127.0.0.1:%d/  (user %s)\n", broker.Port, rabbittest.AdminUser)
	fmt.Printf("s3        %s  bucket %s  (access key %s)\n", srv.Endpoint, bucket, srv.AccessKey)
	fmt.Printf("cloud     http://%s/metrics  logs: %s\n", s.Cloud.HTTP, s.Cloud.Log)
	fmt.Printf("fleet     http://%s/fleet  (both devices: last seen, spool, evictions, latest frame)\n", s.Cloud.HTTP)
	for _, a := range s.Agents {
		fmt.Printf("agent     %s status page http://%s/   drop images into %s\n", a.Device, a.HTTP, a.Incoming)
	}
	fmt.Printf("\nframes are fed every %s; S3 keys appear below. Ctrl-C stops everything.\n\n", every)

	seen := map[string]bool{}
	feed := time.NewTicker(every)
	defer feed.Stop()
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	for i := 0; ; {
		select {
		case <-ctx.Done():
			fmt.Println("\nstopping ...")
			return nil
		case <-feed.C:
			for _, a := range s.Agents {
				b, err := frames.Frame(i)
				if err != nil {
					return err
				}
				if _, err := e2e.Drop(a.Incoming, fmt.Sprintf("frame-%05d.jpg", i), b); err != nil {
					return err
				}
				i++
			}
		case <-poll.C:
			keys, err := e2e.Keys(ctx, client, bucket, "")
			if err != nil {
				continue // the chain is starting or stopping
			}
			sort.Strings(keys)
			for _, k := range keys {
				if !seen[k] {
					seen[k] = true
					fmt.Printf("%s  s3://%s/%s\n", time.Now().Format("15:04:05"), bucket, k)
				}
			}
		}
	}
}
