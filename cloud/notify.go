package cloud

import (
	"context"
	"time"

	"github.com/forestwatch/forest/internal/sdnotify"
)

// notify speaks to systemd (Type=notify) for Run: READY=1 once the service
// runs its loops (HTTP served, start-up checks passed or waiting for S3),
// STATUS= with the readiness reason when it changes, WATCHDOG=1 every half
// watchdog interval while the service is healthy, and STOPPING=1 when ctx
// ends. Healthy means real progress or a healthy idle state (see healthy).
// It returns when ctx ends.
func (s *Service) notify(ctx context.Context) {
	n := sdnotify.New()
	_, why := s.Readiness()
	if err := n.Send("READY=1\nSTATUS=" + why); err != nil {
		s.log.Warn("sd_notify", "err", err)
	}
	wd, err := sdnotify.WatchdogInterval()
	if err != nil {
		s.log.Warn("systemd watchdog", "err", err)
	}
	tick := time.Second
	if wd > 0 {
		tick = min(tick, wd)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	lastStatus, lastPing := why, time.Now()
	for {
		select {
		case <-ctx.Done():
			_ = n.Send("STOPPING=1")
			return
		case now := <-t.C:
			if _, why := s.Readiness(); why != lastStatus {
				_ = n.Send("STATUS=" + why)
				lastStatus = why
			}
			if wd <= 0 || now.Sub(lastPing) < wd {
				continue
			}
			if ok, why := s.healthy(now); !ok {
				// Withheld: systemd restarts the service after WatchdogSec.
				s.log.Error("no progress; withholding WATCHDOG=1", "why", why)
				continue
			}
			_ = n.Send("WATCHDOG=1")
			lastPing = now
		}
	}
}

// healthy reports whether the service makes progress or idles healthily:
// no message in a worker's hands, or some progress (an S3 request or probe
// answered or timed out, a message settled, a start-up check or broker
// dial finished) within the stall bound, longer than any single step may
// take (two S3 request timeouts and a broker confirm timeout, plus 10 s).
func (s *Service) healthy(now time.Time) (bool, string) {
	busy := s.busy.Load()
	if busy == 0 {
		return true, "idle"
	}
	last := time.Unix(0, s.m.progress.Load())
	if d := now.Sub(last); d > s.stall() {
		return false, "messages in progress but nothing has happened for " + d.Round(time.Second).String()
	}
	return true, "progressing"
}

func (s *Service) stall() time.Duration {
	return 2*s.cfg.S3.RequestTimeout + s.cfg.AMQP.ConfirmTimeout + 10*time.Second
}
