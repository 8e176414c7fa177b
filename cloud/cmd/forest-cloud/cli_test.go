package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/internal/s3test"
)

func TestMain(m *testing.M) {
	code := m.Run()
	rabbittest.StopShared()
	s3test.StopShared()
	os.Exit(code)
}

func writeConfig(t *testing.T, amqpURL string, srv *s3test.Server, bucket string) string {
	t.Helper()
	cfg := fmt.Sprintf(`amqp:
  url: %q
s3:
  bucket: %s
  endpoint: %s
  region: %s
  path_style: true
  access_key_id: ${T_ACCESS}
  secret_access_key: ${T_SECRET}
log:
  level: warn
`, amqpURL, bucket, srv.Endpoint, srv.Region)
	p := filepath.Join(t.TempDir(), "cloud.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("T_ACCESS", srv.AccessKey)
	t.Setenv("T_SECRET", srv.SecretKey)
	return p
}

// TestDLQCommand lists and requeues a dead letter through the command line,
// against the real broker.
func TestDLQCommand(t *testing.T) {
	b := rabbittest.Shared(t)
	srv := s3test.Shared(t)
	url := b.Vhost(t)
	path := writeConfig(t, url, srv, srv.Bucket(t))
	var out, errb bytes.Buffer
	if code := run([]string{"dlq", "list", "--config", path}, &out, &errb); code != 0 || !strings.Contains(out.String(), "0 dead letter(s)") {
		t.Fatalf("empty list: %d %q %q", code, out.String(), errb.String())
	}
	cfg, err := cloud.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	ch := rabbittest.Channel(t, url)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, cfg.AMQP.DeadLetterExchange, "frames.dev-a", false, false, amqp.Publishing{
		MessageId: "m-1", Body: []byte("{not json"), DeliveryMode: amqp.Persistent,
		Headers: amqp.Table{cloud.HeaderReason: "bad_json", cloud.HeaderReasonDetail: "decode legacy json: invalid character"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dc.WaitContext(ctx); !ok || err != nil {
		t.Fatalf("confirm %v %v", ok, err)
	}
	out.Reset()
	if code := run([]string{"dlq", "list", "--config", path}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), "m-1") || !strings.Contains(out.String(), "bad_json") || !strings.Contains(out.String(), "1 dead letter(s)") {
		t.Fatalf("list: %d %q %q", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run([]string{"dlq", "requeue", "--config", path, "--reason", "conflict"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "requeued 0") {
		t.Fatalf("requeue other reason: %d %q %q", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run([]string{"dlq", "requeue", "--config", path}, &out, &errb); code != 0 || !strings.Contains(out.String(), "requeued 1") {
		t.Fatalf("requeue: %d %q %q", code, out.String(), errb.String())
	}
	q, err := ch.QueueDeclarePassive(cfg.AMQP.Queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
	if err != nil || q.Messages != 1 {
		t.Fatalf("queue after requeue: %+v %v", q, err)
	}
}

// TestRunStartupFailure: `run` with a bucket that does not exist exits 1
// saying what is missing and how to fix it.
func TestRunStartupFailure(t *testing.T) {
	b := rabbittest.Shared(t)
	srv := s3test.Shared(t)
	path := writeConfig(t, b.Vhost(t), srv, "forest-missing-bucket")
	var out, errb bytes.Buffer
	code := run([]string{"run", "--config", path}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "fix: create the bucket") {
		t.Fatalf("%d %q", code, errb.String())
	}
}
