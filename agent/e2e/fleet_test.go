package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromium finds the browser; under CI its absence is a failure.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found (CI is set, so this is a failure; apt-get install -y chromium)")
	}
	t.Skip("chromium not found; apt-get install -y chromium (set CI=1 to make this a failure)")
	return ""
}

// browser starts headless Chromium; it is stopped on cleanup.
func browser(t *testing.T) context.Context {
	t.Helper()
	actx, cancelA := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium(t)),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.WindowSize(412, 915), // a phone
		chromedp.UserDataDir(t.TempDir()),
	)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelA() })
	return ctx
}

// eval evaluates a JavaScript expression in the page until it gives a
// value that ok accepts (the page reloads itself, so an evaluation may
// fail while it navigates), and returns it.
func eval[T any](t *testing.T, ctx context.Context, within time.Duration, expr string, ok func(T) bool) T {
	t.Helper()
	deadline := time.Now().Add(within)
	var last T
	var lastErr error
	for time.Now().Before(deadline) {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
		if err == nil && ok(v) {
			return v
		}
		last, lastErr = v, err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: last value %v (error %v) after %s", expr, last, lastErr, within)
	return last
}

// TestFleetPage runs the real binaries — RabbitMQ, the S3 server,
// forest-cloud and two forest-agents reporting every 2 s — and reads the
// fleet page in headless Chromium sized like a phone: a row per device
// whose spool depth, evictions and published count match each agent's own
// /metrics (one agent's spool overflowed while its link was cut, so it has
// evictions); each row's thumbnail (latest frame, mask overlaid, made from
// S3) renders, and so do a device page's frames of the last 24 h; an agent
// killed with SIGKILL is shown silent within fleet.silent_after ×
// status_interval (4 s) plus the page's refresh, while the other stays
// green.
func TestFleetPage(t *testing.T) {
	const interval, silentAfter, refresh = 2 * time.Second, 2, time.Second
	s := newStack(t, []AgentOptions{
		{Device: "mast-a", StatusInterval: interval.String()},
		{Device: "mast-b", StatusInterval: interval.String(), SpoolMaxBytes: 400 << 10},
	}, fmt.Sprintf("fleet:\n  silent_after: %d\n  refresh: %s\n  dlq_scan_interval: 1s\n", silentAfter, refresh))
	frames, err := LoadFrames(s.Root, 512)
	if err != nil {
		t.Fatal(err)
	}
	a, b := s.Agents[0], s.Agents[1]
	// mast-b's link is cut while it captures more than its spool holds.
	b.Refuse(true)
	b.Cut()
	for i := range 12 {
		for _, ag := range s.Agents {
			img, err := frames.Frame(i)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Drop(ag.Incoming, fmt.Sprintf("f%03d.jpg", i), img); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	waitFor(t, 2*time.Minute, func() bool {
		n, err := Metric(ctx, b.HTTP, "forest_agent_frames_evicted_total")
		pending, _ := os.ReadDir(b.Incoming)
		return err == nil && n > 0 && len(pending) <= 1
	})
	b.Refuse(false)
	if !waitDrained(t, s, 3*time.Minute) {
		t.Fatal("not drained")
	}
	// Each agent has reported since it drained.
	time.Sleep(2 * interval)

	bctx := browser(t)
	bctx, cancel := context.WithTimeout(bctx, 4*time.Minute)
	defer cancel()
	base := "http://" + s.Cloud.HTTP
	if _, err := chromedp.Run(bctx, chromedp.Navigate(base+"/fleet")); err != nil {
		t.Fatalf("fleet page: %v", err)
	}
	rows := `Array.from(document.querySelectorAll('tr.device')).map(r => r.id).join(',')`
	eval(t, bctx, 30*time.Second, rows, func(v string) bool { return v == "dev-mast-a,dev-mast-b" })
	thumbs := `Array.from(document.querySelectorAll('tr.device img.thumb')).filter(i => i.complete && i.naturalWidth > 0).length`
	eval(t, bctx, 60*time.Second, thumbs, func(n int) bool { return n == 2 })

	// The numbers match the agents' own metrics.
	for _, ag := range s.Agents {
		q := func(sel string) string {
			return fmt.Sprintf(`(document.querySelector('#dev-%s %s')||{}).textContent`, ag.Device, sel)
		}
		depth, _ := Metric(ctx, ag.HTTP, "forest_agent_spool_frames")
		evicted, _ := Metric(ctx, ag.HTTP, "forest_agent_frames_evicted_total")
		eval(t, bctx, 20*time.Second, q(".spool-frames"), func(v string) bool { return v == strconv.Itoa(int(depth)) })
		eval(t, bctx, 20*time.Second, q(".evicted"), func(v string) bool { return v == strconv.Itoa(int(evicted)) })
		eval(t, bctx, 20*time.Second, q(".seen"), func(v string) bool { return strings.HasSuffix(v, "s ago") })
		cls := eval(t, bctx, 5*time.Second, fmt.Sprintf(`document.querySelector('#dev-%s').className`, ag.Device), func(string) bool { return true })
		if strings.Contains(cls, "silent") {
			t.Fatalf("%s shown silent while it reports", ag.Device)
		}
		if ag == b && evicted == 0 {
			t.Fatal("mast-b evicted nothing; the test proves nothing about evictions")
		}
	}

	// A device page: its frames of the last 24 h, thumbnails rendering,
	// and the published count its agent shows.
	if _, err := chromedp.Run(bctx, chromedp.Navigate(base+"/fleet/device/mast-a")); err != nil {
		t.Fatal(err)
	}
	published, _ := Metric(ctx, a.HTTP, "forest_agent_frames_published_total")
	eval(t, bctx, 30*time.Second, `document.querySelector('#count').textContent`, func(v string) bool {
		return strings.HasPrefix(v, fmt.Sprintf("%d frame(s) stored", int(published)))
	})
	grid := `Array.from(document.querySelectorAll('#frames img')).filter(i => i.complete && i.naturalWidth > 0).length`
	eval(t, bctx, 60*time.Second, grid, func(n int) bool { return n == int(published) })
	if shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100)); err == nil {
		_ = os.WriteFile(filepath.Join(s.Dir, "device.png"), shot, 0o644)
	}

	// mast-b stops without a word: silent within the configured time.
	if _, err := chromedp.Run(bctx, chromedp.Navigate(base+"/fleet")); err != nil {
		t.Fatal(err)
	}
	b.Kill()
	killed := time.Now()
	limit := time.Duration(silentAfter)*interval + 2*refresh + 2*time.Second
	eval(t, bctx, limit, `document.querySelector('#dev-mast-b').className`, func(v string) bool { return strings.Contains(v, "silent") })
	took := time.Since(killed)
	if cls := eval(t, bctx, 5*time.Second, `document.querySelector('#dev-mast-a').className`, func(string) bool { return true }); strings.Contains(cls, "silent") {
		t.Fatal("mast-a shown silent too")
	}
	if n, err := Metric(ctx, s.Cloud.HTTP, "forest_cloud_device_silent", `device="mast-b"`); err != nil || n != 1 {
		t.Fatalf("forest_cloud_device_silent{mast-b} = %v (%v)", n, err)
	}
	if shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100)); err == nil {
		_ = os.WriteFile(filepath.Join(s.Dir, "fleet.png"), shot, 0o644)
		if dir := os.Getenv("FOREST_FLEET_SCREENSHOTS"); dir != "" {
			_ = os.WriteFile(filepath.Join(dir, "fleet.png"), shot, 0o644)
			b, _ := os.ReadFile(filepath.Join(s.Dir, "device.png"))
			_ = os.WriteFile(filepath.Join(dir, "device.png"), b, 0o644)
		}
	}
	t.Logf("mast-b shown silent %s after SIGKILL (limit %s)", took.Round(100*time.Millisecond), limit)
}
