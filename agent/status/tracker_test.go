package status

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
		setup  func(s *Tracker)
		link   Link
		frames int
		ready  bool
		says   string
	}{
		{"starting", func(s *Tracker) {}, Link{Offline: true}, 0, false, "capture not running"},
		{"offline", func(s *Tracker) { s.SetCapturing(true) }, Link{Offline: true}, 3, true, "offline (no broker configured): 3 frame(s)"},
		{"capture failing", func(s *Tracker) {
			s.SetCapturing(true)
			for i := 0; i < 3; i++ {
				s.CaptureFailed(errors.New("exit status 1"))
			}
		}, Link{Offline: true}, 0, false, "capture failing: 3 consecutive errors, last: exit status 1"},
		{"capture recovered", func(s *Tracker) {
			s.SetCapturing(true)
			s.CaptureFailed(errors.New("x"))
			s.CaptureFailed(errors.New("x"))
			s.CaptureFailed(errors.New("x"))
			s.CaptureOK()
		}, Link{Offline: true}, 0, true, "capture ok"},
		{"link down", func(s *Tracker) { s.SetCapturing(true) }, Link{State: "down", Since: now, LastError: "connection refused"}, 7, true,
			"link down since " + now.UTC().Format(time.RFC3339) + ": connection refused; 7 frame(s) wait in the spool"},
		{"connected empty", func(s *Tracker) { s.SetCapturing(true) }, Link{State: "connected", Connected: true, Since: now.Add(-time.Hour)}, 0, true, "spool empty"},
		{"draining", func(s *Tracker) { s.SetCapturing(true); s.Acked(4) }, Link{State: "connected", Connected: true, Since: now.Add(-time.Hour)}, 9, true, "draining, 9 frame(s)"},
		{"just connected", func(s *Tracker) { s.SetCapturing(true) }, Link{State: "connected", Connected: true, Since: now}, 9, true, "draining"},
		{"stalled", func(s *Tracker) {
			s.SetCapturing(true)
			s.Acked(1)
			s.lastAck = now.Add(-2 * stall)
			s.PublishFailed(errors.New("nacked by broker"))
		}, Link{State: "connected", Connected: true, Since: now.Add(-time.Hour)}, 9, false, "drain stalled: link connected but no frame confirmed for 2m0s with 9 frame(s) spooled (0 in flight); last publish error: nacked by broker"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewTracker()
			s.started = now.Add(-time.Hour)
			tc.setup(s)
			ok, why := s.Readiness(tc.link, tc.frames, 0, stall)
			if ok != tc.ready || !strings.Contains(why, tc.says) {
				t.Fatalf("got %v %q, want %v containing %q", ok, why, tc.ready, tc.says)
			}
		})
	}
}
