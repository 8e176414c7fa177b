package segment

import (
	"fmt"
	"image"
	"math"
	"time"
)

// Tiling (Auto and Tile modes).
//
// Windows of the model's input size are laid out over the frame (or over the frame
// resampled by its pixel size) with at least TileOverlap pixels of overlap, and mirrored past
// the frame's edges when it is smaller than the input. Each window's scores are weighted
// by a separable weight that ramps linearly from near 0 at a window edge shared with a
// neighbour to 1 after TileOverlap pixels, normalised so that the weights of all windows
// covering a pixel sum to 1, and accumulated. Scores of windows that agree blend into the
// same score, so a mask has no seams; where they disagree the blend moves smoothly from one
// to the other, and a window's edge pixels, whose context is cut off, weigh least.
//
// Memory: windows run row by row, and the weighted sums are kept for one band of the
// model's input height across the frame (4 bytes per pixel of band). When a row of windows
// is done, the band rows no later window touches are thresholded straight into the mask
// and the band moves down. No score map of the whole frame is held, unless the frame was
// resampled by its pixel size: then the scores are kept at model scale (4 bytes per
// resampled pixel, a sixteenth of the frame's pixels when it is shrunk by 4) and
// interpolated onto the frame's mask at the end.

// tiler holds the reusable buffers of tiled segmentation.
type tiler struct {
	band    []float32 // weighted score sums, model-height rows across the (padded) frame
	scaled  []byte    // the frame resampled by pixel size, packed RGB
	sscore  []float32 // scores at model scale when resampled
	rowTmp  []float32 // resampling scratch
	rowTags []int
	colIdx  []int // source byte offset of each window column when mirroring
	wx, wy  axisCache
}

type axisCache struct {
	l, t, o int
	pos     []int
	w       [][]float32
}

func (c *axisCache) get(l, t, o int) ([]int, [][]float32) {
	if c.pos == nil || c.l != l || c.t != t || c.o != o {
		c.l, c.t, c.o = l, t, o
		c.pos = tilePositions(l, t, o)
		c.w = axisWeights(c.pos, t, o)
	}
	return c.pos, c.w
}

// tilePositions returns the origins of windows of size t covering length l, evenly spaced
// with at least o pixels of overlap (one window when l <= t).
func tilePositions(l, t, o int) []int {
	if l <= t {
		return []int{0}
	}
	if o >= t {
		o = t - 1
	}
	n := max(2, (l-o+(t-o)-1)/(t-o))
	pos := make([]int, n)
	for i := range pos {
		pos[i] = int(math.Floor(float64(i)*float64(l-t)/float64(n-1) + 0.5))
	}
	return pos
}

// axisWeights returns, for each window at pos (size t), its blending weight at each of its
// t pixels along one axis: min(1, distance to each edge it shares with another window / o),
// measured from pixel centres, then normalised so the weights at every position of the
// axis sum to 1.
func axisWeights(pos []int, t, o int) [][]float32 {
	o = max(o, 1)
	raw := make([][]float64, len(pos))
	tot := make([]float64, pos[len(pos)-1]+t)
	for i, p := range pos {
		r := make([]float64, t)
		for x := range r {
			c := float64(x) + 0.5
			v := 1.0
			if i > 0 {
				v = min(v, c/float64(o))
			}
			if i < len(pos)-1 {
				v = min(v, (float64(t)-c)/float64(o))
			}
			r[x] = v
			tot[p+x] += v
		}
		raw[i] = r
	}
	out := make([][]float32, len(pos))
	for i, p := range pos {
		out[i] = make([]float32, t)
		for x, v := range raw[i] {
			out[i][x] = float32(v / tot[p+x])
		}
	}
	return out
}

// mirror maps a coordinate of the padded axis onto 0..n-1, reflecting at the edges with the
// edge pixel repeated (…2 1 0 | 0 1 2 … n-1 | n-1 n-2 …).
func mirror(c, n int) int {
	p := c % (2 * n)
	if p >= n {
		p = 2*n - 1 - p
	}
	return p
}

// segmentTiles segments src (fw×fh) window by window, at scale s of the frame (see tiler),
// writes the mask into res and returns its forest pixel count.
func (m *Model) segmentTiles(src pixels, fw, fh int, s float64, res *Result) (int, error) {
	t := &m.tiles
	mw, mh := m.info.Width, m.info.Height
	sw, sh := fw, fh
	tp := time.Now()
	if s != 1 {
		sw, sh = max(1, int(math.Round(float64(fw)*s))), max(1, int(math.Round(float64(fh)*s)))
		t.scaled = t.resample(src, m.kx.get(fw, sw), m.ky.get(fh, sh), t.scaled)
		src = pixels{pix: t.scaled, stride: sw * 3, bpp: 3}
	}
	res.Preprocess += time.Since(tp)
	ov := m.opts.TileOverlap
	if ov == 0 {
		ov = min(mw, mh) / 8
	}
	vw, vh := max(sw, mw), max(sh, mh) // the frame mirror-padded to at least the model's size
	xs, wx := t.wx.get(vw, mw, ov)
	ys, wy := t.wy.get(vh, mh, ov)
	if cap(t.band) < vw*mh {
		t.band = make([]float32, vw*mh)
	}
	band := t.band[:vw*mh]
	clear(band)
	var sscore []float32
	if s != 1 {
		if cap(t.sscore) < sw*sh {
			t.sscore = make([]float32, sw*sh)
		}
		sscore = t.sscore[:sw*sh]
	}
	mask := res.Mask
	count := 0
	for j, y0 := range ys {
		for i, x0 := range xs {
			t0 := time.Now()
			if x0+mw <= sw && y0+mh <= sh {
				copyRGB(src, x0, y0, mw, mh, m.planes, m.ch, &m.lut)
			} else {
				t.copyMirrored(src, sw, sh, x0, y0, mw, mh, m.planes, m.ch, &m.lut)
			}
			t1 := time.Now()
			if err := m.sess.Run(); err != nil {
				return 0, fmt.Errorf("segment: run model on window %d,%d: %w", x0, y0, err)
			}
			t2 := time.Now()
			score := m.scorePlane()
			wxi := wx[i]
			for yy := 0; yy < mh; yy++ {
				wv := wy[j][yy]
				srow := score[yy*mw : (yy+1)*mw]
				brow := band[yy*vw+x0 : yy*vw+x0+mw]
				for xx, v := range srow {
					brow[xx] += wv * wxi[xx] * v
				}
			}
			res.Preprocess += t1.Sub(t0)
			res.Inference += t2.Sub(t1)
			res.Postprocess += time.Since(t2)
			res.Runs++
		}
		// Rows above the next row of windows are final: threshold (or keep) them and move
		// the band down.
		t0 := time.Now()
		next := vh
		if j+1 < len(ys) {
			next = ys[j+1]
		}
		for y := y0; y < min(next, sh); y++ {
			brow := band[(y-y0)*vw : (y-y0)*vw+sw]
			if sscore != nil {
				copy(sscore[y*sw:(y+1)*sw], brow)
			} else {
				count += thresholdRect(brow, sw, m.tau, mask.Pix[y*mask.Stride:], mask.Stride, sw, 1)
			}
		}
		d := next - y0
		copy(band, band[d*vw:])
		clear(band[max(0, mh-d)*vw:])
		res.Postprocess += time.Since(t0)
	}
	if sscore != nil {
		t0 := time.Now()
		count, m.side = maskFromScore(sscore, sw, sh, m.tau, mask.Pix, fw, fh, mask.Stride,
			m.mx.get(sw, fw), m.my.get(sh, fh), m.side)
		res.Postprocess += time.Since(t0)
	}
	return count, nil
}

// copyMirrored is copyRGB for a window that reaches past the frame (sw×sh): coordinates
// outside it are mirrored back in.
func (t *tiler) copyMirrored(src pixels, sw, sh, x0, y0, w, h int, planes [3][]float32, ch [3]int, lut *[3][256]float32) {
	if cap(t.colIdx) < w {
		t.colIdx = make([]int, w)
	}
	cols := t.colIdx[:w]
	for x := range cols {
		cols[x] = mirror(x0+x, sw) * src.bpp
	}
	l0, l1, l2 := &lut[0], &lut[1], &lut[2]
	c0, c1, c2 := ch[0], ch[1], ch[2]
	for y := 0; y < h; y++ {
		row := src.row(mirror(y0+y, sh))
		o := y * w
		d0, d1, d2 := planes[0][o:o+w], planes[1][o:o+w], planes[2][o:o+w]
		for x, c := range cols {
			s := row[c : c+3]
			d0[x] = l0[s[c0]]
			d1[x] = l1[s[c1]]
			d2[x] = l2[s[c2]]
		}
	}
}

// resample resizes src (kx.src×ky.src) to kx.dst×ky.dst packed 8-bit RGB in dst (grown as
// needed), with the area (shrinking) or bilinear (enlarging) kernels. It works one output
// row at a time and keeps only the source rows that row needs, filtered horizontally, so
// its scratch space is a few rows, not a frame.
func (t *tiler) resample(src pixels, kx, ky *kernel, dst []byte) []byte {
	dw, dh := kx.dst, ky.dst
	if cap(dst) < dw*dh*3 {
		dst = make([]byte, dw*dh*3)
	}
	dst = dst[:dw*dh*3]
	k := ky.k
	if cap(t.rowTmp) < k*dw*3 {
		t.rowTmp = make([]float32, k*dw*3)
	}
	rows := t.rowTmp[:k*dw*3]
	if cap(t.rowTags) < k {
		t.rowTags = make([]int, k)
	}
	tags := t.rowTags[:k]
	for i := range tags {
		tags[i] = -1
	}
	var acc [3]float32
	for y := 0; y < dh; y++ {
		idx := ky.idx[y*k : (y+1)*k]
		wts := ky.w[y*k : (y+1)*k]
		// Taps of one output row are consecutive source rows, so row j can live in slot j%k.
		for _, j := range idx {
			slot := int(j) % k
			if tags[slot] == int(j) {
				continue
			}
			tags[slot] = int(j)
			hrow := rows[slot*dw*3 : (slot+1)*dw*3]
			srow := src.row(int(j))
			for x := 0; x < dw; x++ {
				var r, g, b float32
				for u := 0; u < kx.k; u++ {
					wt := kx.w[x*kx.k+u]
					if wt == 0 {
						continue
					}
					p := srow[int(kx.idx[x*kx.k+u])*src.bpp:]
					r += wt * float32(p[0])
					g += wt * float32(p[1])
					b += wt * float32(p[2])
				}
				hrow[3*x], hrow[3*x+1], hrow[3*x+2] = r, g, b
			}
		}
		out := dst[y*dw*3 : (y+1)*dw*3]
		for x := 0; x < dw; x++ {
			acc = [3]float32{}
			for u, j := range idx {
				wt := wts[u]
				if wt == 0 {
					continue
				}
				h := rows[(int(j)%k)*dw*3+3*x:]
				acc[0] += wt * h[0]
				acc[1] += wt * h[1]
				acc[2] += wt * h[2]
			}
			out[3*x] = clamp8(acc[0])
			out[3*x+1] = clamp8(acc[1])
			out[3*x+2] = clamp8(acc[2])
		}
	}
	return dst
}

func clamp8(v float32) byte {
	switch {
	case v <= 0:
		return 0
	case v >= 255:
		return 255
	}
	return byte(v + 0.5)
}

// noData reports whether a pixel is no data: pure black or white (all three samples <= 2 or
// >= 253, the borders of orthomosaics and scanned frames), or fully transparent.
func noData(p []byte, bpp int) bool {
	if bpp == 4 && p[3] == 0 {
		return true
	}
	r, g, b := p[0], p[1], p[2]
	return (r <= 2 && g <= 2 && b <= 2) || (r >= 253 && g >= 253 && b >= 253)
}

// clearNoData clears mask pixels whose frame pixel is no data and returns how many it cleared.
func clearNoData(src pixels, fw, fh int, mask *image.Gray) int {
	n := 0
	for y := 0; y < fh; y++ {
		mrow := mask.Pix[y*mask.Stride : y*mask.Stride+fw]
		srow := src.row(y)
		for x, v := range mrow {
			if v != 0 && noData(srow[x*src.bpp:], src.bpp) {
				mrow[x] = 0
				n++
			}
		}
	}
	return n
}
