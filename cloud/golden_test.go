package cloud_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/cloud"
)

// golden is one file of uplink/wire/testdata.
type golden struct {
	Properties struct {
		ContentType string    `json:"content_type"`
		MessageID   string    `json:"message_id"`
		Timestamp   time.Time `json:"timestamp"`
		AppID       string    `json:"app_id"`
		Type        string    `json:"type"`
		UserID      string    `json:"user_id"`
	} `json:"properties"`
	Headers map[string]struct {
		String  *string  `json:"string"`
		Int64   *int64   `json:"int64"`
		Float64 *float64 `json:"float64"`
		Bytes   []byte   `json:"bytes"`
		Bool    *bool    `json:"bool"`
	} `json:"headers"`
	Body      []byte `json:"body"`
	WantError string `json:"want_error"`
}

func (g *golden) publishing() amqp.Publishing {
	h := amqp.Table{}
	for k, v := range g.Headers {
		switch {
		case v.String != nil:
			h[k] = *v.String
		case v.Int64 != nil:
			h[k] = *v.Int64
		case v.Float64 != nil:
			h[k] = *v.Float64
		case v.Bytes != nil:
			h[k] = v.Bytes
		case v.Bool != nil:
			h[k] = *v.Bool
		}
	}
	p := g.Properties
	return amqp.Publishing{ContentType: p.ContentType, MessageId: p.MessageID, Timestamp: p.Timestamp, AppId: p.AppID,
		Type: p.Type, UserId: p.UserID, Headers: h, Body: g.Body, DeliveryMode: amqp.Persistent}
}

// TestGolden publishes the wire package's golden messages as their device
// user: the valid ones are stored (the newer minor version of the same
// frame as a duplicate), the invalid ones dead-lettered with the reason.
func TestGolden(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	files, err := filepath.Glob("../uplink/wire/testdata/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden messages: %v", err)
	}
	want := map[string]cloud.Reason{"checksum": cloud.ReasonChecksum, "version": cloud.ReasonSchema, "field": cloud.ReasonInvalid}
	e := newEnv(t, nil)
	vhost := e.url[strings.LastIndex(e.url, "/")+1:]
	e.declare(t)
	users := map[string]string{}
	var good, bad int
	reasons := map[cloud.Reason]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var g golden
		if err := json.Unmarshal(b, &g); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		u := g.Properties.UserID
		if _, ok := users[u]; !ok {
			e.broker.AddUser(t, u, u+"-pw", vhost, "", ".*", "")
			users[u] = e.broker.URLFor(u, u+"-pw", vhost)
		}
		if g.WantError == "" {
			good++
		} else {
			bad++
			r, ok := want[g.WantError]
			if !ok {
				t.Fatalf("%s: unknown want_error %q", f, g.WantError)
			}
			reasons[r]++
		}
		e.publish(t, users[u], func(int) string { return "frames." + u }, g.publishing())
	}
	r := e.start(t, nil)
	waitFor(t, 30*time.Second, "golden messages handled", func() bool {
		return counter(r.reg, "forest_cloud_messages_total") == float64(good+bad)
	})
	if n := counter(r.reg, "forest_cloud_messages_total", "result", "stored") + counter(r.reg, "forest_cloud_messages_total", "result", "duplicate"); n != float64(good) {
		t.Errorf("%v stored, want %d", n, good)
	}
	for reason, n := range reasons {
		if got := counter(r.reg, "forest_cloud_dead_letters_total", "reason", string(reason)); got != float64(n) {
			t.Errorf("%s: %v dead letters, want %d", reason, got, n)
		}
	}
	k, _ := cloud.KeysFor(e.cfg.S3.Prefix, "mast-01", "mast-01-000000000042", time.Date(2026, 6, 1, 10, 30, 0, 0, time.UTC), "image/jpeg")
	var sc cloud.Sidecar
	if err := json.Unmarshal(e.get(t, k.Sidecar), &sc); err != nil {
		t.Fatal(err)
	}
	if sc.GPS == nil || sc.Camera == nil || sc.Mask == nil || sc.User != "mast-01" || sc.Seq != 42 {
		t.Errorf("sidecar %+v", sc)
	}
}
