package cloud_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/forestwatch/forest/cloud"
)

// TestLegacyStored runs the consumer on legacy messages from old devices
// under each storage setting: by default a JPEG is stored as sent, under
// its name with .jpg, as image/jpeg, with the SHA-256 that S3 checked; with
// legacy.format png and legacy.key name, under a prefix of its own, it is a
// PNG of the same pixels under the image_name exactly as sent (the old
// service's layout). A redelivery of either finds its object stored.
func TestLegacyStored(t *testing.T) {
	t.Parallel()
	jpg := jpegOf(t, 4, 64, 48)
	pngImg := testImage(6, 8, 8)
	msgs := []struct {
		name string
		img  []byte
	}{{"site 1/IMG 0001.jpeg", jpg}, {"site 1/map.png", pngImg}}
	type object struct{ key, contentType string }
	for _, c := range []struct {
		name, format, key, prefix string
		want                      []object // by message
	}{
		{"default", "", "", "", []object{{"legacy/site 1/IMG 0001.jpg", "image/jpeg"}, {"legacy/site 1/map.png", "image/png"}}},
		{"old layout", cloud.LegacyPNG, cloud.LegacyKeyName, "greench", []object{{"greench/site 1/IMG 0001.jpeg", "image/png"}, {"greench/site 1/map.png", "image/png"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.declare(t)
			cfg := *e.cfg
			if c.format != "" {
				cfg.Legacy.Format, cfg.Legacy.Key = c.format, c.key
				cfg.S3.LegacyPrefix = c.prefix
			}
			publishAll := func() {
				for _, m := range msgs {
					e.publish(t, "", func(int) string { return "frames.legacy" }, legacyPub(m.name, legacyBody(m.img, m.name)))
				}
			}
			publishAll()
			publishAll() // the redelivery of a device that never saw its ack
			r := e.start(t, &cfg)
			waitFor(t, 30*time.Second, "legacy messages handled", func() bool {
				return counter(r.reg, "forest_cloud_messages_total") == 4
			})
			if n := counter(r.reg, "forest_cloud_messages_total", "result", "duplicate"); n != 2 {
				t.Errorf("%v duplicates, want 2", n)
			}
			if err := r.stop(); err != nil {
				t.Fatal(err)
			}
			got := e.keys(t)
			if len(got) != len(c.want) {
				t.Errorf("objects %v, want %v", got, c.want)
			}
			for i, m := range msgs {
				key := c.want[i].key
				out, err := e.s3.Client().GetObject(context.Background(), &s3.GetObjectInput{
					Bucket: aws.String(e.bucket), Key: aws.String(key), ChecksumMode: types.ChecksumModeEnabled})
				if err != nil {
					t.Fatalf("%s: %v", key, err)
				}
				body := new(bytes.Buffer)
				_, _ = body.ReadFrom(out.Body)
				out.Body.Close()
				if ct := aws.ToString(out.ContentType); ct != c.want[i].contentType {
					t.Errorf("%s: content type %q, want %q", key, ct, c.want[i].contentType)
				}
				sum := sha256.Sum256(body.Bytes())
				if s := aws.ToString(out.ChecksumSHA256); s != base64.StdEncoding.EncodeToString(sum[:]) {
					t.Errorf("%s: stored SHA-256 %q does not match its bytes", key, s)
				}
				switch {
				case c.format != cloud.LegacyPNG || m.name == "site 1/map.png":
					if !bytes.Equal(body.Bytes(), m.img) {
						t.Errorf("%s: not the bytes the device sent", key)
					}
				default:
					samePixels(t, m.img, body.Bytes())
				}
			}
		})
	}
}
