package cloud_test

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/wire"
)

func legacyBody(img []byte, name string) []byte {
	b, _ := json.Marshal(map[string]any{
		"image":          base64.StdEncoding.EncodeToString(img),
		"image_metadata": map[string]any{"image_name": name},
	})
	return b
}

// legacyPub is a legacy message published by the test's admin user, which
// newEnv lists in legacy.users.
func legacyPub(id string, body []byte) amqp.Publishing {
	return amqp.Publishing{MessageId: id, Body: body, DeliveryMode: amqp.Persistent, UserId: rabbittest.AdminUser}
}

// hugePNG is a valid PNG header claiming w×h pixels, with no pixel data.
func hugePNG(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 2
	_ = binary.Write(&b, binary.BigEndian, uint32(13))
	chunk := append([]byte("IHDR"), ihdr...)
	b.Write(chunk)
	_ = binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(chunk))
	return b.Bytes()
}

// TestMalformed publishes good messages around a table of malformed ones:
// every malformed message ends in the dead-letter queue with its reason,
// every good one is stored, and the consumer keeps going.
func TestMalformed(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	e := newEnv(t, nil)
	b := e.broker
	vhost := e.url[strings.LastIndex(e.url, "/")+1:]
	b.AddUser(t, "dev-x", "dev-x-pw", strings.ReplaceAll(vhost, "%2F", "/"), "", ".*", "")
	devURL := b.URLFor("dev-x", "dev-x-pw", strings.ReplaceAll(vhost, "%2F", "/"))
	e.declare(t)
	admin := rabbittest.AdminUser
	n := 0
	// wf builds a valid wire message and lets the case break it.
	wf := func(mut func(f *wire.Frame, m *amqp.Publishing)) amqp.Publishing {
		n++
		fr := makeFrame(t, e.cfg.S3.Prefix, "dev-a", 1000+n, admin)
		fr.pub.MessageId = fmt.Sprintf("bad-%d", n)
		fr.pub.Headers = amqp.Table(cloneHeaders(fr.pub.Headers))
		f := *fr.f
		f.ID = fr.pub.MessageId
		m, err := wire.Encode(&f)
		if err != nil {
			t.Fatal(err)
		}
		p := publishing(m)
		mut(&f, &p)
		return p
	}
	png8 := testImage(7, 8, 8)
	stored := makeFrame(t, e.cfg.S3.Prefix, "dev-a", 1, admin)
	cases := []struct {
		name   string
		pub    amqp.Publishing
		reason cloud.Reason
		url    string
	}{
		{"legacy not json", legacyPub("l1", []byte("{not json")), cloud.ReasonBadJSON, ""},
		{"legacy json array", legacyPub("l2", []byte("[1,2]")), cloud.ReasonBadJSON, ""},
		{"legacy no image", legacyPub("l3", []byte(`{"image_metadata":{"image_name":"a.png"}}`)), cloud.ReasonBadJSON, ""},
		{"legacy no name", legacyPub("l4", []byte(`{"image":"aGVsbG8="}`)), cloud.ReasonBadJSON, ""},
		{"legacy bad base64", legacyPub("l5", []byte(`{"image":"!!!not base64!!!","image_metadata":{"image_name":"a.png"}}`)), cloud.ReasonBadBase64, ""},
		{"legacy not an image", legacyPub("l6", legacyBody([]byte("hello forest"), "a.png")), cloud.ReasonNotImage, ""},
		{"legacy truncated png", legacyPub("l7", legacyBody(png8[:len(png8)/2], "b.png")), cloud.ReasonNotImage, ""},
		{"legacy pixel bomb", legacyPub("l8", legacyBody(hugePNG(100000, 100000), "c.png")), cloud.ReasonTooLarge, ""},
		{"legacy name ..", legacyPub("l9", legacyBody(png8, "../../etc/passwd")), cloud.ReasonUnsafeName, ""},
		{"legacy name leading /", legacyPub("l10", legacyBody(png8, "/abs.png")), cloud.ReasonUnsafeName, ""},
		{"legacy name control char", legacyPub("l11", legacyBody(png8, "a\x00b.png")), cloud.ReasonUnsafeName, ""},
		{"legacy name too long", legacyPub("l12", legacyBody(png8, strings.Repeat("a", 300)+".png")), cloud.ReasonUnsafeName, ""},
		{"legacy empty name", legacyPub("l13", legacyBody(png8, "")), cloud.ReasonUnsafeName, ""},
		{"legacy oversized", legacyPub("l14", bytes.Repeat([]byte(" "), 1<<20+1)), cloud.ReasonTooLarge, ""},
		{"legacy without user_id", func() amqp.Publishing {
			p := legacyPub("l15", legacyBody(png8, "no-user.png"))
			p.UserId = ""
			return p
		}(), cloud.ReasonLegacyUser, ""},
		{"legacy from a user not in legacy.users", func() amqp.Publishing {
			p := legacyPub("l16", legacyBody(png8, "dev-x.png"))
			p.UserId = "dev-x"
			return p
		}(), cloud.ReasonLegacyUser, devURL},
		{"legacy forging the requeue header", func() amqp.Publishing {
			p := legacyPub("l17", legacyBody(png8, "forged.png"))
			p.UserId = "dev-x"
			p.Headers = amqp.Table{cloud.HeaderUserID: rabbittest.AdminUser}
			return p
		}(), cloud.ReasonLegacyUser, devURL},
		{"wire oversized", wf(func(f *wire.Frame, m *amqp.Publishing) {
			m.Body = append(append([]byte{}, m.Body...), make([]byte, 1<<20)...)
		}), cloud.ReasonTooLarge, ""},
		{"wire unknown major", wf(func(f *wire.Frame, m *amqp.Publishing) { m.Type = "forest.frame.v3.0" }), cloud.ReasonSchema, ""},
		{"wire body checksum", wf(func(f *wire.Frame, m *amqp.Publishing) { m.Body = append([]byte{}, m.Body...); m.Body[40] ^= 1 }), cloud.ReasonChecksum, ""},
		{"wire mask checksum", wf(func(f *wire.Frame, m *amqp.Publishing) {
			m.Body = append(slices.Clone(f.Image), png8...)
			m.Headers[wire.HeaderMaskSHA256] = wire.Sum([]byte("x"))
		}), cloud.ReasonChecksum, ""},
		{"wire v1 mask checksum", wf(func(f *wire.Frame, m *amqp.Publishing) {
			m.Type, m.Body = "forest.frame.v1.0", f.Image
			m.Headers[wire.HeaderMask] = png8
			m.Headers[wire.HeaderMaskSHA256] = wire.Sum([]byte("x"))
		}), cloud.ReasonChecksum, ""},
		{"wire image_bytes past the body", wf(func(f *wire.Frame, m *amqp.Publishing) {
			m.Headers[wire.HeaderImageBytes] = int64(len(m.Body) + 1)
		}), cloud.ReasonInvalid, ""},
		{"wire no device", wf(func(f *wire.Frame, m *amqp.Publishing) { delete(m.Headers, wire.HeaderDevice) }), cloud.ReasonInvalid, ""},
		{"wire no captured_at", wf(func(f *wire.Frame, m *amqp.Publishing) { delete(m.Headers, wire.HeaderCaptured) }), cloud.ReasonInvalid, ""},
		{"wire bad captured_at", wf(func(f *wire.Frame, m *amqp.Publishing) { m.Headers[wire.HeaderCaptured] = "yesterday" }), cloud.ReasonInvalid, ""},
		{"wire device path", wf(func(f *wire.Frame, m *amqp.Publishing) { m.Headers[wire.HeaderDevice] = "../dev-b" }), cloud.ReasonInvalid, ""},
		{"wire frame id path", wf(func(f *wire.Frame, m *amqp.Publishing) { m.MessageId = "a/../../b" }), cloud.ReasonInvalid, ""},
		{"wire text content", wf(func(f *wire.Frame, m *amqp.Publishing) { m.ContentType = "text/plain" }), cloud.ReasonInvalid, ""},
		{"wire no type", wf(func(f *wire.Frame, m *amqp.Publishing) { m.Type = "" }), cloud.ReasonInvalid, ""},
		{"wire coverage 1.5", wf(func(f *wire.Frame, m *amqp.Publishing) { m.Headers[wire.HeaderCoverage] = 1.5 }), cloud.ReasonInvalid, ""},
		{"wire width as string", wf(func(f *wire.Frame, m *amqp.Publishing) { m.Headers[wire.HeaderWidth] = "8" }), cloud.ReasonInvalid, ""},
		{"wire jpeg that is png", wf(func(f *wire.Frame, m *amqp.Publishing) { m.ContentType = wire.JPEG }), cloud.ReasonNotImage, ""},
		{"wire not an image", wf(func(f *wire.Frame, m *amqp.Publishing) {
			m.Body = []byte("GIF89a but not really")
			m.Headers[wire.HeaderSHA256] = wire.Sum(m.Body)
			m.Headers[wire.HeaderImageBytes] = int64(len(m.Body))
			delete(m.Headers, wire.HeaderMaskSHA256)
		}), cloud.ReasonNotImage, ""},
		{"wire size mismatch", wf(func(f *wire.Frame, m *amqp.Publishing) { m.Headers[wire.HeaderWidth] = int64(9) }), cloud.ReasonSizeMismatch, ""},
		{"wire mask not png", wf(func(f *wire.Frame, m *amqp.Publishing) {
			m.Body = append(slices.Clone(f.Image), "nope"...)
			m.Headers[wire.HeaderMaskSHA256] = wire.Sum([]byte("nope"))
		}), cloud.ReasonNotImage, ""},
		{"wire no user_id", wf(func(f *wire.Frame, m *amqp.Publishing) { m.UserId = "" }), cloud.ReasonIdentity, ""},
		{"wire admin for unmapped device", wf(func(f *wire.Frame, m *amqp.Publishing) { m.Headers[wire.HeaderDevice] = "dev-z" }), cloud.ReasonIdentity, ""},
		{"wire dev-x claims dev-b", wf(func(f *wire.Frame, m *amqp.Publishing) {
			m.UserId = "dev-x"
			m.Headers[wire.HeaderDevice] = "dev-b"
		}), cloud.ReasonIdentity, devURL},
		{"wire dev-x forges requeue header", wf(func(f *wire.Frame, m *amqp.Publishing) {
			m.UserId = "dev-x"
			m.Headers[wire.HeaderDevice] = "dev-b"
			m.Headers[cloud.HeaderUserID] = "dev-b"
		}), cloud.ReasonIdentity, devURL},
		{"wire conflict", func() amqp.Publishing {
			c := makeFrame(t, e.cfg.S3.Prefix, "dev-a", 1, admin)
			c.f.Image = testImage(99999, 8, 8)
			m, _ := wire.Encode(c.f)
			p := publishing(m)
			p.MessageId = c.f.ID
			return p
		}(), cloud.ReasonConflict, ""},
	}
	if len(cases) < 20 {
		t.Fatalf("only %d cases", len(cases))
	}
	// First the frame the conflict case collides with.
	e.publishFrames(t, []frame{stored})
	r := e.start(t, nil)
	waitFor(t, 30*time.Second, "first frame", func() bool {
		return counter(r.reg, "forest_cloud_messages_total", "result", "stored") == 1
	})
	var good []frame
	good = append(good, stored)
	for i, c := range cases {
		g := makeFrame(t, e.cfg.S3.Prefix, "dev-b", 2+i, admin)
		good = append(good, g)
		e.publishFrames(t, []frame{g})
		e.publish(t, c.url, func(int) string { return "frames.dev-a" }, c.pub)
	}
	legacyOK := legacyPub("legacy-ok", legacyBody(testImage(5, 4, 4), "site 1/IMG 0001.jpg"))
	e.publish(t, "", func(int) string { return "frames.legacy" }, legacyOK)
	waitFor(t, 60*time.Second, "all handled", func() bool {
		return counter(r.reg, "forest_cloud_messages_total") == float64(len(good)+len(cases)+1)
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	dls, err := cloud.ListDeadLetters(t.Context(), e.cfg, cloud.DLQOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]cloud.DeadLetter{}
	for _, d := range dls {
		byID[d.MessageID] = d
	}
	for _, c := range cases {
		d, ok := byID[c.pub.MessageId]
		switch {
		case !ok:
			t.Errorf("%s: not in the dead-letter queue", c.name)
		case d.Reason != string(c.reason):
			t.Errorf("%s: reason %q (%s), want %q", c.name, d.Reason, d.Detail, c.reason)
		case d.Detail == "":
			t.Errorf("%s: no detail", c.name)
		}
	}
	if len(dls) != len(cases) {
		t.Errorf("%d dead letters, want %d", len(dls), len(cases))
	}
	for _, c := range cases {
		if d := byID[c.pub.MessageId]; c.url == devURL && d.User != "dev-x" {
			t.Errorf("%s: dead letter records user %q, want dev-x", c.name, d.User)
		}
	}
	// The good frames are all stored, the legacy one as PNG.
	want := expectedKeys(t, e.cfg.S3.Prefix, good)
	got := e.keys(t)
	for k := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("missing %s", k)
		}
	}
	if _, ok := got["legacy/site 1/IMG 0001.png"]; !ok {
		t.Errorf("legacy image not stored: %v", got)
	}
	if len(got) != len(want)+1 {
		t.Errorf("%d objects, want %d", len(got), len(want)+1)
	}
	if n := counter(r.reg, "forest_cloud_dead_letters_total"); n != float64(len(cases)) {
		t.Errorf("dead letters counted %v, want %d", n, len(cases))
	}
}

// TestRequeue dead-letters a frame whose publisher is not yet allowed to
// speak for its device, fixes the mapping, requeues it with the dlq
// command's function and sees it stored.
func TestRequeue(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	e := newEnv(t, nil, "dev-a")
	e.declare(t)
	f := makeFrame(t, e.cfg.S3.Prefix, "dev-new", 1, rabbittest.AdminUser)
	e.publishFrames(t, []frame{f})
	r := e.start(t, nil)
	waitFor(t, 30*time.Second, "dead letter", func() bool {
		return counter(r.reg, "forest_cloud_dead_letters_total", "reason", string(cloud.ReasonIdentity)) == 1
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	cfg := *e.cfg
	cfg.Identity.Devices = map[string][]string{rabbittest.AdminUser: {"dev-a", "dev-new"}}
	n, err := cloud.RequeueDeadLetters(t.Context(), &cfg, cloud.DLQOptions{Reason: string(cloud.ReasonIdentity)})
	if err != nil || n != 1 {
		t.Fatalf("requeued %d: %v", n, err)
	}
	r2 := e.start(t, &cfg)
	waitFor(t, 30*time.Second, "stored after requeue", func() bool {
		return counter(r2.reg, "forest_cloud_messages_total", "result", "stored") == 1
	})
	e.verifyExactlyOnce(t, []frame{f})
	if dls, err := cloud.ListDeadLetters(t.Context(), &cfg, cloud.DLQOptions{}); err != nil || len(dls) != 0 {
		t.Fatalf("dead letters left: %v %v", dls, err)
	}
}

func cloneHeaders(h amqp.Table) map[string]any {
	out := map[string]any{}
	for k, v := range h {
		out[k] = v
	}
	return out
}
