package segment

import "math"

// kernel holds precomputed resampling taps from a source axis of length src to a
// destination axis of length dst: destination index i reads k source samples starting at
// idx[i*k] with weights w[i*k:]. Downscaling averages the covered area (like OpenCV's
// INTER_AREA); upscaling interpolates linearly between pixel centres. Indexes are
// clamped, padding taps have weight 0.
type kernel struct {
	src, dst, k int
	idx         []int32
	w           []float32
	// runs (two-tap kernels only) has src+1 entries: destinations whose first tap is
	// source i are runs[i] <= x < runs[i+1] (first taps never decrease).
	runs []int32
}

func newKernel(src, dst int) *kernel {
	kn := &kernel{src: src, dst: dst}
	s := float64(src) / float64(dst)
	if s > 1 {
		// Taps per output: the most source pixels any output interval touches.
		kn.k = 1
		for i := 0; i < dst; i++ {
			lo, hi := float64(i)*s, float64(i+1)*s
			kn.k = max(kn.k, int(math.Ceil(hi-1e-9))-int(math.Floor(lo)))
		}
		kn.idx = make([]int32, dst*kn.k)
		kn.w = make([]float32, dst*kn.k)
		for i := 0; i < dst; i++ {
			lo, hi := float64(i)*s, float64(i+1)*s
			j0 := int(math.Floor(lo))
			for t := 0; t < kn.k; t++ {
				j := j0 + t
				ov := math.Min(hi, float64(j+1)) - math.Max(lo, float64(j))
				if ov < 0 || j >= src {
					ov = 0
				}
				kn.idx[i*kn.k+t] = int32(min(j, src-1))
				kn.w[i*kn.k+t] = float32(ov / s)
			}
		}
		return kn
	}
	kn.k = 2
	kn.idx = make([]int32, dst*2)
	kn.w = make([]float32, dst*2)
	for i := 0; i < dst; i++ {
		x := (float64(i)+0.5)*s - 0.5
		x = math.Max(0, x)
		j0 := int(math.Floor(x))
		f := x - float64(j0)
		j1 := j0 + 1
		if j0 >= src-1 {
			j0, j1, f = src-1, src-1, 0
		}
		kn.idx[2*i], kn.idx[2*i+1] = int32(j0), int32(j1)
		kn.w[2*i], kn.w[2*i+1] = float32(1-f), float32(f)
	}
	kn.runs = make([]int32, src+1)
	x := 0
	for i := 0; i <= src; i++ {
		for x < dst && int(kn.idx[2*x]) < i {
			x++
		}
		kn.runs[i] = int32(x)
	}
	return kn
}

// kernelCache keeps the last kernel built for each axis; frames from one source usually
// share a size, so taps are computed once.
type kernelCache struct{ k *kernel }

func (c *kernelCache) get(src, dst int) *kernel {
	if c.k == nil || c.k.src != src || c.k.dst != dst {
		c.k = newKernel(src, dst)
	}
	return c.k
}

// pixels is a read-only view of 8-bit RGB pixels: pixel (x,y) has its red, green and
// blue samples at row(y)[x*bpp:], with bpp 3 (packed RGB) or 4 (RGBA/NRGBA). Rows are
// either slices of pix (row y at pix[off+y*stride:]) or, when rows is set, converted on
// demand into a few cached rows (see rowCache).
type pixels struct {
	pix              []byte
	off, stride, bpp int
	rows             *rowCache
}

// row returns row y. With a row cache the slice holds that row only until another row
// lands in its slot: callers hold no more rows at once than the cache has slots.
func (p pixels) row(y int) []byte {
	if p.rows != nil {
		return p.rows.get(y)
	}
	return p.pix[p.off+y*p.stride:]
}

// resampleRGB resamples src (kx.src×ky.src) to kx.dst×ky.dst and writes normalised
// planes into planes (plane p reads RGB channel ch[p], value v*a[p]+b[p]). It filters
// source rows horizontally as the output rows need them and keeps only the ky.k rows of
// one output row's taps (row j in slot j%k: the taps are consecutive rows), so its
// scratch space is a few rows, not a frame. tmp and acc are that scratch space, grown as
// needed and returned.
func resampleRGB(src pixels, kx, ky *kernel, planes [3][]float32, ch [3]int, a, b [3]float32, tmp, acc []float32) ([]float32, []float32) {
	dw, dh := kx.dst, ky.dst
	k := ky.k
	n := k * dw * 3
	if cap(tmp) < n {
		tmp = make([]float32, n)
	}
	tmp = tmp[:n]
	if cap(acc) < dw*3 {
		acc = make([]float32, dw*3)
	}
	acc = acc[:dw*3]
	tags := make([]int, k)
	for i := range tags {
		tags[i] = -1
	}
	c0, c1, c2 := ch[0], ch[1], ch[2]
	for y := 0; y < dh; y++ {
		idx := ky.idx[y*k : y*k+k]
		w := ky.w[y*k : y*k+k]
		for _, j := range idx {
			if slot := int(j) % k; tags[slot] != int(j) {
				tags[slot] = int(j)
				filterRow(src.row(int(j)), src.bpp, kx, tmp[slot*dw*3:(slot+1)*dw*3])
			}
		}
		// Weighted sum of the filtered rows, then de-interleave and normalise.
		r0 := tmp[(int(idx[0])%k)*dw*3:][:dw*3]
		w0 := w[0]
		for i, v := range r0 {
			acc[i] = w0 * v
		}
		for t := 1; t < k; t++ {
			if w[t] == 0 {
				continue
			}
			r := tmp[(int(idx[t])%k)*dw*3:][:dw*3]
			wt := w[t]
			for i, v := range r {
				acc[i] += wt * v
			}
		}
		o := y * dw
		p0, p1, p2 := planes[0][o:o+dw], planes[1][o:o+dw], planes[2][o:o+dw]
		for x := range p0 {
			px := acc[3*x : 3*x+3]
			p0[x] = px[c0]*a[0] + b[0]
			p1[x] = px[c1]*a[1] + b[1]
			p2[x] = px[c2]*a[2] + b[2]
		}
	}
	return tmp, acc
}

// filterRow resamples one source row (bpp bytes per pixel) horizontally with kx into dw
// interleaved RGB floats.
func filterRow(row []byte, bpp int, kx *kernel, dst []float32) {
	dw, k := kx.dst, kx.k
	if k == 2 {
		for x := 0; x < dw; x++ {
			j0, j1 := int(kx.idx[2*x])*bpp, int(kx.idx[2*x+1])*bpp
			w0, w1 := kx.w[2*x], kx.w[2*x+1]
			s0, s1 := row[j0:j0+3], row[j1:j1+3]
			d := dst[3*x : 3*x+3]
			d[0] = w0*float32(s0[0]) + w1*float32(s1[0])
			d[1] = w0*float32(s0[1]) + w1*float32(s1[1])
			d[2] = w0*float32(s0[2]) + w1*float32(s1[2])
		}
		return
	}
	for x := 0; x < dw; x++ {
		var r, g, bb float32
		idx := kx.idx[x*k : x*k+k]
		w := kx.w[x*k : x*k+k]
		for t, j := range idx {
			s := row[int(j)*bpp : int(j)*bpp+3]
			wt := w[t]
			r += wt * float32(s[0])
			g += wt * float32(s[1])
			bb += wt * float32(s[2])
		}
		d := dst[3*x : 3*x+3]
		d[0], d[1], d[2] = r, g, bb
	}
}

// copyRGB normalises a w×h window at (x0,y0) of src into planes through per-plane lookup
// tables.
func copyRGB(src pixels, x0, y0, w, h int, planes [3][]float32, ch [3]int, lut *[3][256]float32) {
	l0, l1, l2 := &lut[0], &lut[1], &lut[2]
	c0, c1, c2 := ch[0], ch[1], ch[2]
	bpp := src.bpp
	for y := 0; y < h; y++ {
		row := src.row(y0 + y)[x0*bpp:][:w*bpp]
		o := y * w
		d0, d1, d2 := planes[0][o:o+w], planes[1][o:o+w], planes[2][o:o+w]
		for x := range d0 {
			s := row[x*bpp : x*bpp+3]
			d0[x] = l0[s[c0]]
			d1[x] = l1[s[c1]]
			d2[x] = l2[s[c2]]
		}
	}
}

// maskFromScore thresholds a score plane (sw×sh) at tau into mask pixels (dw×dh, stride
// dstride) and returns the count of forest pixels written. When sizes differ the scores
// are resampled (bilinear when enlarging, area when shrinking) before thresholding; as a
// weighted mean of scores that are all above (or all below) tau is too, only output
// pixels whose source neighbourhood straddles tau are interpolated. side is scratch space
// for the thresholded source, grown as needed and returned.
func maskFromScore(score []float32, sw, sh int, tau float32, dst []byte, dw, dh, dstride int, kx, ky *kernel, side []byte) (int, []byte) {
	if sw == dw && sh == dh {
		return thresholdRect(score, sw, tau, dst, dstride, dw, dh), side
	}
	if cap(side) < sw*sh {
		side = make([]byte, sw*sh)
	}
	side = side[:sw*sh]
	thresholdRect(score, sw, tau, side, sw, sw, sh)
	if kx.runs != nil && ky.runs != nil {
		return maskBilinear(score, side, sw, tau, dst, dw, dh, dstride, kx, ky), side
	}
	count := 0
	kxk, kyk := kx.k, ky.k
	for y := 0; y < dh; y++ {
		yidx := ky.idx[y*kyk : (y+1)*kyk]
		yw := ky.w[y*kyk : (y+1)*kyk]
		d := dst[y*dstride : y*dstride+dw]
		for x := range d {
			xidx := kx.idx[x*kxk : (x+1)*kxk]
			first := side[int(yidx[0])*sw+int(xidx[0])]
			same := true
			for _, j := range yidx {
				row := side[int(j)*sw:]
				for _, i := range xidx {
					if row[i] != first {
						same = false
					}
				}
			}
			if !same {
				var v float32
				for t, j := range yidx {
					row := score[int(j)*sw:]
					var h float32
					for u, i := range xidx {
						h += kx.w[x*kxk+u] * row[i]
					}
					v += yw[t] * h
				}
				first = 0
				if v > tau {
					first = 255
				}
			}
			d[x] = first
			count += int(first & 1)
		}
	}
	return count, side
}

// maskBilinear is maskFromScore for enlarging on both axes (two-tap kernels). Bilinear
// taps are always source columns i and min(i+1, sw-1), so for each pair of source rows it
// marks which 2×2 source cells are uniform (0 or 255) or mixed (1); runs of uniform cells
// are filled with memset-like copies and only pixels in mixed cells are interpolated.
func maskBilinear(score []float32, side []byte, sw int, tau float32, dst []byte, dw, dh, dstride int, kx, ky *kernel) int {
	count := 0
	xi, xw, runs := kx.idx[:2*dw], kx.w[:2*dw], kx.runs[:sw+1]
	cell := make([]byte, sw)
	pj0, pj1 := -1, -1
	for y := 0; y < dh; y++ {
		j0, j1 := int(ky.idx[2*y])*sw, int(ky.idx[2*y+1])*sw
		wy0, wy1 := ky.w[2*y], ky.w[2*y+1]
		s0, s1 := score[j0:j0+sw], score[j1:j1+sw]
		if j0 != pj0 || j1 != pj1 {
			t0, t1 := side[j0:j0+sw], side[j1:j1+sw]
			for i := range cell {
				n := min(i+1, sw-1)
				v := t0[i]
				if v != t0[n] || v != t1[i] || v != t1[n] {
					v = 1
				}
				cell[i] = v
			}
			pj0, pj1 = j0, j1
		}
		d := dst[y*dstride : y*dstride+dw]
		for i := 0; i < sw; {
			v := cell[i]
			j := i + 1
			if v != 1 {
				for j < sw && cell[j] == v {
					j++
				}
				seg := d[runs[i]:runs[j]]
				if v == 0 {
					clear(seg)
				} else {
					fill255(seg)
					count += len(seg)
				}
				i = j
				continue
			}
			for x := runs[i]; x < runs[j]; x++ {
				i0, i1 := xi[2*x], xi[2*x+1]
				w0, w1 := xw[2*x], xw[2*x+1]
				f := wy0*(w0*s0[i0]+w1*s0[i1]) + wy1*(w0*s1[i0]+w1*s1[i1])
				if f > tau {
					d[x] = 255
					count++
				} else {
					d[x] = 0
				}
			}
			i = j
		}
	}
	return count
}

var ones = func() []byte {
	b := make([]byte, 4096)
	for i := range b {
		b[i] = 255
	}
	return b
}()

func fill255(b []byte) {
	for len(b) > 0 {
		n := copy(b, ones)
		b = b[n:]
	}
}

// thresholdRect writes 255 where score > tau and 0 elsewhere for a w×h rectangle (score
// row stride sstride, destination stride dstride) and returns the count of 255s.
func thresholdRect(score []float32, sstride int, tau float32, dst []byte, dstride, w, h int) int {
	count := 0
	for y := 0; y < h; y++ {
		s := score[y*sstride : y*sstride+w]
		d := dst[y*dstride : y*dstride+w]
		for x, v := range s {
			if v > tau {
				d[x] = 255
				count++
			} else {
				d[x] = 0
			}
		}
	}
	return count
}

// boxDownscale is resampleRGB's fast path for integer factors: every output pixel is the
// mean of an fx×fy block of src (exactly what the area kernel computes then), summed in
// integers and normalised once.
func boxDownscale(src pixels, fx, fy, dw, dh int, planes [3][]float32, ch [3]int, a, b [3]float32) {
	inv := 1 / float32(fx*fy)
	a0, a1, a2 := a[0]*inv, a[1]*inv, a[2]*inv
	b0, b1, b2 := b[0], b[1], b[2]
	c0, c1, c2 := ch[0], ch[1], ch[2]
	bpp := src.bpp
	for y := 0; y < dh; y++ {
		o := y * dw
		p0, p1, p2 := planes[0][o:o+dw], planes[1][o:o+dw], planes[2][o:o+dw]
		if fx == 2 && fy == 2 {
			r0 := src.row(2 * y)[:dw*2*bpp]
			r1 := src.row(2*y + 1)[:dw*2*bpp]
			for x := range p0 {
				i := x * 2 * bpp
				j := i + bpp
				var s [3]uint32
				s[0] = uint32(r0[i]) + uint32(r0[j]) + uint32(r1[i]) + uint32(r1[j])
				s[1] = uint32(r0[i+1]) + uint32(r0[j+1]) + uint32(r1[i+1]) + uint32(r1[j+1])
				s[2] = uint32(r0[i+2]) + uint32(r0[j+2]) + uint32(r1[i+2]) + uint32(r1[j+2])
				p0[x] = float32(s[c0])*a0 + b0
				p1[x] = float32(s[c1])*a1 + b1
				p2[x] = float32(s[c2])*a2 + b2
			}
			continue
		}
		for x := range p0 {
			var s [3]uint32
			for yy := 0; yy < fy; yy++ {
				row := src.row(y*fy + yy)[x*fx*bpp:][:fx*bpp]
				for i := 0; i < len(row); i += bpp {
					s[0] += uint32(row[i])
					s[1] += uint32(row[i+1])
					s[2] += uint32(row[i+2])
				}
			}
			p0[x] = float32(s[c0])*a0 + b0
			p1[x] = float32(s[c1])*a1 + b1
			p2[x] = float32(s[c2])*a2 + b2
		}
	}
}
