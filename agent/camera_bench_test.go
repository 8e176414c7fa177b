package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"image/jpeg"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/forestwatch/forest/agent/encode"
	"github.com/forestwatch/forest/agent/source"
	"github.com/forestwatch/forest/internal/procstat"
	"github.com/forestwatch/forest/segment"
	"github.com/forestwatch/forest/uplink"
	"github.com/forestwatch/forest/wire"
)

// cameraJPEGs lists the camera JPEGs of the shared data set, each at its
// native quality: the NEON crop (quality 95) and the aerial-trees tiles
// (Montseny orthophoto patches, quality 95; OAM-TCD tiles, quality 90).
func cameraJPEGs(t *testing.T) []string {
	var files []string
	for _, g := range []string{"neon-tree-crowns/*.jpg", "aerial-trees/*/images/*.jpg"} {
		m, _ := filepath.Glob(filepath.Join(sharedData(), g))
		files = append(files, m...)
	}
	return files
}

// TestCameraWire is the camera-JPEG benchmark of issue 19 (make bench;
// skipped unless FOREST_BENCH_CAMERA is set, as it takes minutes). Every
// camera JPEG of the shared data set goes through the real pipeline —
// decode, the shipped model, encode, mask, durable spool Put — and the
// drain's message building; the bytes sent are what that wire message puts
// on the link (uplink.Size: image, mask, headers, properties and AMQP
// framing), divided by the legacy message's body (the base64 JSON of the
// same camera JPEG, as cloud/legacy.go reads it). The transmitted image,
// decoded as a reader does, must reach SSIM ≥ 0.95 against the upright
// decoded camera frame. The encode CPU of each frame (the pipeline's
// encode step, its quality search included) is reported as a ratio to a
// plain jpeg.Encode (default options) of the same frame.
//
// Bar (default settings): median ≤ 0.40, max ≤ 0.55, every SSIM ≥ 0.95.
// Mode jpeg is measured too, for comparison, without a bar.
func TestCameraWire(t *testing.T) {
	if os.Getenv("FOREST_BENCH_CAMERA") == "" {
		t.Skip("set FOREST_BENCH_CAMERA=1 (make bench) to run the camera-JPEG benchmark")
	}
	needModel(t)
	files := cameraJPEGs(t)
	if len(files) == 0 {
		t.Fatalf("no camera JPEGs under %s (set FOREST_SHARED_DATA)", sharedData())
	}
	for _, mode := range []string{"auto", "jpeg"} {
		t.Run(mode, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Encode.Mode = mode
			a, err := New(cfg, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			var encCPU time.Duration
			a.pipe.hook = func(stage string) {
				switch stage {
				case "encode":
					encCPU = procstat.ProcessCPU()
				case "encoded":
					encCPU = procstat.ProcessCPU() - encCPU
				}
			}
			d := &drain{agent: "forest-agent/" + Version, user: "dev-user"}
			type row struct {
				set              string
				ratio, ssim, cpu float64
			}
			var rows []row
			for _, f := range files {
				raw, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				name := filepath.Base(f)
				if err := a.pipe.handle(context.Background(), &source.Capture{Source: "dir", Name: name, Data: raw, Time: time.Now()}); err != nil {
					t.Fatal(err)
				}
				recs, err := a.q.Next(1)
				if err != nil || len(recs) != 1 {
					t.Fatalf("%s: spooled record: %v %v", name, recs, err)
				}
				msg, err := d.message(&recs[0])
				if err != nil {
					t.Fatal(err)
				}
				if err := a.q.Ack(recs[0].ID); err != nil {
					t.Fatal(err)
				}
				sent := uplink.Size(&msg, cfg.Uplink.Exchange, "frames."+cfg.Device.ID)
				legacy, _ := json.Marshal(map[string]any{"image": raw, "image_metadata": map[string]any{"image_name": name}})
				fr, err := segment.Decode(raw, 0)
				if err != nil {
					t.Fatal(err)
				}
				wf, err := wire.Decode(msg)
				if err != nil {
					t.Fatal(err)
				}
				ssim, err := encode.Measure(fr.Image, wf.Image, wf.ContentType)
				if err != nil {
					t.Fatal(err)
				}
				c0 := procstat.ProcessCPU()
				if err := jpeg.Encode(&bytes.Buffer{}, encode.Opaque(fr.Image), nil); err != nil {
					t.Fatal(err)
				}
				plain := procstat.ProcessCPU() - c0
				set := filepath.Base(filepath.Dir(filepath.Dir(f)))
				if strings.Contains(f, "neon") {
					set = "neon"
				}
				r := row{set: set, ratio: float64(sent) / float64(len(legacy)), ssim: ssim, cpu: float64(encCPU) / float64(max(plain, time.Microsecond))}
				rows = append(rows, r)
				t.Logf("%-14s %s %4dx%-4d camera %7d B → sent %7d B (%s %d B, mask %d B) = %.3f× legacy %7d B, SSIM %.4f, encode CPU %.1f× jpeg.Encode",
					set, name, fr.Width, fr.Height, len(raw), sent, wf.ContentType, len(wf.Image), len(wf.Mask), r.ratio, len(legacy), ssim, r.cpu)
				if mode == "auto" && ssim < 0.95 {
					t.Errorf("%s: SSIM %.4f < 0.95", name, ssim)
				}
			}
			summary := func(label string, rs []row) {
				pick := func(f func(row) float64) []float64 {
					var v []float64
					for _, r := range rs {
						v = append(v, f(r))
					}
					slices.Sort(v)
					return v
				}
				ratio, ssim, cpu := pick(func(r row) float64 { return r.ratio }), pick(func(r row) float64 { return r.ssim }), pick(func(r row) float64 { return r.cpu })
				med := func(v []float64) float64 {
					if len(v)%2 == 1 {
						return v[len(v)/2]
					}
					return (v[len(v)/2-1] + v[len(v)/2]) / 2
				}
				t.Logf("mode %s, %-14s %2d frames: sent/legacy median %.3f max %.3f; SSIM min %.4f median %.4f; encode CPU / jpeg.Encode median %.1f× (%.1f–%.1f×)",
					mode, label, len(rs), med(ratio), ratio[len(ratio)-1], ssim[0], med(ssim), med(cpu), cpu[0], cpu[len(cpu)-1])
				if mode == "auto" && label == "all" && (med(ratio) > 0.40 || ratio[len(ratio)-1] > 0.55) {
					t.Errorf("sent/legacy median %.3f (bar 0.40), max %.3f (bar 0.55)", med(ratio), ratio[len(ratio)-1])
				}
			}
			for _, set := range []string{"neon", "montseny-25cm", "oam-tcd-640"} {
				var rs []row
				for _, r := range rows {
					if r.set == set {
						rs = append(rs, r)
					}
				}
				if len(rs) > 0 {
					summary(set, rs)
				}
			}
			summary("all", rows)
		})
	}
}
