package main

import (
	"bytes"
	"context"
	"encoding/json"
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

// TestDLQPurgeExport purges and exports dead letters through the command
// line, against the real broker: filters by reason and age, a dry run that
// removes nothing, and an export whose files hold each body and its
// headers before the message leaves the queue.
func TestDLQPurgeExport(t *testing.T) {
	b := rabbittest.Shared(t)
	srv := s3test.Shared(t)
	url := b.Vhost(t)
	path := writeConfig(t, url, srv, srv.Bucket(t))
	cfg, err := cloud.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	cli := func(args ...string) int {
		out.Reset()
		errb.Reset()
		return run(args, &out, &errb)
	}
	if code := cli("dlq", "list", "--config", path); code != 0 { // declares the topology
		t.Fatalf("list: %d %s", code, errb.String())
	}
	ch := rabbittest.Channel(t, url)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	old := now.Add(-10 * 24 * time.Hour)
	letters := []struct {
		id, reason string
		at         time.Time
	}{
		{"json-old", "bad_json", old}, {"json-new", "bad_json", now},
		{"conflict-old", "conflict", old}, {"conflict-new", "conflict", now},
		{"identity-new", "identity_mismatch", now},
	}
	for _, l := range letters {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, cfg.AMQP.DeadLetterExchange, "frames.dev-a", false, false, amqp.Publishing{
			MessageId: l.id, Body: []byte("body of " + l.id), DeliveryMode: amqp.Persistent, ContentType: "application/json",
			Headers: amqp.Table{cloud.HeaderReason: l.reason, cloud.HeaderReasonDetail: "detail of " + l.id,
				cloud.HeaderDeadLetteredAt: l.at.Format(time.RFC3339Nano), "x-custom": int32(7)},
		})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("confirm %v %v", ok, err)
		}
		cancel()
	}
	depth := func() int {
		q, err := ch.QueueDeclarePassive(cfg.AMQP.DeadLetterQueue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
		if err != nil {
			t.Fatal(err)
		}
		return q.Messages
	}
	waitDepth := func(want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for depth() != want {
			if time.Now().After(deadline) {
				t.Fatalf("dead-letter queue holds %d, want %d", depth(), want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if code := cli("dlq", "purge", "--config", path); code != 2 || !strings.Contains(errb.String(), "--all") {
		t.Errorf("purge without a filter: %d %q", code, errb.String())
	}
	if code := cli("dlq", "purge", "--config", path, "--reason", "bad_json", "--dry-run"); code != 0 || !strings.Contains(out.String(), "would purge (dry run) 2 ") {
		t.Errorf("dry run: %d %q %q", code, out.String(), errb.String())
	}
	waitDepth(5)
	if code := cli("dlq", "purge", "--config", path, "--reason", "bad_json", "--older-than", "7d"); code != 0 || !strings.Contains(out.String(), "purged 1 ") {
		t.Errorf("purge old bad_json: %d %q %q", code, out.String(), errb.String())
	}
	waitDepth(4)
	dir := filepath.Join(t.TempDir(), "archive")
	if code := cli("dlq", "export", "--config", path, "--dir", dir, "--reason", "conflict", "--keep"); code != 0 || !strings.Contains(out.String(), "exported (kept in the queue) 2 ") {
		t.Errorf("export --keep: %d %q %q", code, out.String(), errb.String())
	}
	waitDepth(4)
	if code := cli("dlq", "export", "--config", path, "--dir", dir, "--older-than", "48h"); code != 0 || !strings.Contains(out.String(), "exported and removed 1 ") {
		t.Errorf("export old: %d %q %q", code, out.String(), errb.String())
	}
	waitDepth(3)
	// Each exported dead letter: its body as sent and its metadata.
	metas, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	if len(metas) != 2 {
		t.Fatalf("%d metadata files, want 2 (conflict-old and conflict-new, conflict-old exported twice): %v", len(metas), metas)
	}
	for _, m := range metas {
		raw, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		var e cloud.Export
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		body, err := os.ReadFile(filepath.Join(dir, e.Body))
		if err != nil || string(body) != "body of "+e.MessageID || e.Reason != "conflict" || e.Detail != "detail of "+e.MessageID ||
			e.Headers["x-custom"] != float64(7) || e.Properties["content_type"] != "application/json" || e.RoutingKey != "frames.dev-a" {
			t.Errorf("%s: %+v body %q %v", m, e, body, err)
		}
	}
	if code := cli("dlq", "list", "--config", path); code != 0 || strings.Contains(out.String(), "conflict-old") || strings.Contains(out.String(), "json-old") ||
		!strings.Contains(out.String(), "3 dead letter(s)") {
		t.Errorf("list after purge and export: %q", out.String())
	}
	if code := cli("dlq", "purge", "--config", path, "--all"); code != 0 || !strings.Contains(out.String(), "purged 3 ") {
		t.Errorf("purge --all: %d %q", code, out.String())
	}
	waitDepth(0)
}

// TestPolicyCommand prints the policy as a rabbitmqctl command and a
// definitions entry, for the config's vhost and queue.
func TestPolicyCommand(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cloud.yaml")
	if err := os.WriteFile(p, []byte("amqp: {url: 'amqp://broker:5672/forest', delivery_limit: 7}\ns3: {bucket: b}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"policy", "--config", p}, &out, &errb); code != 0 {
		t.Fatalf("%d %s", code, errb.String())
	}
	want := `rabbitmqctl set_policy -p forest --apply-to queues --priority 10 forest-cloud-frames '^forest\.cloud\.frames$' '{"dead-letter-exchange":"forest.cloud.dlx","dead-letter-strategy":"at-least-once","delivery-limit":7,"overflow":"reject-publish"}'`
	if !strings.Contains(out.String(), want) || !strings.Contains(out.String(), `"apply-to": "queues"`) {
		t.Errorf("policy output:\n%s\nwant the line\n%s", out.String(), want)
	}
}
