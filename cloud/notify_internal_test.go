package cloud

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestHealthy: the watchdog's health is idle, or progress within the stall
// bound; a message in hand with no progress past it withholds WATCHDOG=1.
func TestHealthy(t *testing.T) {
	cfg, err := ParseConfig([]byte("amqp: {url: 'amqp://x', confirm_timeout: 5s}\ns3: {bucket: b, request_timeout: 5s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := &Service{cfg: cfg, m: newMetrics(prometheus.NewRegistry())}
	now := time.Now()
	if ok, why := s.healthy(now.Add(time.Hour)); !ok {
		t.Errorf("idle for an hour: %s", why)
	}
	s.busy.Add(1)
	if ok, why := s.healthy(now.Add(s.stall() - time.Second)); !ok {
		t.Errorf("busy within the stall bound: %s", why)
	}
	if ok, _ := s.healthy(now.Add(s.stall() + time.Second)); ok {
		t.Error("busy with no progress past the stall bound counts as healthy")
	}
	s.m.tick()
	if ok, why := s.healthy(time.Now()); !ok {
		t.Errorf("busy right after progress: %s", why)
	}
}
