package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/wire"
)

// publisher is a bare amqp091 channel in confirm mode, for tests that put
// hand-made messages on the broker.
type publisher struct {
	ch *amqp.Channel
}

func dial(t *testing.T, url string) *publisher {
	t.Helper()
	ch := rabbittest.Channel(t, url)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	return &publisher{ch}
}

// publish sends one message and waits for its confirm; an error means the
// broker refused it (and closed the channel).
func (p *publisher) publish(key string, m amqp.Publishing) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, "forest.frames", key, false, false, m)
	if err != nil {
		return err
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("nacked")
	}
	if p.ch.IsClosed() {
		return errors.New("channel closed by the broker")
	}
	return nil
}

func toPublishing(m wire.Message) amqp.Publishing {
	return amqp.Publishing{
		DeliveryMode: amqp.Persistent, ContentType: m.ContentType, MessageId: m.MessageID,
		Timestamp: m.Timestamp, AppId: m.AppID, Type: m.Type, UserId: m.UserID,
		Headers: amqp.Table(m.Headers), Body: m.Body,
	}
}

// goodFrame is a valid wire message for device dev, published as user.
func goodFrame(t *testing.T, frames *Frames, dev, user string, seq int) wire.Message {
	t.Helper()
	img, err := frames.Frame(seq)
	if err != nil {
		t.Fatal(err)
	}
	var mask bytes.Buffer
	if err := png.Encode(&mask, image.NewGray(image.Rect(0, 0, 64, 64))); err != nil {
		t.Fatal(err)
	}
	m, err := wire.Encode(&wire.Frame{
		ID: fmt.Sprintf("%s-%012d", dev, seq), Device: dev, Seq: uint64(seq),
		Captured: time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC), ContentType: wire.JPEG,
		Image: img, Width: 64, Height: 64, Coverage: 0.5, Model: "test/1", Mask: mask.Bytes(),
		Agent: "e2e-test", User: user,
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestIdentity: a device whose broker user is dev-a cannot get a frame
// stored as device dev-b, whatever it puts in the message.
func TestIdentity(t *testing.T) {
	s := newStack(t, []AgentOptions{{Device: "dev-a"}, {Device: "dev-b"}}, "")
	frames, err := LoadFrames(s.Root, 64)
	if err != nil {
		t.Fatal(err)
	}
	devA := s.Broker.URLFor("dev-a", s.Agents[0].Password, "/")

	// 1. user_id of another user: RabbitMQ refuses the message itself.
	p := dial(t, devA)
	m := goodFrame(t, frames, "dev-b", "dev-b", 1)
	if err := p.publish("frames.dev-a", toPublishing(m)); err == nil {
		t.Error("broker accepted user_id dev-b from user dev-a")
	}
	// 2. The routing key of another device: refused by topic permissions.
	p = dial(t, devA)
	m = goodFrame(t, frames, "dev-b", "dev-a", 2)
	if err := p.publish("frames.dev-b", toPublishing(m)); err == nil {
		t.Error("broker accepted routing key frames.dev-b from user dev-a")
	}
	// 3. Its own user and key, but device dev-b in the headers: the
	// consumer dead-letters it.
	p = dial(t, devA)
	m = goodFrame(t, frames, "dev-b", "dev-a", 3)
	if err := p.publish("frames.dev-a", toPublishing(m)); err != nil {
		t.Fatal(err)
	}
	// 4. A proper frame of dev-a is stored.
	m = goodFrame(t, frames, "dev-a", "dev-a", 4)
	if err := p.publish("frames.dev-a", toPublishing(m)); err != nil {
		t.Fatal(err)
	}
	reasons := waitDeadLetters(t, s, 1, time.Minute)
	if reasons["identity_mismatch"] != 1 {
		t.Errorf("dead letters %v, want one identity_mismatch", reasons)
	}
	waitFor(t, time.Minute, func() bool {
		keys, _ := Keys(context.Background(), s.S3.Client(), s.Bucket, "frames/dev-a/")
		return len(keys) == 3 // image, mask, sidecar
	})
	keys, err := Keys(context.Background(), s.S3.Client(), s.Bucket, "frames/dev-b/")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("objects stored as dev-b: %v", keys)
	}
}

// waitDeadLetters waits until the dead-letter queue holds n messages and
// returns their x-forest-reason codes, leaving them in the queue.
func waitDeadLetters(t *testing.T, s *Stack, n int, timeout time.Duration) map[string]int {
	t.Helper()
	waitFor(t, timeout, func() bool { return queueDepths(t, s)["forest.cloud.frames.dlq"] >= n })
	reasons := map[string]int{}
	rabbittest.WithChannel(t, s.Broker.URL, func(ch *amqp.Channel) {
		var tags []uint64
		for {
			d, ok, err := ch.Get("forest.cloud.frames.dlq", false)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			r, _ := d.Headers["x-forest-reason"].(string)
			if r == "" {
				r = "(none)"
			}
			reasons[r]++
			tags = append(tags, d.DeliveryTag)
		}
		if len(tags) > 0 {
			_ = ch.Nack(tags[len(tags)-1], true, true)
		}
	})
	return reasons
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func legacy(name string, img []byte) []byte {
	b, _ := json.Marshal(map[string]any{
		"image":          base64.StdEncoding.EncodeToString(img),
		"image_metadata": map[string]any{"image_name": name},
	})
	return b
}

// TestLegacyNames: legacy messages with traversal names never write
// outside their prefix, neither in S3 nor on the S3 server's disk.
func TestLegacyNames(t *testing.T) {
	s := newStack(t, nil, "identity:\n  devices:\n    forest-admin: [legacy]\nlegacy:\n  users: [forest-admin]\n")
	frames, err := LoadFrames(s.Root, 64)
	if err != nil {
		t.Fatal(err)
	}
	img, err := frames.Frame(7)
	if err != nil {
		t.Fatal(err)
	}
	p := dial(t, s.Broker.URL)
	names := []string{
		"../../../../etc/passwd", "../escape.png", "/etc/shadow.png", "a/../../b.png",
		"..", ".", "", "dir/../../../x.png", "..\\..\\win.png", "ctl\x00null.png",
		"line\nbreak.png", strings.Repeat("a", 2000) + ".png", "%2e%2e%2fenc.png",
		"ok/nested/frame-1.png", "plain-frame.jpg",
	}
	for _, n := range names {
		if err := p.publish("frames.legacy", amqp.Publishing{DeliveryMode: amqp.Persistent, UserId: rabbittest.AdminUser, Body: legacy(n, img)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, time.Minute, func() bool {
		keys, _ := Keys(context.Background(), s.S3.Client(), s.Bucket, "")
		return len(keys)+queueDepths(t, s)["forest.cloud.frames.dlq"] >= len(names) &&
			queueDepths(t, s)["forest.cloud.frames"] == 0
	})
	keys, err := Keys(context.Background(), s.S3.Client(), s.Bucket, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "legacy/") || strings.Contains(k, "..") {
			t.Errorf("legacy message stored outside legacy/: %q", k)
		}
	}
	found := strings.Join(keys, " ")
	// Stored as sent (legacy.format original, the default): the JPEG keeps
	// its bytes and takes its own extension, whatever the name said.
	for _, want := range []string{"legacy/ok/nested/frame-1.jpg", "legacy/plain-frame.jpg"} {
		if !strings.Contains(found, want) {
			t.Errorf("safe name not stored as %s (keys: %v)", want, keys)
		}
	}
	// Nothing on the server's disk outside the bucket's folder.
	data := filepath.Join(s.S3.Dir(), "data")
	err = filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == data {
			return err
		}
		rel, _ := filepath.Rel(data, p)
		top := strings.Split(rel, string(filepath.Separator))[0]
		if top != s.Bucket && !strings.HasPrefix(top, ".") {
			t.Errorf("file outside the bucket on the S3 server: %s", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The S3 server's data folder must be the only place written: nothing
	// appeared beside it.
	ents, _ := os.ReadDir(filepath.Dir(data))
	for _, e := range ents {
		if e.Name() != "data" && e.Name() != "server.log" {
			t.Errorf("unexpected file beside the S3 data: %s", e.Name())
		}
	}
}

// TestMalformedStorm: 1,000 malformed or random messages interleaved with
// 1,000 good ones: every good one stored, every bad one dead-lettered with
// a reason, and the consumer never restarts.
func TestMalformedStorm(t *testing.T) {
	s := newStack(t, nil, "identity:\n  devices:\n    forest-admin: [storm]\n")
	frames, err := LoadFrames(s.Root, 64)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := s.Cloud.Running()
	p := dial(t, s.Broker.URL)
	rng := rand.New(rand.NewPCG(1, 2))
	img, _ := frames.Frame(0)
	bad := func(i int) amqp.Publishing {
		good := toPublishing(goodFrame(t, frames, "storm", rabbittest.AdminUser, 100000+i))
		random := make([]byte, rng.IntN(4096))
		for j := range random {
			random[j] = byte(rng.Uint32())
		}
		switch i % 12 {
		case 0:
			return amqp.Publishing{Body: random}
		case 1:
			return amqp.Publishing{ContentType: "image/jpeg", Body: random}
		case 2:
			return amqp.Publishing{Body: []byte(`{"image": "not base64 !!", "image_metadata": {"image_name": "x.png"}}`)}
		case 3:
			return amqp.Publishing{Body: legacy("x.png", random)}
		case 4:
			return amqp.Publishing{Body: []byte(`{"image_metadata": {}}`)}
		case 5:
			good.Type = "forest.frame.v9.0"
			return good
		case 6:
			good.Body = append([]byte{}, good.Body...)
			good.Body[len(good.Body)/2] ^= 0x55
			return good
		case 7:
			delete(good.Headers, wire.HeaderDevice)
			return good
		case 8:
			good.Headers[wire.HeaderCoverage] = "lots"
			return good
		case 9:
			good.Body, good.Headers[wire.HeaderSHA256] = random, wire.Sum(random)
			return good
		case 10:
			return amqp.Publishing{Body: legacy("../../x.png", img)}
		default:
			good.Headers[wire.HeaderDevice] = "someone-else"
			return good
		}
	}
	const n = 1000
	for i := range n {
		if err := p.publish("frames.storm", bad(i)); err != nil {
			t.Fatalf("publish bad %d: %v", i, err)
		}
		if err := p.publish("frames.storm", toPublishing(goodFrame(t, frames, "storm", rabbittest.AdminUser, i))); err != nil {
			t.Fatalf("publish good %d: %v", i, err)
		}
	}
	reasons := waitDeadLetters(t, s, n, 3*time.Minute)
	total := 0
	for r, c := range reasons {
		total += c
		if r == "(none)" {
			t.Errorf("%d dead letters without a reason", c)
		}
	}
	if total != n {
		t.Errorf("%d dead letters, want %d: %v", total, n, reasons)
	}
	waitFor(t, 3*time.Minute, func() bool { return queueDepths(t, s)["forest.cloud.frames"] == 0 })
	stored, err := StoredFrames(context.Background(), s.S3.Client(), s.Bucket, "frames/storm/")
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != n {
		t.Errorf("%d good frames stored, want %d", len(stored), n)
	}
	for _, st := range stored {
		if len(st.Problems) > 0 {
			t.Errorf("%s: %v", st.Sidecar, st.Problems)
		}
	}
	if now, ok := s.Cloud.Running(); !ok || now != pid || s.Cloud.Starts() != 1 {
		t.Errorf("the consumer restarted or died (pid %d → %d, running %v)", pid, now, ok)
	}
	t.Logf("storm: %d good stored, %d dead-lettered by reason %v", len(stored), total, reasons)
}

// TestNoSecretsInHelp runs every --help with the stack's secrets in the
// environment: none may be printed.
func TestNoSecretsInHelp(t *testing.T) {
	bin := binaries(t)
	secret := "help-Secret-9f3e"
	env := append(os.Environ(), "FOREST_AGENT_PASSWORD="+secret, "AWS_SECRET_ACCESS_KEY="+secret,
		"FOREST_CLOUD_AMQP_PASSWORD="+secret)
	for _, args := range [][]string{
		{"forest-agent", "--help"}, {"forest-agent", "run", "--help"}, {"forest-agent", "segment", "--help"},
		{"forest-agent", "spool", "--help"}, {"forest-agent", "config", "--help"}, {"forest-agent", "version"},
		{"forest-cloud", "--help"}, {"forest-cloud", "run", "--help"}, {"forest-cloud", "dlq", "--help"},
		{"forest-cloud", "version"},
	} {
		cmd := exec.Command(filepath.Join(bin, args[0]), args[1:]...)
		cmd.Env = env
		out, _ := cmd.CombinedOutput()
		if len(out) == 0 {
			t.Errorf("%v printed nothing", args)
		}
		if bytes.Contains(out, []byte(secret)) {
			t.Errorf("%v printed a secret", args)
		}
	}
}
