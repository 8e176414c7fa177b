package segment

import (
	"encoding/json"
	"encoding/xml"
	"image"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// aerialModel is the shipped aerial canopy model (models/CANOPY_AERIAL.md).
const aerialModel = "models/canopy-aerial-v1.onnx"

// Box-based metrics of the aerial model card (labels are tree boxes, not masks):
//
//   - crown recall: for every box under a quarter of its image, the share of the ellipse
//     inscribed in the box (pixel centres inside it) that the mask marks tree, averaged over
//     all such boxes of the tiles;
//   - outside-box share: of all pixels marked tree on the tiles, the share outside every box
//     (a box covers the pixels floor(x0)..ceil(x1)-1). Every tile used is fully labelled:
//     every tree is boxed, so a tree pixel outside all boxes is a false positive.
//
// Issue 18 sets the bar on the held-out tiles at crown recall >= 0.80 and outside-box share
// <= 0.25, both far better than excess green + Otsu. canopy-aerial-v1 2.0.0 DOES NOT MEET IT:
// here it finds 0.72 of each held-out crown (excess green + Otsu 0.52; 1.1.0 found 0.62) with
// an outside-box share of 0.16 (excess green + Otsu 0.43; models/CANOPY_AERIAL.md). The bounds
// below are the level it really reaches, with a margin of about 0.03, so that a model that
// regresses, or the satellite model put in its place (it marks under 1 % of each crown), fails;
// they are not the issue's bar, which aerialIssueBar* keep for the log.
const (
	aerialMinCrownRecall = 0.69
	aerialMaxOutside     = 0.19
	// Against excess green + Otsu on the same tiles: at most this fraction of its outside-box
	// share (measured: 0.38), and at least this much more crown recall (measured: +0.20).
	aerialOutsideVsBaseline = 0.45
	aerialRecallVsBaseline  = 0.15
	// Issue 18's bar, not met (logged, not asserted).
	aerialIssueBarRecall  = 0.80
	aerialIssueBarOutside = 0.25
	// Go + ONNX Runtime against train_aerial.py's figures. They are not identical: Python
	// decodes the JPEG tiles with libjpeg, which interpolates chroma ("fancy upsampling"),
	// image/jpeg repeats it, and a few pixels' worth of colour moves small crowns and the
	// Otsu threshold. The figures of record are this test's.
	aerialMatchTolerance = 0.03
	// The sample tile in testdata (held-out tile 0002): its figures with a margin.
	// (Measured: crown recall 0.67, outside-box share 0.18.)
	sampleMinRecall  = 0.63
	sampleMaxOutside = 0.21
	// No-data: a pure black or white pixel (every sample <= 2 or >= 253) is never tree (the
	// package clears it); of the no-data area with its JPEG fringe (nodataRegion), at most
	// this share may be tree.
	nodataFringeMax = 0.01
)

// box is [x, y, w, h] in pixels, origin top-left.
type box [4]float64

type boxedScene struct {
	name  string
	img   image.Image
	boxes []box
}

// boxStats accumulates the two metrics over tiles.
type boxStats struct {
	recalls       []float64
	outside, tree int
}

func (s *boxStats) add(o boxStats) {
	s.recalls = append(s.recalls, o.recalls...)
	s.outside += o.outside
	s.tree += o.tree
}

func (s boxStats) crownRecall() float64 {
	if len(s.recalls) == 0 {
		return math.NaN()
	}
	sum := 0.0
	for _, r := range s.recalls {
		sum += r
	}
	return sum / float64(len(s.recalls))
}

func (s boxStats) outsideShare() float64 { return float64(s.outside) / float64(max(1, s.tree)) }

// measureBoxes computes crown recall terms and outside-box counts of mask against boxes.
func measureBoxes(mask *image.Gray, boxes []box) boxStats {
	b := mask.Bounds()
	W, H := b.Dx(), b.Dy()
	inside := make([]bool, W*H)
	var st boxStats
	for _, bx := range boxes {
		x, y, w, h := bx[0], bx[1], bx[2], bx[3]
		x0, y0 := max(0, int(math.Floor(x))), max(0, int(math.Floor(y)))
		x1, y1 := min(W, int(math.Ceil(x+w))), min(H, int(math.Ceil(y+h)))
		for yy := y0; yy < y1; yy++ {
			for xx := x0; xx < x1; xx++ {
				inside[yy*W+xx] = true
			}
		}
		if w*h >= 0.25*float64(W*H) || w <= 0 || h <= 0 {
			continue
		}
		cx, cy, rx, ry := x+w/2, y+h/2, w/2, h/2
		n, hit := 0, 0
		for yy := max(0, int(cy-ry)-1); yy < min(H, int(cy+ry)+2); yy++ {
			for xx := max(0, int(cx-rx)-1); xx < min(W, int(cx+rx)+2); xx++ {
				dx, dy := (float64(xx)+0.5-cx)/rx, (float64(yy)+0.5-cy)/ry
				if dx*dx+dy*dy <= 1 {
					n++
					if mask.Pix[yy*mask.Stride+xx] != 0 {
						hit++
					}
				}
			}
		}
		if n > 0 {
			st.recalls = append(st.recalls, float64(hit)/float64(n))
		}
	}
	for yy := 0; yy < H; yy++ {
		for xx := 0; xx < W; xx++ {
			if mask.Pix[yy*mask.Stride+xx] != 0 {
				st.tree++
				if !inside[yy*W+xx] {
					st.outside++
				}
			}
		}
	}
	return st
}

// exgOtsu is the baseline: excess green 2G-R-B thresholded with Otsu's method over a
// 256-bin histogram of the image (as train_aerial.py and numpy compute it).
func exgOtsu(img image.Image) *image.Gray {
	b := img.Bounds()
	W, H := b.Dx(), b.Dy()
	rgb := toRGB(img, nil)
	exg := make([]float64, W*H)
	lo, hi := math.Inf(1), math.Inf(-1)
	for i := range exg {
		v := 2*float64(rgb[3*i+1]) - float64(rgb[3*i]) - float64(rgb[3*i+2])
		exg[i] = v
		lo, hi = min(lo, v), max(hi, v)
	}
	var hist [256]float64
	width := (hi - lo) / 256
	for _, v := range exg {
		k := 255
		if width > 0 {
			k = min(255, int((v-lo)/width))
		}
		hist[k]++
	}
	var wsum, musum, best, thr float64
	total := float64(len(exg))
	var mt float64
	for k, n := range hist {
		mt += n * (lo + (float64(k)+0.5)*width)
	}
	for k, n := range hist {
		c := lo + (float64(k)+0.5)*width
		wsum += n
		musum += n * c
		wf := total - wsum
		if wsum == 0 || wf == 0 {
			continue
		}
		between := math.Pow(mt*wsum/total-musum, 2) / (wsum * wf) * total
		if between > best {
			best, thr = between, c
		}
	}
	out := image.NewGray(image.Rect(0, 0, W, H))
	for i, v := range exg {
		if v > thr {
			out.Pix[i] = 255
		}
	}
	return out
}

// nodataRegion marks the no-data areas of an image with their compression fringe, as
// train_aerial.py labels them: pixels within 3 px of a near-pure (<= 8 or >= 247 in every
// sample) pixel whose 9×9 neighbourhood is at least 80 % near-pure.
func nodataRegion(img image.Image) []bool {
	b := img.Bounds()
	W, H := b.Dx(), b.Dy()
	rgb := toRGB(img, nil)
	near := make([]float64, W*H)
	for i := range near {
		r, g, bl := rgb[3*i], rgb[3*i+1], rgb[3*i+2]
		if (r <= 8 && g <= 8 && bl <= 8) || (r >= 247 && g >= 247 && bl >= 247) {
			near[i] = 1
		}
	}
	mean := boxMean(near, W, H, 4)
	core := make([]float64, W*H)
	for i := range core {
		if near[i] == 1 && mean[i] >= 0.8 {
			core[i] = 1
		}
	}
	grown := boxMean(core, W, H, 3)
	out := make([]bool, W*H)
	for i, v := range grown {
		out[i] = v > 0
	}
	return out
}

// boxMean is the mean over (2r+1)² windows with edges replicated.
func boxMean(v []float64, W, H, r int) []float64 {
	at := func(x, y int) float64 { return v[min(H-1, max(0, y))*W+min(W-1, max(0, x))] }
	tmp := make([]float64, W*H)
	for y := 0; y < H; y++ {
		for x := 0; x < W; x++ {
			s := 0.0
			for d := -r; d <= r; d++ {
				s += at(x+d, y)
			}
			tmp[y*W+x] = s
		}
	}
	out := make([]float64, W*H)
	k := float64((2*r + 1) * (2*r + 1))
	for y := 0; y < H; y++ {
		for x := 0; x < W; x++ {
			s := 0.0
			for d := -r; d <= r; d++ {
				s += tmp[min(H-1, max(0, y+d))*W+x]
			}
			out[y*W+x] = s / k
		}
	}
	return out
}

// aerialMetrics is what train_aerial.py records (models/canopy-aerial-v1.onnx.metrics.json).
type aerialMetrics struct {
	Params      int      `json:"params"`
	Train       []string `json:"train"`
	Validation  []string `json:"validation"`
	Test        []string `json:"test"`
	TestMetrics struct {
		CrownRecall  float64 `json:"crown_recall"`
		OutsideShare float64 `json:"outside_box_share"`
		Crowns       int     `json:"crowns"`
	} `json:"test_metrics"`
	TestBaseline struct {
		CrownRecall  float64 `json:"crown_recall"`
		OutsideShare float64 `json:"outside_box_share"`
	} `json:"test_baseline_exg_otsu"`
}

func readAerialMetrics(t *testing.T) aerialMetrics {
	t.Helper()
	raw, err := os.ReadFile(aerialModel + ".metrics.json")
	if err != nil {
		t.Fatal(err)
	}
	var m aerialMetrics
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// oamBoxes reads the COCO boxes of the OAM-TCD tiles, by file stem.
func oamBoxes(t testing.TB, path string) map[string][]box {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var coco struct {
		Images []struct {
			ID   int    `json:"id"`
			File string `json:"file_name"`
		} `json:"images"`
		Annotations []struct {
			Image int     `json:"image_id"`
			BBox  box     `json:"bbox"`
			Area  float64 `json:"area"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(raw, &coco); err != nil {
		t.Fatal(err)
	}
	names := map[int]string{}
	for _, im := range coco.Images {
		names[im.ID] = strings.TrimSuffix(im.File, filepath.Ext(im.File))
	}
	out := map[string][]box{}
	for _, a := range coco.Annotations {
		out[names[a.Image]] = append(out[names[a.Image]], a.BBox)
	}
	return out
}

// vocBoxes reads Pascal-VOC boxes (every object, whatever its name).
func vocBoxes(t testing.TB, path string) []box {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Objects []struct {
			Box struct {
				XMin float64 `xml:"xmin"`
				YMin float64 `xml:"ymin"`
				XMax float64 `xml:"xmax"`
				YMax float64 `xml:"ymax"`
			} `xml:"bndbox"`
		} `xml:"object"`
	}
	if err := xml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var out []box
	for _, o := range doc.Objects {
		b := o.Box
		out = append(out, box{b.XMin, b.YMin, b.XMax - b.XMin, b.YMax - b.YMin})
	}
	return out
}

// sharedBoxedScenes loads the named scenes from the shared data: OAM-TCD tiles by number,
// NEON images by name.
func sharedBoxedScenes(t *testing.T, names []string) []boxedScene {
	t.Helper()
	oam := filepath.Join(sharedData, "aerial-trees/oam-tcd-640")
	neon := filepath.Join(sharedData, "neon-tree-crowns")
	needFile(t, oam)
	needFile(t, neon)
	var boxes map[string][]box
	var out []boxedScene
	for _, n := range names {
		if len(n) == 4 && strings.Trim(n, "0123456789") == "" {
			if boxes == nil {
				boxes = oamBoxes(t, filepath.Join(oam, "boxes.json"))
			}
			out = append(out, boxedScene{n, decodeFile(t, filepath.Join(oam, "images", n+".jpg")), boxes[n]})
			continue
		}
		out = append(out, boxedScene{n, decodeFile(t, filepath.Join(neon, n+".png")), vocBoxes(t, filepath.Join(neon, n+".xml"))})
	}
	return out
}

// heldOut segments the scenes with the model at path (default Auto tiling, 2 threads) and
// measures it and excess green + Otsu against the boxes. It fails the test if a pure no-data
// pixel is tree and counts the tree pixels in the no-data area with its fringe.
func heldOut(t *testing.T, path string, scenes []boxedScene) (model, base boxStats, nodataPx, nodataTree int) {
	t.Helper()
	m := loadModel(t, path, Options{Threads: 2})
	t.Logf("%s: %-10s %7s %8s %8s %16s", filepath.Base(path), "tile", "crowns", "recall", "outside", "ExG+Otsu")
	for _, sc := range scenes {
		res, err := m.Segment(sc.img)
		if err != nil {
			t.Fatal(err)
		}
		st := measureBoxes(res.Mask, sc.boxes)
		bl := measureBoxes(exgOtsu(sc.img), sc.boxes)
		model.add(st)
		base.add(bl)
		rgb := toRGB(sc.img, nil)
		for i, in := range nodataRegion(sc.img) {
			if !in {
				continue
			}
			nodataPx++
			if res.Mask.Pix[i] != 0 {
				nodataTree++
				if noData(rgb[3*i:], 3) {
					t.Errorf("%s: pixel %d is pure no-data and tree", sc.name, i)
				}
			}
		}
		t.Logf("%s: %-10s %7d %8.3f %8.3f %7.3f / %.3f  (%d windows, %v)", filepath.Base(path), sc.name, len(st.recalls),
			st.crownRecall(), st.outsideShare(), bl.crownRecall(), bl.outsideShare(), res.Runs, res.Total.Round(1e6))
	}
	return model, base, nodataPx, nodataTree
}

// TestAerialModelHeldOut recomputes the aerial model card's metrics on its held-out test
// tiles (never used in training or model selection) through this package and ONNX Runtime,
// with the default Auto tiling: crown recall and outside-box share of the model and of excess
// green + Otsu. They must match what train_aerial.py recorded and reach the level the model
// card reports (not issue 18's bar, which it misses; see the constants), with an outside-box
// share well below the baseline's and a higher crown recall. No pure no-data pixel may be tree, and at most 1 % of the
// no-data area with its fringe. The satellite model run through the same measure must fail
// the bounds, so the test can tell the two models apart.
func TestAerialModelHeldOut(t *testing.T) {
	metrics := readAerialMetrics(t)
	if len(metrics.Test) == 0 {
		t.Fatal("metrics file lists no test tiles")
	}
	for _, n := range metrics.Test {
		if slices.Contains(metrics.Train, n) || slices.Contains(metrics.Validation, n) {
			t.Fatalf("test tile %s is also a training or validation tile", n)
		}
	}
	scenes := sharedBoxedScenes(t, metrics.Test)
	model, base, nodataPx, nodataTree := heldOut(t, aerialModel, scenes)
	r, o := model.crownRecall(), model.outsideShare()
	br, bo := base.crownRecall(), base.outsideShare()
	t.Logf("held-out tiles %v, %d crowns: crown recall %.4f, outside-box share %.4f; excess green + Otsu %.4f, %.4f; no-data area %d px, %d tree",
		metrics.Test, len(model.recalls), r, o, br, bo, nodataPx, nodataTree)
	met := "NOT met"
	if r >= aerialIssueBarRecall && o <= aerialIssueBarOutside {
		met = "met"
	}
	t.Logf("issue 18's bar (crown recall >= %.2f, outside-box share <= %.2f): %s", aerialIssueBarRecall, aerialIssueBarOutside, met)
	if len(model.recalls) != metrics.TestMetrics.Crowns {
		t.Errorf("%d crowns, train_aerial.py counted %d", len(model.recalls), metrics.TestMetrics.Crowns)
	}
	if d(r, metrics.TestMetrics.CrownRecall) > aerialMatchTolerance || d(o, metrics.TestMetrics.OutsideShare) > aerialMatchTolerance {
		t.Errorf("Go and ONNX Runtime give crown recall %.4f, outside-box share %.4f; train_aerial.py recorded %.4f, %.4f",
			r, o, metrics.TestMetrics.CrownRecall, metrics.TestMetrics.OutsideShare)
	}
	if d(br, metrics.TestBaseline.CrownRecall) > aerialMatchTolerance || d(bo, metrics.TestBaseline.OutsideShare) > aerialMatchTolerance {
		t.Errorf("baseline here %.4f, %.4f; train_aerial.py recorded %.4f, %.4f", br, bo, metrics.TestBaseline.CrownRecall, metrics.TestBaseline.OutsideShare)
	}
	if r < aerialMinCrownRecall || o > aerialMaxOutside {
		t.Errorf("crown recall %.4f (want >= %.2f), outside-box share %.4f (want <= %.2f): below the model card's level",
			r, aerialMinCrownRecall, o, aerialMaxOutside)
	}
	if o > bo*aerialOutsideVsBaseline || r < br+aerialRecallVsBaseline {
		t.Errorf("against excess green + Otsu: outside-box share %.4f vs %.4f (want <= %.0f %% of it), crown recall %.4f vs %.4f (want >= it + %.2f)",
			o, bo, aerialOutsideVsBaseline*100, r, br, aerialRecallVsBaseline)
	}
	if nodataPx == 0 {
		t.Error("the held-out tiles have no no-data border to check")
	} else if float64(nodataTree) > nodataFringeMax*float64(nodataPx) {
		t.Errorf("%d of %d no-data pixels (with fringe) are tree", nodataTree, nodataPx)
	}

	// The control: the satellite model in its place fails the bounds.
	sat, _, _, _ := heldOut(t, shippedModel, scenes)
	sr, so := sat.crownRecall(), sat.outsideShare()
	t.Logf("satellite model on the same tiles: crown recall %.4f, outside-box share %.4f", sr, so)
	if sr >= aerialMinCrownRecall && so <= aerialMaxOutside {
		t.Errorf("the satellite model passes the aerial bounds (%.4f, %.4f): they cannot tell the models apart", sr, so)
	}
}

// TestAerialModelContract checks the shipped aerial model's size and metadata.
func TestAerialModelContract(t *testing.T) {
	st, err := os.Stat(aerialModel)
	if err != nil {
		t.Fatal(err)
	}
	m := loadModel(t, aerialModel, Options{Threads: 1})
	info := m.Info()
	metrics := readAerialMetrics(t)
	t.Logf("%s %s: %d bytes, %d parameters, input %dx%d, pixel size %v-%v m", info.ID, info.Version, st.Size(), metrics.Params,
		info.Width, info.Height, info.PixelSizeMin, info.PixelSizeMax)
	if st.Size() > 1<<20 || metrics.Params > 300_000 {
		t.Errorf("%d bytes, %d parameters; the model card promises at most 1 MiB and 300k", st.Size(), metrics.Params)
	}
	if info.ID != "canopy-aerial" || info.PixelSizeMin <= 0 || info.PixelSizeMin > 0.1 || info.PixelSizeMax < 0.3 ||
		info.Output != "logits" || len(info.Classes) != 1 {
		t.Errorf("info %+v", info)
	}
	for _, k := range []string{KeyName, KeyLicense} {
		if info.Metadata[k] == "" {
			t.Errorf("no %s", k)
		}
	}
}

// sampleTile is the held-out OAM-TCD tile in testdata/aerial (no shared data needed).
func sampleTile(t testing.TB) boxedScene {
	t.Helper()
	boxes := oamBoxes(t, "testdata/aerial/oam-tcd-0002.boxes.json")["0002"]
	if len(boxes) != 59 {
		t.Fatalf("%d boxes for the sample tile, want 59", len(boxes))
	}
	return boxedScene{"0002", decodeFile(t, "testdata/aerial/oam-tcd-0002.jpg"), boxes}
}

// TestAerialModelOnSample runs the aerial model on the held-out tile in testdata (no shared
// data needed): its crowns found, little tree outside the boxes, no pure no-data pixel tree
// and at most 1 % of the no-data border with its fringe. The bounds are the tile's figures in
// the model card with a margin, so a change to pre- or post-processing, the runtime or the
// model that makes it worse fails here.
func TestAerialModelOnSample(t *testing.T) {
	sc := sampleTile(t)
	m := loadModel(t, aerialModel, Options{Threads: 2})
	res, err := m.Segment(sc.img)
	if err != nil {
		t.Fatal(err)
	}
	st := measureBoxes(res.Mask, sc.boxes)
	bl := measureBoxes(exgOtsu(sc.img), sc.boxes)
	rgb := toRGB(sc.img, nil)
	area, tree := 0, 0
	for i, in := range nodataRegion(sc.img) {
		if !in {
			continue
		}
		area++
		if res.Mask.Pix[i] != 0 {
			tree++
			if noData(rgb[3*i:], 3) {
				t.Errorf("pixel %d is pure no-data and tree", i)
			}
		}
	}
	t.Logf("0002: crown recall %.3f, outside-box share %.3f, tree %.3f of the tile, %d of %d px of the no-data border tree; excess green + Otsu %.3f, %.3f",
		st.crownRecall(), st.outsideShare(), res.Coverage, tree, area, bl.crownRecall(), bl.outsideShare())
	if st.crownRecall() < sampleMinRecall || st.outsideShare() > sampleMaxOutside {
		t.Errorf("crown recall %.3f (want >= %.2f), outside-box share %.3f (want <= %.2f)",
			st.crownRecall(), sampleMinRecall, st.outsideShare(), sampleMaxOutside)
	}
	if area < 10000 || float64(tree) > nodataFringeMax*float64(area) {
		t.Errorf("%d of %d px of the no-data border are tree", tree, area)
	}
}

// TestAerialSeams segments a 10 cm NEON frame larger than the model input (5×5 windows) and
// checks that no seam shows where windows meet (a seam is a run of label changes along one
// line): across the lines at the middles of the overlaps the label changes at most 1.5 times
// as often as across all lines of the frame on average, and no such line changes more than
// twice as often as the 99th percentile of all lines. It also stitches the same windows
// without blending (each pixel from the window whose centre is nearest, the earlier Tile
// mode) and requires the check to see seams there.
func TestAerialSeams(t *testing.T) {
	path := filepath.Join(sharedData, "neon-tree-crowns/2019_YELL_2_541000_4977000_image_crop.png")
	needFile(t, path)
	img := decodeFile(t, path)
	m := loadModel(t, aerialModel, Options{Threads: 2})
	res, err := m.Segment(img)
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	W, H := b.Dx(), b.Dy()
	ov := m.info.Width / 8
	xs, ys := tilePositions(W, m.info.Width, ov), tilePositions(H, m.info.Height, ov)
	seams := func(mask *image.Gray) (worst, mean, mid, p99 float64) {
		// changes[x] counts rows where column x differs from column x-1 (and alike for rows).
		colChanges := make([]float64, W)
		rowChanges := make([]float64, H)
		for y := 0; y < H; y++ {
			for x := 1; x < W; x++ {
				if mask.Pix[y*mask.Stride+x] != mask.Pix[y*mask.Stride+x-1] {
					colChanges[x]++
				}
			}
		}
		for y := 1; y < H; y++ {
			for x := 0; x < W; x++ {
				if mask.Pix[y*mask.Stride+x] != mask.Pix[(y-1)*mask.Stride+x] {
					rowChanges[y]++
				}
			}
		}
		total := 0.0
		for _, v := range colChanges {
			total += v / float64(H)
		}
		for _, v := range rowChanges {
			total += v / float64(W)
		}
		mean = total / float64(W+H-2)
		var all []float64
		for x := 1; x < W; x++ {
			all = append(all, colChanges[x]/float64(H))
		}
		for y := 1; y < H; y++ {
			all = append(all, rowChanges[y]/float64(W))
		}
		slices.Sort(all)
		p99 = all[len(all)*99/100]
		n := 0
		for i := 1; i < len(xs); i++ {
			c := (xs[i] + xs[i-1] + m.info.Width) / 2
			worst = max(worst, colChanges[c]/float64(H))
			mid += colChanges[c] / float64(H)
			n++
		}
		for i := 1; i < len(ys); i++ {
			c := (ys[i] + ys[i-1] + m.info.Height) / 2
			worst = max(worst, rowChanges[c]/float64(W))
			mid += rowChanges[c] / float64(W)
			n++
		}
		return worst, mean, mid / float64(n), p99
	}
	worst, mean, mid, p99 := seams(res.Mask)
	// The control: the same windows, hard cuts at the overlap middles.
	hard := image.NewGray(image.Rect(0, 0, W, H))
	win := image.NewNRGBA(image.Rect(0, 0, m.info.Width, m.info.Height))
	rgb := toRGB(img, nil)
	for j, y0 := range ys {
		for i, x0 := range xs {
			for y := 0; y < m.info.Height; y++ {
				for x := 0; x < m.info.Width; x++ {
					s := rgb[3*((y0+y)*W+x0+x):]
					copy(win.Pix[y*win.Stride+4*x:], []byte{s[0], s[1], s[2], 255})
				}
			}
			r, err := m.Segment(win)
			if err != nil {
				t.Fatal(err)
			}
			lo := func(p []int, k, t int) int {
				if k == 0 {
					return 0
				}
				return (p[k] + p[k-1] + t) / 2
			}
			hi := func(p []int, k, t, l int) int {
				if k == len(p)-1 {
					return l
				}
				return (p[k] + p[k+1] + t) / 2
			}
			for y := lo(ys, j, m.info.Height); y < hi(ys, j, m.info.Height, H); y++ {
				copy(hard.Pix[y*W+lo(xs, i, m.info.Width):y*W+hi(xs, i, m.info.Width, W)],
					r.Mask.Pix[(y-y0)*r.Mask.Stride+lo(xs, i, m.info.Width)-x0:])
			}
		}
	}
	hworst, hmean, hmid, hp99 := seams(hard)
	t.Logf("label changes per pixel of line: blended tiling: overlap middles mean %.4f, worst %.4f; all lines mean %.4f, 99th percentile %.4f",
		mid, worst, mean, p99)
	t.Logf("hard cuts (control): overlap middles mean %.4f, worst %.4f; all lines mean %.4f, 99th percentile %.4f", hmid, hworst, hmean, hp99)
	seam := func(mid, worst, mean, p99 float64) bool { return mid > 1.5*mean || worst > 2*p99 }
	if seam(mid, worst, mean, p99) {
		t.Errorf("a seam: the overlap middles change label %.4f per pixel on average (all lines %.4f), the worst %.4f (99th percentile of all lines %.4f)",
			mid, mean, worst, p99)
	}
	if !seam(hmid, hworst, hmean, hp99) {
		t.Error("the control with hard cuts shows no seam either: the check cannot see seams")
	}
}
