package cloud_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/rabbittest"

	"github.com/forestwatch/forest/cloud"
)

// TestStoreFrames stores frames end to end, then publishes them again: the
// redeliveries are acknowledged as duplicates and nothing is stored twice.
func TestStoreFrames(t *testing.T) {
	e := newEnv(t, nil)
	noLeaks(t)
	var frames []frame
	for i := range 20 {
		frames = append(frames, makeFrame(t, e.cfg.S3.Prefix, []string{"dev-a", "dev-b"}[i%2], i, rabbittest.AdminUser))
	}
	e.declare(t)
	e.publishFrames(t, frames)
	r := e.start(t, nil)
	waitFor(t, 30*time.Second, "20 frames stored", func() bool {
		return counter(r.reg, "forest_cloud_messages_total", "result", "stored") == 20
	})
	e.verifyExactlyOnce(t, frames)
	var sc cloud.Sidecar
	keys, _ := cloud.KeysFor(e.cfg.S3.Prefix, "dev-a", frames[0].f.ID, frames[0].f.Captured, frames[0].f.ContentType)
	if err := json.Unmarshal(e.get(t, keys.Sidecar), &sc); err != nil {
		t.Fatal(err)
	}
	if sc.Device != "dev-a" || sc.Image.Key != keys.Image || sc.Mask == nil || sc.GPS == nil || sc.ReceivedAt.IsZero() {
		t.Errorf("sidecar %+v", sc)
	}
	e.publishFrames(t, frames[:10])
	waitFor(t, 30*time.Second, "10 duplicates", func() bool {
		return counter(r.reg, "forest_cloud_messages_total", "result", "duplicate") == 10
	})
	if n := counter(r.reg, "forest_cloud_dead_letters_total"); n != 0 {
		t.Errorf("%v dead letters", n)
	}
	e.verifyExactlyOnce(t, frames)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}
