// Command benchframe writes a large frame of real imagery for benchmarks: a
// JPEG or PNG tile mirrored edge to edge to the requested size, as segment's
// BenchmarkSegmentAerial builds its frames from the same held-out aerial tile
// (so the frame has the tile's content and scale, not a stretched copy).
// firmware/qemu-check.sh --bench uses it for the 2048×2048 frame it times
// natively and under qemu arm64; the frame is written at run time, never
// committed.
//
//	go run ./internal/benchframe -size 2048x2048 -o frame.png segment/testdata/aerial/oam-tcd-0002.jpg
package main

import (
	"flag"
	"fmt"
	"image"
	"image/draw"
	_ "image/jpeg"
	"image/png"
	"os"
)

func main() {
	size := flag.String("size", "2048x2048", "frame `WxH` in pixels")
	out := flag.String("o", "", "PNG `file` to write")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "Usage: benchframe [-size WxH] -o FRAME.png TILE.jpg|TILE.png")
		flag.PrintDefaults()
	}
	flag.Parse()
	var w, h int
	if _, err := fmt.Sscanf(*size, "%dx%d", &w, &h); err != nil || w <= 0 || h <= 0 {
		fail(fmt.Errorf("-size %q: want WxH, both > 0", *size))
	}
	if *out == "" || flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *out, w, h); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "benchframe: %v\n", err)
	os.Exit(1)
}

func run(tilePath, outPath string, w, h int) error {
	f, err := os.Open(tilePath)
	if err != nil {
		return err
	}
	src, _, err := image.Decode(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("decode %s: %w", tilePath, err)
	}
	tile := image.NewNRGBA(image.Rect(0, 0, src.Bounds().Dx(), src.Bounds().Dy()))
	draw.Draw(tile, tile.Rect, src, src.Bounds().Min, draw.Src)
	frame := mirrorTile(tile, w, h)
	o, err := os.Create(outPath)
	if err != nil {
		return err
	}
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(o, frame); err != nil {
		o.Close()
		return fmt.Errorf("write %s: %w", outPath, err)
	}
	return o.Close()
}

// mirrorTile returns a w×h frame tiled with tile, every other copy mirrored so
// that no edge jumps (pixel x of the frame is tile pixel x, then tw-1-(x-tw),
// and so on).
func mirrorTile(tile *image.NRGBA, w, h int) *image.NRGBA {
	tw, th := tile.Rect.Dx(), tile.Rect.Dy()
	frame := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		row := tile.Pix[mirror(y, th)*tile.Stride:]
		for x := 0; x < w; x++ {
			copy(frame.Pix[y*frame.Stride+4*x:][:4], row[4*mirror(x, tw):])
		}
	}
	return frame
}

// mirror maps c to [0, n) reflecting at both ends: 0..n-1, n-1..0, 0..
func mirror(c, n int) int {
	p := c % (2 * n)
	if p >= n {
		p = 2*n - 1 - p
	}
	return p
}
