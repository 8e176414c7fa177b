package agent

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestReadiness(t *testing.T) {
	const stall = time.Minute
	now := time.Now()
	cases := []struct {
		name   string
		setup  func(s *status)
		link   linkInfo
		frames int
		ready  bool
		says   string
	}{
		{"starting", func(s *status) {}, linkInfo{Offline: true}, 0, false, "capture not running"},
		{"offline", func(s *status) { s.setCapturing(true) }, linkInfo{Offline: true}, 3, true, "offline (no broker configured): 3 frame(s)"},
		{"capture failing", func(s *status) {
			s.setCapturing(true)
			for i := 0; i < 3; i++ {
				s.captureFailed(errors.New("exit status 1"))
			}
		}, linkInfo{Offline: true}, 0, false, "capture failing: 3 consecutive errors, last: exit status 1"},
		{"capture recovered", func(s *status) {
			s.setCapturing(true)
			s.captureFailed(errors.New("x"))
			s.captureFailed(errors.New("x"))
			s.captureFailed(errors.New("x"))
			s.captureOK()
		}, linkInfo{Offline: true}, 0, true, "capture ok"},
		{"link down", func(s *status) { s.setCapturing(true) }, linkInfo{State: "down", Since: now, LastError: "connection refused"}, 7, true,
			"link down since " + now.UTC().Format(time.RFC3339) + ": connection refused; 7 frame(s) wait in the spool"},
		{"connected empty", func(s *status) { s.setCapturing(true) }, linkInfo{State: "connected", Connected: true, Since: now.Add(-time.Hour)}, 0, true, "spool empty"},
		{"draining", func(s *status) { s.setCapturing(true); s.acked(4) }, linkInfo{State: "connected", Connected: true, Since: now.Add(-time.Hour)}, 9, true, "draining, 9 frame(s)"},
		{"just connected", func(s *status) { s.setCapturing(true) }, linkInfo{State: "connected", Connected: true, Since: now}, 9, true, "draining"},
		{"stalled", func(s *status) {
			s.setCapturing(true)
			s.acked(1)
			s.lastAck = now.Add(-2 * stall)
			s.publishFailed(errors.New("nacked by broker"))
		}, linkInfo{State: "connected", Connected: true, Since: now.Add(-time.Hour)}, 9, false, "drain stalled: link connected but no frame confirmed for 2m0s with 9 frame(s) spooled (0 in flight); last publish error: nacked by broker"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStatus()
			s.started = now.Add(-time.Hour)
			tc.setup(s)
			ok, why := s.readiness(tc.link, tc.frames, 0, stall)
			if ok != tc.ready || !strings.Contains(why, tc.says) {
				t.Fatalf("got %v %q, want %v containing %q", ok, why, tc.ready, tc.says)
			}
		})
	}
}
