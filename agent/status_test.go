package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"

	"github.com/forestwatch/forest/agent/encode"
)

// startAgent runs an offline agent with its HTTP server on 127.0.0.1:0 and
// returns its base URL; it is stopped on cleanup.
func startAgent(t *testing.T, cfg *Config) (*Agent, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Options{Logger: testLogger(t), Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return a, "http://" + ln.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHTTPEndpoints checks /healthz, /readyz (with its reason), /metrics
// and a thumbnail, without a browser.
func TestHTTPEndpoints(t *testing.T) {
	needModel(t)
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { // runs after startAgent's cleanup stopped the agent
		http.DefaultClient.CloseIdleConnections()
		goleak.VerifyNone(t, ignore)
	})
	cfg := testConfig(t)
	_, base := startAgent(t, cfg)
	copyFile(t, sampleFrames(t)[2], filepath.Join(cfg.Source.Dir.Path, "f.png"))
	eventually(t, 20*time.Second, "a spooled frame", func() bool {
		_, m := get(t, base+"/metrics")
		return strings.Contains(m, "forest_agent_frames_spooled_total 1")
	})
	if c, b := get(t, base+"/healthz"); c != 200 || !strings.Contains(b, "ok") {
		t.Fatalf("healthz %d %q", c, b)
	}
	c, b := get(t, base+"/readyz")
	if c != 200 || !strings.Contains(b, "offline") || !strings.Contains(b, "1 frame(s)") {
		t.Fatalf("readyz %d %q", c, b)
	}
	webpBy, _ := encode.WebPEncoder()
	if _, p := get(t, base+"/"); !strings.Contains(p, "encoding auto · WebP by "+webpBy) {
		t.Errorf("the status page does not name the WebP encoder (%s)", webpBy)
	}
	_, m := get(t, base+"/metrics")
	for _, want := range []string{
		`forest_agent_encoder_info{mode="auto",webp="` + webpBy + `"} 1`,
		`forest_agent_frames_captured_total{source="dir"} 1`,
		"forest_agent_frames_segmented_total 1",
		"forest_agent_frames_published_total 0",
		`forest_agent_frames_evicted_total{reason="max_bytes"} 0`,
		"forest_agent_spool_frames 1",
		"forest_agent_spool_bytes ",
		"forest_agent_spool_oldest_age_seconds ",
		"forest_agent_segment_seconds_count 1",
		"forest_agent_publish_seconds_count 0",
		"forest_agent_link_up -1",
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	eventually(t, 5*time.Second, "the frame's thumbnail", func() bool {
		c, b := get(t, base+"/thumb/test-dev-000000000001.jpg")
		return c == 200 && strings.HasPrefix(b, "\xff\xd8")
	})
	if c, _ := get(t, base+"/nope"); c != 404 {
		t.Fatalf("unknown path: %d", c)
	}
}

// TestReadyzCaptureFailing: an exec camera that keeps failing makes the
// agent not ready, saying why.
func TestReadyzCaptureFailing(t *testing.T) {
	needModel(t)
	cfg := testConfig(t)
	cfg.Source.Type = "exec"
	cfg.Source.Exec.Command = []string{"sh", "-c", "echo lens cap on >&2; exit 1"}
	cfg.Source.Exec.Interval = Duration(20 * time.Millisecond)
	_, base := startAgent(t, cfg)
	eventually(t, 10*time.Second, "readyz to fail", func() bool {
		c, b := get(t, base+"/readyz")
		return c == 503 && strings.Contains(b, "capture failing") && strings.Contains(b, "lens cap on")
	})
}

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

// TestStatusPageInChromium loads the status page in headless Chromium: it
// shows the link state, spool depth and a thumbnail per frame, the
// thumbnails are real images, and the page updates by itself when new
// frames arrive.
func TestStatusPageInChromium(t *testing.T) {
	needModel(t)
	path := chromium(t)
	cfg := testConfig(t)
	cfg.HTTP.Refresh = Duration(time.Second)
	_, base := startAgent(t, cfg)
	frames := sampleFrames(t)
	copyFile(t, frames[1], filepath.Join(cfg.Source.Dir.Path, "one.png"))
	copyFile(t, frames[2], filepath.Join(cfg.Source.Dir.Path, "two.png"))

	actx, cancelA := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	defer cancelA()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 90*time.Second)
	defer cancelT()

	countLoaded := `Array.from(document.querySelectorAll('#frames img')).filter(i => i.complete && i.naturalWidth > 0).length`
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("status page: %v", err)
	}
	waitPage(t, ctx, countLoaded+` >= 2`)
	loaded, err := chromedp.Run(ctx, chromedp.Evaluate[int](countLoaded))
	if err != nil {
		t.Fatal(err)
	}
	link, err := chromedp.Run(ctx, chromedp.Text("#link b"))
	if err != nil {
		t.Fatal(err)
	}
	depth, err := chromedp.Run(ctx, chromedp.Text("#depth b"))
	if err != nil {
		t.Fatal(err)
	}
	if loaded != 2 || link != "offline" || depth != "2" {
		t.Fatalf("page shows %d thumbnails, link %q, depth %q", loaded, link, depth)
	}
	title, err := chromedp.Run(ctx, chromedp.Title())
	if err != nil {
		t.Fatal(err)
	}
	points, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#coverage circle.pt').length`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(title, "test-dev") || points != 2 {
		t.Fatalf("title %q, %d coverage points", title, points)
	}
	clock, err := chromedp.Run(ctx, chromedp.Text("#clock b"))
	if err != nil {
		t.Fatal(err)
	}
	quarantined, err := chromedp.Run(ctx, chromedp.Text("#quarantine b"))
	if err != nil {
		t.Fatal(err)
	}
	wantClock := "NOT synchronised"
	if clockSynced() {
		wantClock = "synchronised"
	}
	if clock != wantClock || quarantined != "0" {
		t.Fatalf("page shows clock %q and %q quarantined; want %q and 0", clock, quarantined, wantClock)
	}
	// A new frame arrives; the page refreshes by itself and shows it.
	copyFile(t, frames[0], filepath.Join(cfg.Source.Dir.Path, "three.png"))
	waitPage(t, ctx, countLoaded+` >= 3 && document.querySelector('#depth b').textContent == '3'`)
}

// waitPage evaluates a boolean expression until it holds. The page reloads
// itself (meta refresh), so an evaluation may fail while it navigates.
func waitPage(t *testing.T, ctx context.Context, expr string) {
	t.Helper()
	var last error
	for ctx.Err() == nil {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		last = err
		time.Sleep(150 * time.Millisecond)
	}
	t.Fatalf("page never satisfied %s (last error %v)", expr, last)
}
