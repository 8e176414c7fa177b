package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forestwatch/forest/agent/source"
	"github.com/forestwatch/forest/internal/exiftest"
	"github.com/forestwatch/forest/segment"
	"github.com/forestwatch/forest/spool"
	"github.com/forestwatch/forest/wire"
)

// exifJPEG re-encodes a sample frame as a JPEG carrying EXIF: camera make
// and model, DateTimeOriginal with OffsetTimeOriginal, and GPS 9°36'18"S
// 59°42'W at 250.5 m.
func exifJPEG(t *testing.T) []byte {
	t.Helper()
	data, _ := os.ReadFile(sampleFrames(t)[1])
	f, err := segment.Decode(data, 0)
	if err != nil {
		t.Fatal(err)
	}
	return exiftest.JPEG(t, f.Image, exiftest.Block(binary.LittleEndian, exiftest.Options{Model: "Mast Cam 2"}))
}

// TestPipelineEXIFToWire follows one frame from capture to the wire: EXIF
// time, GPS and camera travel in the spool's Meta and come out as headers
// that wire.Decode accepts, with the body's and mask's checksums.
func TestPipelineEXIFToWire(t *testing.T) {
	needModel(t)
	cfg := testConfig(t)
	var rep FrameReport
	a, err := New(cfg, Options{Logger: testLogger(t), Report: func(r FrameReport) { rep = r }})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	data := exifJPEG(t)
	if err := a.pipe.handle(context.Background(), &source.Capture{Source: "exec", Name: "cam", Data: data, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	recs, err := a.q.Next(1)
	if err != nil || len(recs) != 1 {
		t.Fatalf("spool: %v %v", recs, err)
	}
	r := recs[0]
	if r.ID != rep.SpoolID || r.Priority != priority(rep.Coverage) {
		t.Fatalf("record id %d prio %d, report %+v", r.ID, r.Priority, rep)
	}
	var m Meta
	if err := json.Unmarshal(r.Meta, &m); err != nil {
		t.Fatal(err)
	}
	d := &drain{agent: "forest-agent/test", user: "dev-user"}
	msg, err := d.message(&r)
	if err != nil {
		t.Fatal(err)
	}
	f, err := wire.Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	wantTime := time.Date(2024, 6, 11, 14, 20, 30, 0, time.UTC)
	if !f.Captured.Equal(wantTime) {
		t.Errorf("captured %s, want %s (EXIF local time at -04:00)", f.Captured, wantTime)
	}
	if f.GPS == nil || math.Abs(f.GPS.Lat-(-(9+36/60.0+18/3600.0))) > 1e-9 || math.Abs(f.GPS.Lon-(-(59+42/60.0))) > 1e-9 || !f.GPS.HasAlt || f.GPS.Alt != 250.5 {
		t.Errorf("GPS %+v", f.GPS)
	}
	if f.Camera == nil || f.Camera.Make != "Forestwatch" || f.Camera.Model != "Mast Cam 2" {
		t.Errorf("camera %+v", f.Camera)
	}
	if f.ID != wire.FrameID("test-dev", r.ID) || f.Seq != r.ID || f.Device != "test-dev" || f.User != "dev-user" || f.Agent != "forest-agent/test" {
		t.Errorf("ids: frame %s seq %d device %s user %s agent %s (spool id %d)", f.ID, f.Seq, f.Device, f.User, f.Agent, r.ID)
	}
	if f.Source != "cam" || f.SourceType != "exec" {
		t.Errorf("source %q of type %q, want cam of type exec", f.Source, f.SourceType)
	}
	if f.ContentType != wire.WebP || f.Width != 256 || f.Height != 256 || f.Coverage != rep.Coverage || f.Model != a.modelID {
		t.Errorf("frame %s %dx%d cov %v model %s", f.ContentType, f.Width, f.Height, f.Coverage, f.Model)
	}
	if msg.Headers[wire.HeaderMaskSHA256] == nil || len(f.Mask) == 0 {
		t.Error("no mask")
	}
}

// TestCoverageFilter checks keep, thin and drop below segment.min_coverage.
func TestCoverageFilter(t *testing.T) {
	needModel(t)
	data, _ := os.ReadFile(sampleFrames(t)[0]) // 0 % forest
	for _, tc := range []struct {
		filter  string
		spooled int
	}{{"keep", 6}, {"thin", 2}, {"drop", 0}} {
		t.Run(tc.filter, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Segment.Filter, cfg.Segment.MinCoverage, cfg.Segment.ThinEvery = tc.filter, 0.5, 4
			a, err := New(cfg, Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			for i := 0; i < 6; i++ {
				if err := a.pipe.handle(context.Background(), &source.Capture{Source: "dir", Name: "bare.png", Data: data}); err != nil {
					t.Fatal(err)
				}
			}
			if st := a.q.Stats(); st.Frames != tc.spooled {
				t.Fatalf("%s: %d frames spooled, want %d", tc.filter, st.Frames, tc.spooled)
			}
		})
	}
}

func TestBadFrameIsTyped(t *testing.T) {
	needModel(t)
	cfg := testConfig(t)
	cfg.Segment.MaxPixels = 1000
	a, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	data, _ := os.ReadFile(sampleFrames(t)[0])
	for _, d := range [][]byte{[]byte("text"), data} { // not an image; more pixels than max_pixels
		if err := a.pipe.handle(context.Background(), &source.Capture{Name: "x", Data: d}); !isBad(err) {
			t.Fatalf("want ErrBadFrame, got %v", err)
		}
	}
}

func isBad(err error) bool { return err != nil && errorsIs(err, ErrBadFrame) }

// TestClockUnsyncedFrames: a frame captured while the clock cannot be
// trusted is marked in its spool record (so max_age spares it) and on the
// wire (clock_synced=false); one captured later, with the clock right, is
// not.
func TestClockUnsyncedFrames(t *testing.T) {
	needModel(t)
	var synced atomic.Bool
	cfg := testConfig(t)
	a, err := New(cfg, Options{Logger: testLogger(t), clockSynced: synced.Load})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	data, _ := os.ReadFile(sampleFrames(t)[0])
	for i, s := range []bool{false, true} {
		synced.Store(s)
		if err := a.pipe.handle(context.Background(), &source.Capture{Source: "dir", Name: fmt.Sprint(i), Data: data, Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := a.q.Next(2)
	if err != nil || len(recs) != 2 {
		t.Fatalf("%d records: %v", len(recs), err)
	}
	d := &drain{agent: "forest-agent/test"}
	for i, r := range recs {
		msg, err := d.message(&r)
		if err != nil {
			t.Fatal(err)
		}
		f, err := wire.Decode(msg)
		if err != nil {
			t.Fatal(err)
		}
		if want := i == 0; r.ClockUnsynced != want || f.ClockUnsynced != want {
			t.Errorf("frame %d: record unsynced %v, wire unsynced %v; want %v", i, r.ClockUnsynced, f.ClockUnsynced, want)
		}
	}
}

// TestAttemptsClearedWhenNotSpooled: a capture the spool refuses for now
// (full of frames of higher priority) is retried as often as it takes; only
// attempts that never ended count towards source.max_attempts.
func TestAttemptsClearedWhenNotSpooled(t *testing.T) {
	needModel(t)
	cfg := testConfig(t)
	cfg.Spool.MaxBytes = 40000
	// Six fixed-quality JPEG tiles (about 7 KB each) fill the spool; the
	// default WebP at SSIM 0.95 makes them a tenth of that.
	cfg.Encode = EncodeConfig{Mode: "jpeg", Quality: 85}
	a, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	forest, _ := os.ReadFile(sampleFrames(t)[3]) // all forest: the highest priority
	bare, _ := os.ReadFile(sampleFrames(t)[0])   // 1 % forest
	for i := range 6 {
		name := fmt.Sprint("forest-", i)
		if err := a.pipe.handle(context.Background(), &source.Capture{Source: "dir", Name: name, Data: forest, Key: name}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 * cfg.Source.MaxAttempts {
		err := a.pipe.handle(context.Background(), &source.Capture{Source: "dir", Name: "bare", Data: bare, Key: "bare"})
		if !errors.Is(err, spool.ErrFull) || errors.Is(err, ErrBadFrame) {
			t.Fatalf("try %d: %v, want the spool's ErrFull, not a given-up frame", i, err)
		}
	}
}

// TestPixelSize: segment.pixel_size_m reaches the model, so a frame finer
// than the aerial model's range (0.1-0.4 m) is resampled into it before
// segmentation, and one inside the range, or of unknown size, is not.
func TestPixelSize(t *testing.T) {
	needModel(t)
	img := image.NewRGBA(image.Rect(0, 0, 600, 400))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ px, scale float64 }{{0, 1}, {0.25, 1}, {0.02, 0.2}} {
		cfg := testConfig(t)
		cfg.Segment.Model = filepath.Join("..", "segment", "models", "canopy-aerial-v1.onnx")
		cfg.Segment.PixelSize = tc.px
		var got FrameReport
		a, err := New(cfg, Options{Logger: testLogger(t), Report: func(r FrameReport) { got = r }})
		if err != nil {
			t.Fatal(err)
		}
		err = a.pipe.handle(context.Background(), &source.Capture{Source: "dir", Name: "f.png", Data: buf.Bytes()})
		a.Close()
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(got.Scale-tc.scale) > 0.01 || got.Width != 600 {
			t.Errorf("pixel_size_m %v: scale %v (frame %dx%d), want %v at 600x400", tc.px, got.Scale, got.Width, got.Height, tc.scale)
		}
	}
}
