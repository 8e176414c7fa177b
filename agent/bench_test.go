package agent

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/forestwatch/forest/agent/source"
	"github.com/forestwatch/forest/segment"
)

// The agent's per-frame cost against the raw library in the same run:
// BenchmarkFrameRaw is segment.Decode + Model.Segment on a 256×256
// Sentinel-2 tile (what the library alone costs); BenchmarkFramePipeline is
// the whole pipeline for the same tile: decode, segment, JPEG re-encode,
// mask PNG, thumbnail, durable spool Put (fsync) and metrics. The ratio is
// reported in BENCHMARKS.md.

func benchTile(b *testing.B) []byte {
	needModel(b)
	data, err := os.ReadFile(sampleFrames(b)[2])
	if err != nil {
		b.Fatal(err)
	}
	return data
}

func BenchmarkFrameRaw(b *testing.B) {
	data := benchTile(b)
	m, err := segment.Load(modelPath, segment.Options{Threads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	b.ReportAllocs()
	for b.Loop() {
		f, err := segment.Decode(data, 0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := m.Segment(f.Image); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFramePipeline runs the pipeline with the default encoding (a
// WebP quality search for encode.min_ssim, several trial encodes per
// frame) and with the fixed-quality JPEG re-encode that the 1.18× of
// BENCHMARKS.md was first measured with.
func BenchmarkFramePipeline(b *testing.B) {
	data := benchTile(b)
	for _, c := range []struct {
		name string
		enc  EncodeConfig
	}{
		{"default", Default().Encode},
		{"jpeg-q85", EncodeConfig{Mode: "jpeg", Quality: 85}},
	} {
		b.Run(c.name, func(b *testing.B) {
			cfg := testConfig(b)
			cfg.Encode = c.enc
			a, err := New(cfg, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := a.pipe.handle(ctx, &source.Capture{Source: "dir", Name: "tile.png", Data: data, Time: time.Now()}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
