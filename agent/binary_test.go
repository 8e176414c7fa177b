package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/segment"
	"github.com/forestwatch/forest/wire"
)

// buildBinary builds forest-agent into a temporary directory.
func buildBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "forest-agent")
	cmd := exec.Command("go", "build", "-ldflags", "-X github.com/forestwatch/forest/agent.Version=test-1 -X github.com/forestwatch/forest/agent.Commit=abc123", "-o", bin, "./cmd/forest-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// metric returns the value of an unlabelled sample in the agent's /metrics.
func metric(t testing.TB, base, name string) float64 {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// TestBinaryAgainstBroker runs the real forest-agent binary against a real
// RabbitMQ: 200 frames from a dir source arrive in the queue with correct
// headers, masks and checksums; with the broker down frames stay in the
// spool and /readyz says why; when it returns they drain.
func TestBinaryAgainstBroker(t *testing.T) {
	needModel(t)
	if testing.Short() {
		t.Skip("-short")
	}
	b := rabbittest.Start(t)
	vurl, err := url.Parse(b.Vhost(t))
	if err != nil {
		t.Fatal(err)
	}
	rabbittest.FramesQueue(t, vurl.String(), "frames", nil)

	dir := t.TempDir()
	pw := filepath.Join(dir, "amqp-password")
	p, _ := vurl.User.Password()
	os.WriteFile(pw, []byte(p+"\n"), 0o600)
	user := vurl.User.Username()
	vurl.User = nil
	listen := freeAddr(t)
	base := "http://" + listen
	incoming := filepath.Join(dir, "incoming")
	os.MkdirAll(incoming, 0o755)
	model, _ := filepath.Abs(modelPath)
	cfgPath := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`device:
  id: mast-42
  state_dir: %[1]s/state
source:
  type: dir
  dir: {path: %[2]s, settle: 100ms, after: delete}
segment: {model: %[3]s, threads: 2}
spool: {dir: %[1]s/spool, min_free_bytes: 0}
uplink:
  url: %[4]s
  user: %[5]s
  password_file: %[6]s
  backoff_max: 1s
  confirm_timeout: 5s
  dial_timeout: 2s
  heartbeat: 2s
http: {listen: "%[7]s"}
log: {level: info}
shutdown_timeout: 10s
`, dir, incoming, model, vurl.String(), user, pw, listen)), 0o644)

	bin := buildBinary(t)
	if out, err := exec.Command(bin, "config", "check", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("config check: %v %s", err, out)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("agent stderr:\n%s", stderr.String())
		}
	})

	// 200 frames, written as a camera would: to a temporary name, renamed.
	samples := sampleFrames(t)
	write := func(from, n int) {
		for i := from; i < from+n; i++ {
			src := samples[i%len(samples)]
			if strings.HasSuffix(src, ".jpg") { // keep the test quick: tiles only
				src = samples[0]
			}
			tmp := filepath.Join(incoming, fmt.Sprintf(".f%04d.tmp", i))
			copyFile(t, src, tmp)
			os.Rename(tmp, filepath.Join(incoming, fmt.Sprintf("f%04d.png", i)))
		}
	}
	t0 := time.Now()
	write(0, 200)
	eventually(t, 4*time.Minute, "200 frames published", func() bool { return metric(t, base, "forest_agent_frames_published_total") == 200 })
	t.Logf("200 frames captured, segmented, spooled and confirmed in %s", time.Since(t0).Round(time.Millisecond))
	msgs := consume(t, b, vurl, user, p, 200)
	checkFrames(t, msgs, "mast-42", user)

	// Broker down: frames stay in the spool and /readyz says why.
	b.Stop(t)
	eventually(t, 30*time.Second, "link down", func() bool {
		_, body := get(t, base+"/readyz")
		return strings.Contains(body, "link down")
	})
	write(200, 20)
	eventually(t, time.Minute, "20 more frames spooled", func() bool { return metric(t, base, "forest_agent_frames_spooled_total") == 220 })
	time.Sleep(500 * time.Millisecond)
	code, body := get(t, base+"/readyz")
	if code != 200 || !strings.Contains(body, "link down") || !strings.Contains(body, "20 frame(s) wait in the spool") {
		t.Fatalf("readyz with the broker down: %d %q", code, body)
	}
	t.Logf("readyz with the broker down: %d %s", code, strings.TrimSpace(body))
	if v := metric(t, base, "forest_agent_spool_frames"); v != 20 {
		t.Fatalf("spool holds %v frames, want 20", v)
	}
	if v := metric(t, base, "forest_agent_frames_published_total"); v != 200 {
		t.Fatalf("published %v while the broker was down", v)
	}

	// The broker returns: the spool drains.
	b.Start(t)
	eventually(t, time.Minute, "the spool to drain", func() bool {
		return metric(t, base, "forest_agent_frames_published_total") == 220 && metric(t, base, "forest_agent_spool_frames") == 0
	})
	msgs = consume(t, b, vurl, user, p, 20)
	checkFrames(t, msgs, "mast-42", user)
	seqs := map[int64]bool{}
	for _, m := range msgs {
		seqs[m.Headers["seq"].(int64)] = true
	}
	for s := range seqs {
		if s < 200 {
			t.Fatalf("frame with seq %d delivered twice", s)
		}
	}

	// SIGTERM: clean, bounded shutdown.
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("agent exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not stop on SIGTERM")
	}
	out, err := exec.Command(bin, "spool", "stats", "--json", filepath.Join(dir, "spool")).Output()
	if err != nil {
		t.Fatalf("spool stats: %v", err)
	}
	var st struct{ Frames int }
	json.Unmarshal(out, &st)
	if st.Frames != 0 {
		t.Fatalf("spool after drain: %s", out)
	}
}

// consume takes n messages from the queue "frames" and acks them.
func consume(t *testing.T, b *rabbittest.Broker, vurl *url.URL, user, pw string, n int) []wire.Message {
	t.Helper()
	u := *vurl
	u.User = url.UserPassword(user, pw)
	var out []wire.Message
	rabbittest.WithChannel(t, u.String(), func(ch *amqp.Channel) {
		ch.Qos(50, 0, false)
		dl, err := ch.Consume("frames", "", false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		timeout := time.After(60 * time.Second)
		for len(out) < n {
			select {
			case d := <-dl:
				out = append(out, wire.Message{ContentType: d.ContentType, MessageID: d.MessageId, Timestamp: d.Timestamp,
					AppID: d.AppId, Type: d.Type, UserID: d.UserId, Headers: d.Headers, Body: d.Body})
				if d.DeliveryMode != amqp.Persistent {
					t.Errorf("message %s not persistent", d.MessageId)
				}
				d.Ack(false)
			case <-timeout:
				t.Fatalf("got %d of %d messages", len(out), n)
			}
		}
		// Nothing more: no duplicates were published.
		select {
		case d := <-dl:
			t.Fatalf("unexpected extra message %s", d.MessageId)
		case <-time.After(300 * time.Millisecond):
		}
	})
	return out
}

var frameIDRe = regexp.MustCompile(`^mast-42-\d{12}$`)

// checkFrames decodes every message with wire.Decode (schema, checksums of
// body and mask) and checks headers and masks.
func checkFrames(t *testing.T, msgs []wire.Message, device, user string) {
	t.Helper()
	seen := map[uint64]bool{}
	for _, m := range msgs {
		f, err := wire.Decode(m)
		if err != nil {
			t.Fatalf("message %s: %v", m.MessageID, err)
		}
		if f.Device != device || f.ID != wire.FrameID(device, f.Seq) || !frameIDRe.MatchString(f.ID) || seen[f.Seq] {
			t.Fatalf("bad id/device/seq: %+v", f.ID)
		}
		seen[f.Seq] = true
		if f.ContentType != wire.WebP || f.Width != 256 || f.Height != 256 || f.Model != "forest-unet/0" && !strings.HasPrefix(f.Model, "forest-unet/") {
			t.Fatalf("%s: type %s %dx%d model %s", f.ID, f.ContentType, f.Width, f.Height, f.Model)
		}
		if f.Agent != "forest-agent/test-1" || f.User != user || time.Since(f.Captured) > 10*time.Minute {
			t.Fatalf("%s: agent %q user %q captured %s", f.ID, f.Agent, f.User, f.Captured)
		}
		img, err := segment.Decode(f.Image, 0)
		if err != nil {
			t.Fatalf("%s: body: %v", f.ID, err)
		}
		mk, err := segment.Decode(f.Mask, 0)
		if err != nil || mk.Width != img.Width || mk.Height != img.Height {
			t.Fatalf("%s: mask: %v", f.ID, err)
		}
		g, ok := mk.Image.(*image.Gray)
		if !ok {
			t.Fatalf("%s: mask is %T, want 8-bit gray", f.ID, mk.Image)
		}
		forest := 0
		for _, v := range g.Pix {
			switch v {
			case 255:
				forest++
			case 0:
			default:
				t.Fatalf("%s: mask value %d", f.ID, v)
			}
		}
		if got := float64(forest) / float64(len(g.Pix)); got != f.Coverage {
			t.Fatalf("%s: coverage header %v, mask says %v", f.ID, f.Coverage, got)
		}
	}
}
