package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/spool"
	"github.com/forestwatch/forest/wire"
)

// budgetBroker returns a config whose uplink is a fresh vhost of the
// shared broker with the frames queue bound, and that vhost's admin URL.
func budgetBroker(t *testing.T) (*Config, string) {
	t.Helper()
	needModel(t)
	b := rabbittest.Shared(t)
	admin := b.Vhost(t)
	rabbittest.FramesQueue(t, admin, "frames", nil)
	cfg := testConfig(t)
	u, _ := url.Parse(admin)
	pw, _ := u.User.Password()
	t.Setenv("FOREST_BUDGET_TEST_PW", pw)
	cfg.Uplink.User, cfg.Uplink.PasswordEnv = u.User.Username(), "FOREST_BUDGET_TEST_PW"
	u.User = nil
	cfg.Uplink.URL = u.String()
	cfg.Uplink.DialTimeout = Duration(3 * time.Second)
	return cfg, admin
}

// spoolFrames puts frames of 50,000 image and 1,000 mask bytes with the
// given priorities into the agent's spool, as the pipeline would.
func spoolFrames(t *testing.T, cfg *Config, prios ...int) {
	t.Helper()
	q, err := spool.Open(cfg.Spool.Dir, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i, p := range prios {
		meta, _ := json.Marshal(Meta{V: metaVersion, Device: cfg.Device.ID, Captured: at("2026-12-04T09:00:00Z").Add(time.Duration(i) * time.Second),
			ContentType: wire.WebP, Width: 640, Height: 640, Coverage: float64(p) / 4, Source: fmt.Sprintf("dir:%d.jpg", i)})
		img := make([]byte, 50_000)
		for j := range img {
			img[j] = byte(i + j)
		}
		if _, err := q.Put(context.Background(), &spool.Record{Priority: p, Image: img, Mask: make([]byte, 1000), Meta: meta}); err != nil {
			t.Fatal(err)
		}
	}
}

// runAgent runs an agent on cfg with the fake clock until the returned
// stop is called (or the test ends).
func runAgent(t *testing.T, cfg *Config, clock *fakeClock) (a *Agent, base string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err = New(cfg, Options{Logger: testLogger(t), Listener: ln, now: clock.now, budgetPoll: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return a, "http://" + ln.Addr().String(), stop
}

// takeQueued removes and returns the seq headers of the messages queued
// on "frames".
func takeQueued(t *testing.T, admin string) []int64 {
	t.Helper()
	var seqs []int64
	rabbittest.WithChannel(t, admin, func(ch *amqp.Channel) {
		for {
			d, ok, err := ch.Get("frames", true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				return
			}
			seqs = append(seqs, d.Headers[wire.HeaderSeq].(int64))
		}
	})
	return seqs
}

func queuedCount(t *testing.T, admin string) int {
	t.Helper()
	n := 0
	rabbittest.WithChannel(t, admin, func(ch *amqp.Channel) {
		q, err := ch.QueueDeclarePassive("frames", true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
		if err != nil {
			t.Fatal(err)
		}
		n = q.Messages
	})
	return n
}

func metricAt(t *testing.T, base, name string) float64 {
	t.Helper()
	_, m := get(t, base+"/metrics")
	s := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(m)
	if s == nil {
		t.Fatalf("metric %s missing", name)
	}
	v, _ := strconv.ParseFloat(s[1], 64)
	return v
}

// TestDailyBudgetWithBroker: with uplink.daily_bytes worth three and a half
// frames, the drain sends exactly three, the highest coverage first, to the
// real broker; the rest stay in the spool. A restart the same day sends
// nothing more (the spend is on disk). The next UTC day sends the rest.
// Metrics and the status page show the budget.
func TestDailyBudgetWithBroker(t *testing.T) {
	cfg, admin := budgetBroker(t)
	cfg.Spool.Order = "priority"
	cfg.Uplink.DailyBytes = 3*51_000 + 25_000 // headers and framing are about 600 bytes a frame
	spoolFrames(t, cfg, 0, 4, 1, 4, 2, 0)     // ids 1-6
	clock := &fakeClock{t: at("2026-12-04T10:00:00Z")}

	_, base, stop := runAgent(t, cfg, clock)
	eventually(t, 20*time.Second, "three frames queued", func() bool { return queuedCount(t, admin) >= 3 })
	time.Sleep(500 * time.Millisecond) // time to send a fourth, were the budget not kept
	seqs := takeQueued(t, admin)
	slices.Sort(seqs)
	if want := []int64{2, 4, 5}; !slices.Equal(seqs, want) {
		t.Fatalf("sent frames %v, want %v (priority 4, 4, 2)", seqs, want)
	}
	used := metricAt(t, base, "forest_agent_uplink_budget_used_bytes")
	if used <= 3*51_000 || used > 3*51_000+3*1000 || used != metricAt(t, base, "forest_agent_uplink_sent_bytes_total") {
		t.Fatalf("used %v bytes for three frames of 51,000 bytes of body; sent_bytes_total %v", used, metricAt(t, base, "forest_agent_uplink_sent_bytes_total"))
	}
	if left := metricAt(t, base, "forest_agent_uplink_budget_left_bytes"); left != 0 {
		t.Fatalf("budget left %v after the next frame did not fit, want 0", left)
	}
	if v := metricAt(t, base, "forest_agent_uplink_send_allowed"); v != 0 {
		t.Fatalf("send_allowed %v", v)
	}
	_, page := get(t, base+"/")
	for _, want := range []string{`id="budget"`, "0 B left", "of 173.8 KiB sent", "waiting: uplink.daily_bytes spent until 2026-12-05 00:00:00Z"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	stop()

	// A reboot the same day: no fresh budget.
	_, base, stop = runAgent(t, cfg, clock)
	time.Sleep(time.Second)
	if n := queuedCount(t, admin); n != 0 {
		t.Fatalf("a restart sent %d more frames the same day", n)
	}
	if got := metricAt(t, base, "forest_agent_uplink_budget_used_bytes"); got != used {
		t.Fatalf("after a restart used %v, before %v", got, used)
	}
	if st := openSpoolStats(t, base); st != 3 {
		t.Fatalf("spool holds %v frames, want 3", st)
	}

	// The next UTC day.
	clock.set(at("2026-12-05T00:00:05Z"))
	eventually(t, 20*time.Second, "the other three frames queued", func() bool { return queuedCount(t, admin) >= 3 })
	seqs = takeQueued(t, admin)
	slices.Sort(seqs)
	if want := []int64{1, 3, 6}; !slices.Equal(seqs, want) {
		t.Fatalf("next day sent %v, want %v", seqs, want)
	}
	eventually(t, 10*time.Second, "an empty spool", func() bool { return openSpoolStats(t, base) == 0 })
	stop()
}

// openSpoolStats reads forest_agent_spool_frames.
func openSpoolStats(t *testing.T, base string) int {
	return int(metricAt(t, base, "forest_agent_spool_frames"))
}

// TestWindowsWithBroker: outside uplink.windows nothing is sent to the
// real broker; when the clock enters a window everything is.
func TestWindowsWithBroker(t *testing.T) {
	cfg, admin := budgetBroker(t)
	cfg.Uplink.Windows = []string{"11:00-12:00"}
	spoolFrames(t, cfg, 1, 1, 1)
	clock := &fakeClock{t: at("2026-12-04T10:58:00Z")}
	_, base, stop := runAgent(t, cfg, clock)
	time.Sleep(time.Second)
	if n := queuedCount(t, admin); n != 0 {
		t.Fatalf("%d frames sent outside the window", n)
	}
	if v := metricAt(t, base, "forest_agent_uplink_send_allowed"); v != 0 {
		t.Fatalf("send_allowed %v outside the window", v)
	}
	clock.set(at("2026-12-04T11:00:00Z"))
	eventually(t, 20*time.Second, "three frames queued", func() bool { return queuedCount(t, admin) == 3 })
	if v := metricAt(t, base, "forest_agent_uplink_budget_bytes"); v != 0 {
		t.Fatalf("budget %v without daily_bytes", v)
	}
	stop()
}
