// Package benchframe builds large benchmark frames of real imagery from one
// tile, mirrored edge to edge, so that a frame has the tile's content and
// scale rather than a stretched copy. segment's BenchmarkSegmentAerial and
// the benchframe command (for firmware/qemu-check.sh --bench) use it, so
// both time the same pixels.
package benchframe

import (
	"image"
	"image/draw"
)

// Mirrored returns a w×h frame tiled with tile, every other copy mirrored so
// that no edge jumps (pixel x of the frame is tile pixel x, then tw-1-(x-tw),
// and so on).
func Mirrored(tile image.Image, w, h int) *image.NRGBA {
	t := image.NewNRGBA(image.Rect(0, 0, tile.Bounds().Dx(), tile.Bounds().Dy()))
	draw.Draw(t, t.Rect, tile, tile.Bounds().Min, draw.Src)
	tw, th := t.Rect.Dx(), t.Rect.Dy()
	frame := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		row := t.Pix[mirror(y, th)*t.Stride:]
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
