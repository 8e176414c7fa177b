package agent

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// TestStatusReports runs an agent against the real broker with a 1 s
// status interval: its first report says "starting", later ones "running"
// with the numbers its own /metrics shows (frames spooled and published,
// spool depth), its coverage by hour, link and disk; the last, sent at
// shutdown while the link is still up, says "stopping". Each report is a
// transient message routed status.<device> as the device's user.
func TestStatusReports(t *testing.T) {
	needModel(t)
	b := rabbittest.Shared(t)
	vhost := b.Vhost(t)
	rabbittest.FramesQueue(t, vhost, "frames", nil)
	rabbittest.WithChannel(t, vhost, func(ch *amqp.Channel) {
		if _, err := ch.QueueDeclare("status", false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if err := ch.QueueBind("status", "status.#", uplink.DefaultExchange, false, nil); err != nil {
			t.Fatal(err)
		}
	})
	u, err := url.Parse(vhost)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	pw, _ := u.User.Password()
	cfg.Uplink.User = u.User.Username()
	cfg.Uplink.PasswordFile = filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(cfg.Uplink.PasswordFile, []byte(pw), 0o600); err != nil {
		t.Fatal(err)
	}
	u.User = nil
	cfg.Uplink.URL = u.String()
	cfg.Uplink.StatusInterval = Duration(time.Second)
	cfg.Uplink.BackoffMax = Duration(time.Second)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	a, err := New(cfg, Options{Logger: testLogger(t), Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	frames := sampleFrames(t)
	copyFile(t, frames[0], filepath.Join(cfg.Source.Dir.Path, "a.png"))
	copyFile(t, frames[1], filepath.Join(cfg.Source.Dir.Path, "b.png"))
	eventually(t, 30*time.Second, "two frames published", func() bool {
		_, m := get(t, base+"/metrics")
		return strings.Contains(m, "forest_agent_frames_published_total 2")
	})

	ch := rabbittest.Channel(t, vhost)
	next := func(within time.Duration) (*wire.Status, amqp.Delivery) {
		t.Helper()
		deadline := time.Now().Add(within)
		for time.Now().Before(deadline) {
			d, ok, err := ch.Get("status", true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			m := wire.Message{ContentType: d.ContentType, MessageID: d.MessageId, Timestamp: d.Timestamp, AppID: d.AppId,
				Type: d.Type, UserID: d.UserId, Headers: map[string]any(d.Headers), Body: d.Body}
			st, err := wire.DecodeStatus(m)
			if err != nil {
				t.Fatalf("status message does not decode: %v", err)
			}
			return st, d
		}
		t.Fatalf("no status report within %s", within)
		return nil, amqp.Delivery{}
	}
	first, d := next(5 * time.Second)
	if first.State != wire.StatusStarting || d.RoutingKey != "status.test-dev" || d.DeliveryMode != amqp.Transient ||
		d.UserId != cfg.Uplink.User || first.IntervalSeconds != 1 || first.Model == "" {
		t.Fatalf("first report %+v delivered as %+v", first, d)
	}
	var st *wire.Status
	for st == nil || st.Spool.Published < 2 {
		st, _ = next(5 * time.Second)
		if st.State != wire.StatusRunning {
			t.Fatalf("later report in state %q", st.State)
		}
	}
	_, m := get(t, base+"/metrics")
	for _, want := range []string{
		"forest_agent_frames_spooled_total 2", "forest_agent_frames_published_total 2", "forest_agent_spool_frames 0",
		`forest_agent_frames_evicted_total{reason="max_bytes"} 0`, `forest_agent_status_reports_total{result="sent"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if st.Capture.Frames != 2 || st.Spool.Frames != 0 || st.Spool.Evicted["max_bytes"] != 0 || st.Link.State != "connected" ||
		st.Coverage.Last == nil || len(st.Coverage.Hours) == 0 || st.Coverage.Hours[len(st.Coverage.Hours)-1].Frames != 2 ||
		st.Disk == nil || st.Disk.FreeBytes == 0 || st.ClockSynced == nil || st.Spool.MaxBytes != cfg.Spool.MaxBytes || st.Capture.LastAt.IsZero() {
		t.Fatalf("report %+v does not match the agent", st)
	}
	frs, _, _ := a.status.Snapshot()
	if *st.Coverage.Last != frs[0].Coverage {
		t.Fatalf("report's last coverage %v, the agent's last frame %v", *st.Coverage.Last, frs[0].Coverage)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil
	for {
		st, _ = next(5 * time.Second)
		if st.State == wire.StatusStopping {
			break
		}
	}
}
