package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	_ "image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/disintegration/imaging"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/exiftest"
)

// TestCameraFrames sends what drone and mast cameras really produce through
// the whole chain, with the real broker at its default frame_max (128 KiB):
//
//   - a 4000×3000 aerial frame whose mask is fragmented (hundreds of KB of
//     PNG, more than an AMQP header may hold): delivered and stored;
//   - the same scene as camera JPEGs with each of the 8 EXIF orientations,
//     sent with encode.mode keep: every stored image has its mask's size
//     and the mask lies on the stored pixels as a reader that ignores EXIF
//     sees them.
//
// The model is segment/testdata/tiny.onnx (forest exactly where green >
// 127.5), tiled, so the expected mask is known pixel for pixel.
func TestCameraFrames(t *testing.T) {
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	tile := filepath.Join(root, "..", "shared", "data", "aerial-trees", "oam-tcd-640", "images", "0001.jpg")
	if _, err := os.Stat(tile); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("shared data missing: %v", err)
		}
		t.Skipf("shared data missing: %v", err)
	}
	s := newStack(t, []AgentOptions{{Device: "drone-1", Model: filepath.Join(root, "segment", "testdata", "tiny.onnx"), Tiling: "tile"}}, "")
	src, err := imaging.Open(tile)
	if err != nil {
		t.Fatal(err)
	}
	a := s.Agents[0]

	// 4000×3000: the 640² OAM-TCD tile repeated.
	big := image.NewNRGBA(image.Rect(0, 0, 4000, 3000))
	for y := 0; y < 3000; y += 640 {
		for x := 0; x < 4000; x += 640 {
			big = imaging.Paste(big, src, image.Pt(x, y))
		}
	}
	var jb bytes.Buffer
	if err := jpeg.Encode(&jb, big, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	if _, err := Drop(a.Incoming, "DJI_0042.JPG", jb.Bytes()); err != nil {
		t.Fatal(err)
	}

	// The orientations: a 96×64 upright scene, stored the way a camera
	// with each orientation stores it.
	upright := imaging.Fill(src, 96, 64, imaging.Center, imaging.Box)
	stored := map[int]image.Image{
		1: upright, 2: imaging.FlipH(upright), 3: imaging.Rotate180(upright), 4: imaging.FlipV(upright),
		5: imaging.Transpose(upright), 6: imaging.Rotate90(upright), 7: imaging.Transverse(upright), 8: imaging.Rotate270(upright),
	}
	for o := 1; o <= 8; o++ {
		b := exiftest.JPEG(t, stored[o], exiftest.Block(binary.BigEndian, exiftest.Options{Orientation: uint16(o)}))
		if _, err := Drop(a.Incoming, fmt.Sprintf("orient-%d.jpg", o), b); err != nil {
			t.Fatal(err)
		}
	}

	if !waitDrained(t, s, 3*time.Minute) {
		t.Fatal("not drained")
	}
	ctx := context.Background()
	frames, err := StoredFrames(ctx, s.S3.Client(), s.Bucket, "frames/")
	if err != nil {
		t.Fatal(err)
	}
	bySource := map[string]Stored{}
	var sources []string
	for _, st := range frames {
		for _, p := range st.Problems {
			t.Errorf("%s: %s", st.Sidecar, p)
		}
		bySource[st.Source] = st
		sources = append(sources, st.Source)
	}
	if len(frames) != 9 {
		t.Fatalf("%d frames stored, want 9: %v", len(frames), sources)
	}
	get := func(key string) []byte {
		t.Helper()
		b, err := get(ctx, s.S3.Client(), s.Bucket, key)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	st := bySource["dir:DJI_0042.JPG"]
	var sc cloud.Sidecar
	if err := json.Unmarshal(get(st.Sidecar), &sc); err != nil {
		t.Fatal(err)
	}
	if sc.Width != 4000 || sc.Height != 3000 || sc.Mask == nil || sc.Mask.Bytes <= 128<<10 {
		t.Fatalf("4000×3000 frame stored as %d×%d with a mask of %v bytes; want a mask over 128 KiB", sc.Width, sc.Height, sc.Mask)
	}
	t.Logf("4000×3000 frame: image %d bytes, fragmented mask %d bytes, coverage %.3f", sc.Image.Bytes, sc.Mask.Bytes, sc.Coverage)

	for o := 1; o <= 8; o++ {
		st, ok := bySource[fmt.Sprintf("dir:orient-%d.jpg", o)]
		if !ok {
			t.Errorf("orientation %d: not stored", o)
			continue
		}
		img, _, err := image.Decode(bytes.NewReader(get(st.ImageKey)))
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := image.Decode(bytes.NewReader(get(st.MaskKey)))
		if err != nil {
			t.Fatal(err)
		}
		if img.Bounds() != m.Bounds() || img.Bounds() != image.Rect(0, 0, 96, 64) {
			t.Errorf("orientation %d: image %v, mask %v; want both upright 96×64", o, img.Bounds(), m.Bounds())
			continue
		}
		// The mask is the green threshold of the pixels as stored, bar
		// JPEG's rounding near 127.
		agree := 0
		for y := 0; y < 64; y++ {
			for x := 0; x < 96; x++ {
				g := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA).G
				forest := color.GrayModel.Convert(m.At(x, y)).(color.Gray).Y > 127
				if forest == (g > 127) || g > 117 && g < 137 {
					agree++
				}
			}
		}
		if agree < 96*64*99/100 {
			t.Errorf("orientation %d: the mask agrees with the stored pixels on %d of %d pixels", o, agree, 96*64)
		}
	}
}
