package e2e

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"os"
	"path/filepath"
	"sort"

	"github.com/disintegration/imaging"

	"github.com/forestwatch/forest/wire"
)

// Frames makes a stream of distinct JPEG frames from the agent's real
// sample images (the four Sentinel-2 tiles and the NEON BLAN frame of
// agent/testdata/frames): frame i is sample i mod n, scaled
// to size×size, with i stamped into its first pixel row so that every frame
// has its own bytes and SHA-256.
type Frames struct {
	samples []*image.NRGBA
}

// LoadFrames reads the sample images under root/agent/testdata/frames.
func LoadFrames(root string, size int) (*Frames, error) {
	dir := filepath.Join(root, "agent", "testdata", "frames")
	paths, err := filepath.Glob(filepath.Join(dir, "satellite", "*.png"))
	if err != nil {
		return nil, err
	}
	if len(paths) != 4 {
		return nil, fmt.Errorf("want the 4 satellite sample tiles under %s, found %d", dir, len(paths))
	}
	sort.Strings(paths)
	paths = append(paths, filepath.Join(dir, "aerial", "neon_BLAN_3_751000_4330000_crop.jpg"))
	f := &Frames{}
	for _, p := range paths {
		img, err := imaging.Open(p)
		if err != nil {
			return nil, fmt.Errorf("sample frame: %w", err)
		}
		f.samples = append(f.samples, imaging.Fill(img, size, size, imaging.Center, imaging.Box))
	}
	return f, nil
}

// Frame returns the JPEG bytes of frame i.
func (f *Frames) Frame(i int) ([]byte, error) {
	src := f.samples[i%len(f.samples)]
	img := image.NewNRGBA(src.Bounds())
	draw.Draw(img, img.Bounds(), src, image.Point{}, draw.Src)
	for b := 0; b < 32; b++ {
		v := uint8(0)
		if i>>b&1 == 1 {
			v = 255
		}
		for x := b * 4; x < b*4+4; x++ {
			for y := 0; y < 4; y++ {
				img.Set(x, y, color.NRGBA{v, v, v, 255})
			}
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Drop writes frame bytes into dir as name atomically (temporary dot file,
// then rename), as a camera tool should, and returns its hex SHA-256.
func Drop(dir, name string, b []byte) (string, error) {
	tmp := filepath.Join(dir, "."+name+".part")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return "", err
	}
	return wire.Sum(b), nil
}
