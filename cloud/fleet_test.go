package cloud_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/wire"
	"github.com/forestwatch/forest/wire/wiretest"
)

// waitStatusQueue waits until the service has declared the status queue.
func (e *env) waitStatusQueue(t testing.TB) {
	t.Helper()
	waitFor(t, 30*time.Second, "the status queue", func() bool {
		conn, err := amqp.Dial(e.url)
		if err != nil {
			return false
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return false
		}
		_, err = ch.QueueDeclarePassive(e.cfg.Fleet.StatusQueue, false, true, false, false, nil)
		return err == nil
	})
}

// statusPublishing is a status message as the admin user (mapped to the
// test devices) publishes it.
func statusPublishing(m wire.Message) amqp.Publishing {
	p := publishing(m)
	p.UserId = rabbittest.AdminUser
	p.DeliveryMode = amqp.Transient
	return p
}

func httpGet(t testing.TB, url string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestStatusReports publishes the golden status messages (the contract
// with the agents): the good ones become status/<device>.json records and
// per-device gauges; the bad ones are dead-lettered with their reason; a
// device beyond fleet.max_devices is dropped; a second replica that
// received nothing shows the same fleet from S3; the fleet page lists the
// devices with their numbers.
func TestStatusReports(t *testing.T) {
	e := newEnv(t, nil, "mast-01", "mast-02", "mast-03", "dev-a")
	cfg := *e.cfg
	cfg.Fleet.Refresh = 300 * time.Millisecond
	cfg.Fleet.MaxDevices = 2
	cfg.Fleet.DLQScanInterval = 500 * time.Millisecond
	r := e.start(t, &cfg)
	e.waitStatusQueue(t)
	goldens, err := wiretest.LoadStatus()
	if err != nil {
		t.Fatal(err)
	}
	var msgs []amqp.Publishing
	wantDead := map[string]string{} // golden → reason
	for _, g := range goldens {
		msgs = append(msgs, statusPublishing(g.Message))
		switch g.WantError {
		case "version":
			wantDead[g.Name] = string(cloud.ReasonSchema)
		case "field":
			wantDead[g.Name] = string(cloud.ReasonInvalid)
		}
	}
	// A third device, beyond max_devices 2.
	third, err := wire.EncodeStatus(&wire.Status{Device: "mast-03", SentAt: time.Now(), State: wire.StatusRunning,
		Version: "x", StartedAt: time.Now(), Link: wire.LinkStatus{State: "connected"}}, "forest-agent/x", rabbittest.AdminUser)
	if err != nil {
		t.Fatal(err)
	}
	msgs = append(msgs, statusPublishing(third))
	e.publish(t, "", func(i int) string {
		if i < len(goldens) {
			if d, _ := goldens[i].Message.Headers[wire.HeaderDevice].(string); d != "" {
				return "status." + d
			}
		}
		return "status.mast-03"
	}, msgs...)

	waitFor(t, 30*time.Second, "every report handled", func() bool {
		n := 0.0
		for _, res := range []string{"stored", "stale", "dead_lettered", "unknown_device", "not_stored", "dropped"} {
			n += counter(r.reg, "forest_cloud_status_reports_total", "result", res)
		}
		return int(n) == len(msgs)
	})
	for res, want := range map[string]float64{"stored": 2, "stale": 1, "dead_lettered": float64(len(wantDead)), "unknown_device": 1} {
		if got := counter(r.reg, "forest_cloud_status_reports_total", "result", res); got != want {
			t.Errorf("status reports %s: %v, want %v", res, got, want)
		}
	}
	var rec cloud.StatusRecord
	if err := json.Unmarshal(e.get(t, "status/mast-01.json"), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Schema != cloud.StatusSchema || rec.User != rabbittest.AdminUser || time.Since(rec.ReceivedAt) > time.Minute ||
		rec.Status.Spool.Frames != 42 || rec.Status.Spool.Evicted["max_bytes"] != 3 || rec.Status.State != wire.StatusRunning {
		t.Fatalf("stored record %+v %+v", rec, rec.Status)
	}
	if _, ok := e.keys(t)["status/mast-03.json"]; ok {
		t.Fatal("a device beyond fleet.max_devices was stored")
	}
	dls, err := cloud.ListDeadLetters(context.Background(), e.cfg, cloud.DLQOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for _, dl := range dls {
		reasons[dl.Reason]++
	}
	want := map[string]int{}
	for _, rs := range wantDead {
		want[rs]++
	}
	if len(dls) != len(wantDead) || reasons[string(cloud.ReasonSchema)] != want[string(cloud.ReasonSchema)] {
		t.Fatalf("dead letters by reason %v, want %v", reasons, want)
	}

	// A second replica learns the fleet from S3 alone.
	b := e.start(t, &cfg)
	waitFor(t, 30*time.Second, "the second replica to read the stored reports", func() bool {
		return counter(b.reg, "forest_cloud_device_spool_frames", "device", "mast-01") == 42
	})
	for _, reg := range [](*running){r, b} {
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"forest_cloud_device_spool_frames", []string{"device", "mast-01"}, 42},
			{"forest_cloud_device_frames_evicted_total", []string{"device", "mast-01", "reason", "max_bytes"}, 3},
			{"forest_cloud_device_frames_evicted_total", []string{"device", "mast-01", "reason", "max_age"}, 1},
			{"forest_cloud_device_status_interval_seconds", []string{"device", "mast-01"}, 300},
			{"forest_cloud_device_silent", []string{"device", "mast-01"}, 0},
			{"forest_cloud_device_silent", []string{"device", "mast-03"}, 0},
			{"forest_cloud_fleet_devices", nil, 2},
		} {
			if got := counter(reg.reg, c.name, c.labels...); got != c.want {
				t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
			}
		}
	}
	// Every metric the example alerting rules use exists.
	rules, err := os.ReadFile(filepath.Join("cmd", "forest-cloud", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, name := range regexp.MustCompile(`forest_cloud_[a-z_]+`).FindAllString(string(rules), -1) {
		if !names[name] {
			t.Errorf("alerts.yml uses %s, which forest-cloud does not export", name)
		}
	}
	srv := httptest.NewServer(b.svc.Handler())
	defer srv.Close()
	code, page := httpGet(t, srv.URL+"/fleet")
	if code != 200 || !strings.Contains(page, `id="dev-mast-01"`) || !strings.Contains(page, `id="dev-mast-02"`) ||
		strings.Contains(page, "mast-03") || !strings.Contains(page, `<b class="spool-frames">42</b>`) {
		t.Fatalf("fleet page %d:\n%s", code, page)
	}
	// The page counts the dead letters by device and reason: mast-01's
	// three bad reports (two invalid, one of an unknown schema); the one
	// whose header named mast-99 belongs to no known device.
	waitFor(t, 30*time.Second, "dead letters by device and reason on the page", func() bool {
		_, page := httpGet(t, srv.URL+"/fleet")
		row := page[strings.Index(page, `id="dev-mast-01"`):]
		row = row[:strings.Index(row, "</tr>")]
		return strings.Contains(page, `<b id="dlq">4</b>`) && strings.Contains(row, "invalid_field 2") &&
			strings.Contains(row, "unknown_schema 1") && strings.Contains(page, "Dead letters of no known device: invalid_field 1")
	})
	if code, _ := httpGet(t, srv.URL+"/fleet/device/mast-03"); code != 404 {
		t.Fatalf("page of an unknown device: %d", code)
	}
	if code, page := httpGet(t, srv.URL+"/fleet/device/mast-01"); code != 200 || !strings.Contains(page, "0 frame(s) stored") {
		t.Fatalf("device page %d:\n%s", code, page)
	}
}

// TestFleetPageAccess: by default only loopback clients see the page; a
// token file makes the page answer 401 without the token, and accepts it
// as a Bearer token or basic-auth password; a public network without a
// secret is refused at start.
func TestFleetPageAccess(t *testing.T) {
	e := newEnv(t, nil)
	svc, err := cloud.New(context.Background(), cloud.Options{Config: e.cfg})
	if err != nil {
		t.Fatal(err)
	}
	get := func(h http.Handler, remote string, hdr ...string) int {
		req := httptest.NewRequest(http.MethodGet, "/fleet", nil)
		req.RemoteAddr = remote
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	h := svc.Handler()
	if c := get(h, "127.0.0.1:5555"); c != 200 {
		t.Fatalf("loopback: %d", c)
	}
	if c := get(h, "[::1]:5555"); c != 200 {
		t.Fatalf("loopback v6: %d", c)
	}
	for _, remote := range []string{"10.1.2.3:5555", "203.0.113.9:443", "bogus"} {
		if c := get(h, remote); c != 403 {
			t.Fatalf("%s: %d, want 403", remote, c)
		}
	}

	cfg := *e.cfg
	token := "s3cret-token-0123456789"
	cfg.Fleet.TokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(cfg.Fleet.TokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Fleet.Allow = []string{"0.0.0.0/0"}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("a public network with a token: %v", err)
	}
	svc, err = cloud.New(context.Background(), cloud.Options{Config: &cfg})
	if err != nil {
		t.Fatal(err)
	}
	h = svc.Handler()
	for _, c := range []struct {
		hdr  []string
		want int
	}{
		{nil, 401},
		{[]string{"Authorization", "Bearer wrong-token-0123456789"}, 401},
		{[]string{"Authorization", "Bearer " + token}, 200},
		{[]string{"Authorization", "Basic " + basic("anyone", token)}, 200},
		{[]string{"Authorization", "Basic " + basic("anyone", "nope")}, 401},
	} {
		if got := get(h, "203.0.113.9:443", c.hdr...); got != c.want {
			t.Errorf("%v: %d, want %d", c.hdr, got, c.want)
		}
	}
	// The metrics stay open to the scraper.
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.RemoteAddr = "203.0.113.9:443"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != 200 {
		t.Fatalf("/metrics: %d", w.Code)
	}

	cfg.Fleet.TokenFile = ""
	var fe *cloud.FieldError
	if err := cfg.Validate(); !errors.As(err, &fe) || !strings.Contains(err.Error(), "fleet.allow") {
		t.Fatalf("a public network without a secret: %v", err)
	}
}

func basic(user, pw string) string {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.SetBasicAuth(user, pw)
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Basic ")
}

// TestStatusWhileS3Down: with S3 stopped, status reports are handled and
// dropped (never requeued, so the status queue stays empty) and the
// device stays on the page from memory; frames wait in their own queue,
// untouched; once S3 is back the next report is stored.
func TestStatusWhileS3Down(t *testing.T) {
	srv := startS3(t)
	e := newEnv(t, srv, "dev-a")
	cfg := *e.cfg
	cfg.Fleet.Refresh = 300 * time.Millisecond
	r := e.start(t, &cfg)
	e.waitStatusQueue(t)
	report := func(n int) amqp.Publishing {
		m, err := wire.EncodeStatus(&wire.Status{Device: "dev-a", SentAt: time.Now(), State: wire.StatusRunning, Version: "x",
			StartedAt: time.Now(), Spool: wire.SpoolStatus{Frames: n}, Link: wire.LinkStatus{State: "connected"}}, "a", rabbittest.AdminUser)
		if err != nil {
			t.Fatal(err)
		}
		return statusPublishing(m)
	}
	srv.Stop(t)
	frames := []frame{makeFrame(t, e.cfg.S3.Prefix, "dev-a", 1, rabbittest.AdminUser), makeFrame(t, e.cfg.S3.Prefix, "dev-a", 2, rabbittest.AdminUser)}
	e.publishFrames(t, frames)
	for i := range 20 {
		e.publish(t, "", func(int) string { return "status.dev-a" }, report(i))
	}
	waitFor(t, 60*time.Second, "20 reports handled while S3 is down", func() bool {
		return counter(r.reg, "forest_cloud_status_reports_total", "result", "not_stored") == 20
	})
	var depth int
	rabbittest.WithChannel(t, e.url, func(ch *amqp.Channel) {
		q, err := ch.QueueDeclarePassive(e.cfg.Fleet.StatusQueue, false, true, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		depth = q.Messages
	})
	if depth != 0 {
		t.Fatalf("%d status reports piled up in the queue while S3 was down", depth)
	}
	if got := counter(r.reg, "forest_cloud_device_spool_frames", "device", "dev-a"); got != 19 {
		t.Fatalf("from memory the device shows spool %v, want the latest report's 19", got)
	}
	srv.Start(t)
	e.publish(t, "", func(int) string { return "status.dev-a" }, report(100))
	waitFor(t, 60*time.Second, "the report after S3 returned to be stored", func() bool {
		return counter(r.reg, "forest_cloud_status_reports_total", "result", "stored") >= 1
	})
	waitFor(t, 2*time.Minute, "the frames stored", func() bool { return e.queueDepth(t, e.cfg.AMQP.Queue) == 0 && len(e.keys(t)) >= 5 })
	out, err := srv.Client().GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(e.bucket), Key: aws.String("status/dev-a.json")})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Body.Close()
	var rec cloud.StatusRecord
	if err := json.NewDecoder(out.Body).Decode(&rec); err != nil || rec.Status.Spool.Frames != 100 {
		t.Fatalf("stored %+v (%v)", rec.Status, err)
	}
}
