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
// blue samples at pix[off+y*stride+x*bpp:], with bpp 3 (packed RGB) or 4 (RGBA/NRGBA).
type pixels struct {
	pix              []byte
	off, stride, bpp int
}

// resampleRGB resamples src (kx.src×ky.src) to kx.dst×ky.dst and writes normalised
// planes into planes (plane p reads RGB channel ch[p], value v*a[p]+b[p]). tmp and acc are
// scratch space, grown as needed and returned.
func resampleRGB(src pixels, kx, ky *kernel, planes [3][]float32, ch [3]int, a, b [3]float32, tmp, acc []float32) ([]float32, []float32) {
	dw, dh := kx.dst, ky.dst
	n := ky.src * dw * 3
	if cap(tmp) < n {
		tmp = make([]float32, n)
	}
	tmp = tmp[:n]
	if cap(acc) < dw*3 {
		acc = make([]float32, dw*3)
	}
	acc = acc[:dw*3]
	bpp := src.bpp
	k := kx.k
	// Horizontal pass: every source row to dw interleaved RGB floats.
	for y := 0; y < ky.src; y++ {
		row := src.pix[src.off+y*src.stride:]
		dst := tmp[y*dw*3 : (y+1)*dw*3]
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
			continue
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
	// Vertical pass: weighted sum of whole tmp rows, then de-interleave and normalise.
	k = ky.k
	c0, c1, c2 := ch[0], ch[1], ch[2]
	for y := 0; y < dh; y++ {
		idx := ky.idx[y*k : y*k+k]
		w := ky.w[y*k : y*k+k]
		r0 := tmp[int(idx[0])*dw*3:][:dw*3]
		w0 := w[0]
		for i, v := range r0 {
			acc[i] = w0 * v
		}
		for t := 1; t < k; t++ {
			if w[t] == 0 {
				continue
			}
			r := tmp[int(idx[t])*dw*3:][:dw*3]
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

// copyRGB normalises a w×h window at (x0,y0) of src into planes through per-plane lookup
// tables.
func copyRGB(src pixels, x0, y0, w, h int, planes [3][]float32, ch [3]int, lut *[3][256]float32) {
	l0, l1, l2 := &lut[0], &lut[1], &lut[2]
	c0, c1, c2 := ch[0], ch[1], ch[2]
	bpp := src.bpp
	for y := 0; y < h; y++ {
		row := src.pix[src.off+(y0+y)*src.stride+x0*bpp:][:w*bpp]
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
// dstride), resampling bilinearly when sizes differ, and returns the count of forest
// pixels written.
func maskFromScore(score []float32, sw, sh int, tau float32, dst []byte, dw, dh, dstride int, kx, ky *kernel, row []float32) (int, []float32) {
	if sw == dw && sh == dh {
		return thresholdRect(score, sw, tau, dst, dstride, dw, dh), row
	}
	count := 0
	if cap(row) < sw {
		row = make([]float32, sw)
	}
	row = row[:sw]
	for y := 0; y < dh; y++ {
		// Linear (upscale) or area (downscale) weights along y.
		idx := ky.idx[y*ky.k : (y+1)*ky.k]
		w := ky.w[y*ky.k : (y+1)*ky.k]
		for x := range row {
			row[x] = 0
		}
		for t, j := range idx {
			if w[t] == 0 {
				continue
			}
			s := score[int(j)*sw : (int(j)+1)*sw]
			wt := w[t]
			for x, v := range s {
				row[x] += wt * v
			}
		}
		d := dst[y*dstride : y*dstride+dw]
		k := kx.k
		if k == 2 {
			for x := range d {
				v := kx.w[2*x]*row[kx.idx[2*x]] + kx.w[2*x+1]*row[kx.idx[2*x+1]]
				if v > tau {
					d[x] = 255
					count++
				} else {
					d[x] = 0
				}
			}
			continue
		}
		for x := range d {
			var v float32
			for t, j := range kx.idx[x*k : x*k+k] {
				v += kx.w[x*k+t] * row[j]
			}
			if v > tau {
				d[x] = 255
				count++
			} else {
				d[x] = 0
			}
		}
	}
	return count, row
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
