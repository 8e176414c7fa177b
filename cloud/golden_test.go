package cloud_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/wire/wiretest"
)

// TestGolden publishes the wire package's golden messages as their device
// user: the valid ones are stored (the newer minor version of the same
// frame as a duplicate), the invalid ones dead-lettered with the reason.
func TestGolden(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	goldens, err := wiretest.Load()
	if err != nil || len(goldens) == 0 {
		t.Fatalf("no golden messages: %v", err)
	}
	want := map[string]cloud.Reason{"checksum": cloud.ReasonChecksum, "version": cloud.ReasonSchema, "field": cloud.ReasonInvalid}
	e := newEnv(t, nil)
	vhost := e.url[strings.LastIndex(e.url, "/")+1:]
	e.declare(t)
	users := map[string]string{}
	var good, bad int
	reasons := map[cloud.Reason]int{}
	for _, g := range goldens {
		u := g.Message.UserID
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
				t.Fatalf("%s: unknown want_error %q", g.Name, g.WantError)
			}
			reasons[r]++
		}
		e.publish(t, users[u], func(int) string { return "frames." + u }, publishing(g.Message))
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
