// Command benchframe writes a large frame of real imagery for benchmarks: a
// JPEG or PNG tile mirrored edge to edge to the requested size
// (benchframe.Mirrored), as segment's BenchmarkSegmentAerial builds its
// frames from the same held-out aerial tile.
// firmware/qemu-check.sh --bench uses it for the 2048×2048 frame it times
// natively and under qemu arm64; the frame is written at run time, never
// committed.
//
//	go run ./internal/benchframe/cmd/benchframe -size 2048x2048 -o frame.png segment/testdata/aerial/oam-tcd-0002.jpg
package main

import (
	"flag"
	"fmt"
	"image"
	_ "image/jpeg"
	"image/png"
	"os"

	"github.com/forestwatch/forest/internal/benchframe"
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
	frame := benchframe.Mirrored(src, w, h)
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
