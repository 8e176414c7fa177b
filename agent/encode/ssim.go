package encode

import "math"

// SSIM constants of Wang, Bovik, Sheikh and Simoncelli (2004): an 11×11
// circular-symmetric Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03,
// dynamic range L = 255.
const (
	ssimWindow = 11
	ssimSigma  = 1.5
	ssimC1     = (0.01 * 255) * (0.01 * 255)
	ssimC2     = (0.03 * 255) * (0.03 * 255)
)

// gauss is the normalised 1-D Gaussian; the 2-D window is its outer
// product, so the filter is applied separably.
var gauss = func() [ssimWindow]float32 {
	var g [ssimWindow]float64
	var sum float64
	for i := range g {
		x := float64(i - ssimWindow/2)
		g[i] = math.Exp(-x * x / (2 * ssimSigma * ssimSigma))
		sum += g[i]
	}
	var out [ssimWindow]float32
	for i := range g {
		out[i] = float32(g[i] / sum)
	}
	return out
}()

// SSIM returns the mean structural similarity of two luma planes of the
// same size (Wang et al. 2004): local statistics under an 11×11 Gaussian
// window (σ 1.5), averaged over every window position that lies wholly
// inside the image (MATLAB's "valid" filtering, skimage's cropped mean),
// with K1 0.01, K2 0.03 and L 255, at full resolution. It returns 1 for
// identical planes and NaN when the sizes differ or the image is smaller
// than one window. Memory is a few rows, whatever the image size.
func SSIM(a, b *Luma) float64 {
	if a.W != b.W || a.H != b.H || a.W < ssimWindow || a.H < ssimWindow {
		return math.NaN()
	}
	const k = ssimWindow
	ow := a.W - k + 1 // output columns
	// Ring of the last k horizontally filtered rows of the five
	// quantities: a, b, a², b², ab.
	var ring [5][k][]float32
	for q := range ring {
		for r := range ring[q] {
			ring[q][r] = make([]float32, ow)
		}
	}
	ra := make([]float32, a.W)
	rb := make([]float32, a.W)
	var sum float64
	g := gauss
	for y := 0; y < a.H; y++ {
		slot := y % k
		pa, pb := a.Pix[y*a.W:][:a.W], b.Pix[y*b.W:][:b.W]
		// Centred on 128 so that the float32 second moments keep their
		// precision (variances are differences of moments).
		for x := range pa {
			ra[x], rb[x] = float32(pa[x])-128, float32(pb[x])-128
		}
		ma, mb, maa, mbb, mab := ring[0][slot], ring[1][slot], ring[2][slot], ring[3][slot], ring[4][slot]
		for x := 0; x < ow; x++ {
			wa, wb := ra[x:x+k:x+k], rb[x:x+k:x+k]
			var sa, sb, saa, sbb, sab float32
			for i, w := range g {
				va, vb := wa[i], wb[i]
				sa += w * va
				sb += w * vb
				saa += w * va * va
				sbb += w * vb * vb
				sab += w * va * vb
			}
			ma[x], mb[x], maa[x], mbb[x], mab[x] = sa, sb, saa, sbb, sab
		}
		if y < k-1 {
			continue
		}
		// Vertical pass over the ring, oldest row first.
		var rowSum float64
		for x := 0; x < ow; x++ {
			var sa, sb, saa, sbb, sab float32
			for i, w := range g {
				r := (y + 1 + i) % k
				sa += w * ring[0][r][x]
				sb += w * ring[1][r][x]
				saa += w * ring[2][r][x]
				sbb += w * ring[3][r][x]
				sab += w * ring[4][r][x]
			}
			va := float64(saa - sa*sa)
			vb := float64(sbb - sb*sb)
			cov := float64(sab - sa*sb)
			mua, mub := float64(sa)+128, float64(sb)+128
			rowSum += ((2*mua*mub + ssimC1) * (2*cov + ssimC2)) / ((mua*mua + mub*mub + ssimC1) * (va + vb + ssimC2))
		}
		sum += rowSum
	}
	return sum / float64(ow*(a.H-k+1))
}
