package segment

import (
	"cmp"
	"encoding/json"
	"fmt"
	"image"
	"image/draw"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type tile struct {
	name string
	img  image.Image
	mask *image.Gray
}

// realTiles loads the Sentinel-2 tiles and masks in testdata/tiles (see SOURCE.md there).
func realTiles(tb testing.TB) []tile {
	tb.Helper()
	paths, err := filepath.Glob("testdata/tiles/*.mask.png")
	if err != nil || len(paths) == 0 {
		tb.Fatalf("no tiles in testdata/tiles: %v", err)
	}
	var out []tile
	for _, mp := range paths {
		name := strings.TrimSuffix(filepath.Base(mp), ".mask.png")
		img := decodeFile(tb, filepath.Join("testdata/tiles", name+".png"))
		out = append(out, tile{name, img, decodeMask(tb, mp)})
	}
	return out
}

func decodeFile(tb testing.TB, path string) image.Image {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	f, err := Decode(data, 0)
	if err != nil {
		tb.Fatalf("decode %s: %v", path, err)
	}
	return f.Image
}

// decodeMask decodes a 0/255 mask image as gray.
func decodeMask(tb testing.TB, path string) *image.Gray {
	tb.Helper()
	m := decodeFile(tb, path)
	g := image.NewGray(m.Bounds())
	draw.Draw(g, g.Bounds(), m, m.Bounds().Min, draw.Src)
	return g
}

// scores returns forest IoU, pixel accuracy and true coverage of pred against truth.
func scores(pred, truth *image.Gray) (iou, acc, cov float64) {
	var tp, fp, fn, tn int
	for i, p := range pred.Pix {
		g := truth.Pix[i] >= 128
		switch {
		case p == 255 && g:
			tp++
		case p == 255:
			fp++
		case g:
			fn++
		default:
			tn++
		}
	}
	n := float64(tp + fp + fn + tn)
	if tp+fp+fn == 0 {
		iou = 1
	} else {
		iou = float64(tp) / float64(tp+fp+fn)
	}
	return iou, float64(tp+tn) / n, float64(tp+fn) / n
}

// scene assembles the four 256×256 tiles of a scene into its 512×512 original.
func scene(tb testing.TB, tiles []tile, stem string) (*image.NRGBA, *image.Gray) {
	img := image.NewNRGBA(image.Rect(0, 0, 512, 512))
	mask := image.NewGray(image.Rect(0, 0, 512, 512))
	n := 0
	for _, t := range tiles {
		if !strings.HasPrefix(t.name, stem+"_r") {
			continue
		}
		r, c := int(t.name[len(stem)+2]-'0'), int(t.name[len(stem)+4]-'0')
		at := image.Pt(c*256, r*256)
		draw.Draw(img, image.Rectangle{at, at.Add(image.Pt(256, 256))}, t.img, t.img.Bounds().Min, draw.Src)
		draw.Draw(mask, image.Rectangle{at, at.Add(image.Pt(256, 256))}, t.mask, image.Point{}, draw.Src)
		n++
	}
	if n != 4 {
		tb.Fatalf("scene %s: %d tiles, want 4", stem, n)
	}
	return img, mask
}

// Expected quality of the shipped model on the tiles in testdata/tiles, with a margin. The
// tests fail if a change to pre- or post-processing, the runtime or the model makes any tile
// worse. The tiles come from the validation scenes of cross-validation fold 0; the shipped
// model (1.2.0) is trained on all 35 scenes, these included, so this is a regression check,
// not a measure of quality on unseen scenes (that is TestCrossValidation's).
// Amazon_727_30_r0c0 (fields north of a floodplain) was the known failure of fold 0: dark
// rectangular fields (crops or plantation) marked forest, so its bounds stay loose.
var tileBounds = map[string]struct{ minIoU, maxCoverageErr float64 }{
	"Amazon_682_4_r1c0":  {0.95, 0.03},
	"Amazon_720_40_r0c0": {0.95, 0.03},
	"Amazon_720_40_r0c1": {0.95, 0.03},
	"Amazon_720_40_r1c0": {0.95, 0.03},
	"Amazon_720_40_r1c1": {0.95, 0.03},
	"Amazon_727_30_r0c0": {0.15, 0.30},
}

const (
	valMinIoU        = 0.88 // forest IoU pooled over fold 0's validation scenes
	valMinAccuracy   = 0.95 // pixel accuracy pooled over fold 0's validation scenes
	trainMinIoU      = 0.94 // the shipped model on the 35 scenes it was trained on
	trainMinAccuracy = 0.96
	minPooledIoU     = 0.88 // forest IoU pooled over all test tiles
	maxCoverageError = 0.03 // for the whole 512×512 scene
	cvMinIoU         = 0.90 // forest IoU pooled over the five cross-validation folds (the bar)
	cvMinAccuracy    = 0.94 // pixel accuracy, the same
)

func d(a, b float64) float64 {
	if a > b {
		return a - b
	}
	return b - a
}

// TestShippedModelOnRealTiles runs the shipped model through the real runtime on Sentinel-2
// tiles and checks IoU and coverage against the hand-made masks.
func TestShippedModelOnRealTiles(t *testing.T) {
	m := loadModel(t, shippedModel, Options{Threads: 1})
	info := m.Info()
	if info.ID != "forest-unet" || info.Version != "1.2.0" || info.Width != 256 || info.Height != 256 || info.Output != "logits" ||
		len(info.Classes) != 1 || info.Classes[0] != "forest" {
		t.Fatalf("shipped model info %+v", info)
	}
	pooled := &confusion{}
	tiles := realTiles(t)
	if len(tiles) != len(tileBounds) {
		t.Fatalf("%d tiles in testdata/tiles, %d with bounds", len(tiles), len(tileBounds))
	}
	for _, tl := range tiles {
		res, err := m.Segment(tl.img)
		if err != nil {
			t.Fatal(err)
		}
		iou, acc, cov := scores(res.Mask, tl.mask)
		pooled.add(res.Mask, tl.mask)
		t.Logf("%s: IoU %.3f accuracy %.3f coverage %.3f (truth %.3f) in %v", tl.name, iou, acc, res.Coverage, cov, res.Total)
		b := tileBounds[tl.name]
		if iou < b.minIoU || d(res.Coverage, cov) > b.maxCoverageErr {
			t.Errorf("%s: IoU %.3f (want ≥ %.2f), coverage %.3f vs truth %.3f (want within %.2f)",
				tl.name, iou, b.minIoU, res.Coverage, cov, b.maxCoverageErr)
		}
	}
	t.Logf("pooled IoU %.3f accuracy %.3f", pooled.iou(), pooled.accuracy())
	if pooled.iou() < minPooledIoU {
		t.Errorf("pooled IoU %.3f, want ≥ %.2f", pooled.iou(), minPooledIoU)
	}
}

// TestShippedModelScene runs a whole 512×512 scene in the three Tiling modes.
func TestShippedModelScene(t *testing.T) {
	img, truth := scene(t, realTiles(t), "Amazon_720_40")
	for _, c := range []struct {
		mode   Tiling
		runs   int
		minIoU float64
	}{{Auto, 9, 0.95}, {Tile, 9, 0.95}, {Resize, 1, 0.90}} {
		m := loadModel(t, shippedModel, Options{Threads: 2, Tiling: c.mode})
		res, err := m.Segment(img)
		if err != nil {
			t.Fatal(err)
		}
		iou, acc, cov := scores(res.Mask, truth)
		t.Logf("%v: IoU %.3f accuracy %.3f coverage %.3f (truth %.3f), %d runs in %v", c.mode, iou, acc, res.Coverage, cov, res.Runs, res.Total)
		if res.Mask.Bounds().Dx() != 512 || res.Runs != c.runs || iou < c.minIoU || d(res.Coverage, cov) > maxCoverageError {
			t.Errorf("%v: %d runs (want %d), IoU %.3f (want ≥ %.2f), coverage %.3f vs %.3f", c.mode, res.Runs, c.runs, iou, c.minIoU, res.Coverage, cov)
		}
	}
}

type confusion struct{ tp, fp, fn, tn int }

func (c *confusion) add(pred, truth *image.Gray) {
	for i, p := range pred.Pix {
		g := truth.Pix[i] >= 128
		switch {
		case p == 255 && g:
			c.tp++
		case p == 255:
			c.fp++
		case g:
			c.fn++
		default:
			c.tn++
		}
	}
}

func (c *confusion) merge(o *confusion) {
	c.tp, c.fp, c.fn, c.tn = c.tp+o.tp, c.fp+o.fp, c.fn+o.fn, c.tn+o.tn
}

func (c *confusion) iou() float64 { return float64(c.tp) / float64(max(1, c.tp+c.fp+c.fn)) }
func (c *confusion) accuracy() float64 {
	return float64(c.tp+c.tn) / float64(max(1, c.tp+c.fp+c.fn+c.tn))
}

// sharedData holds the data sets in ../shared beside the checkout (CI has it too), or where
// FOREST_SHARED_DATA points (a checkout elsewhere, such as a git worktree); sharedAmazon is the
// Sentinel-2 one.
var (
	sharedData   = cmp.Or(os.Getenv("FOREST_SHARED_DATA"), "../../shared/data")
	sharedAmazon = sharedData + "/amazon-forest-rgb"
)

// foldMetrics is what train.py records of a model's validation split and training scenes.
type foldMetrics struct {
	ValScenes   []string                        `json:"val_scenes"`
	TrainScenes []string                        `json:"train_scenes"`
	Val         struct{ IoU, Accuracy float64 } `json:"val"`
	Train       struct{ IoU, Accuracy float64 } `json:"train"`
}

// needSharedData skips (or, in CI, fails) a test when ../shared is not beside the checkout.
func needSharedData(t *testing.T) {
	t.Helper()
	needFile(t, sharedAmazon)
}

// needFile skips (or, in CI, fails) a test when a file of the shared data is missing.
func needFile(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs the shared data beside the checkout: %v", err)
		}
		t.Skipf("no shared data beside the checkout: %v", err)
	}
}

// validate segments every tile of the validation scenes recorded in model's metrics file
// through this package and the real ONNX Runtime, tile by tile as the agent runs it, and
// checks the result against the figures train.py recorded.
func validate(t *testing.T, model string) (foldMetrics, *confusion) {
	t.Helper()
	metrics := readFoldMetrics(t, model)
	if len(metrics.ValScenes) == 0 {
		t.Fatalf("%s: no validation scenes in its metrics file", model)
	}
	c := segmentScenes(t, model, metrics.ValScenes)
	iou, acc := c.iou(), c.accuracy()
	t.Logf("%s, validation scenes %v: forest IoU %.4f, accuracy %.4f (train.py: %.4f, %.4f)",
		filepath.Base(model), metrics.ValScenes, iou, acc, metrics.Val.IoU, metrics.Val.Accuracy)
	if d(iou, metrics.Val.IoU) > 0.005 || d(acc, metrics.Val.Accuracy) > 0.005 {
		t.Errorf("%s: Go and ONNX Runtime give IoU %.4f accuracy %.4f, train.py recorded %.4f %.4f",
			model, iou, acc, metrics.Val.IoU, metrics.Val.Accuracy)
	}
	return metrics, c
}

func readFoldMetrics(t *testing.T, model string) foldMetrics {
	t.Helper()
	raw, err := os.ReadFile(model + ".metrics.json")
	if err != nil {
		t.Fatal(err)
	}
	var metrics foldMetrics
	if err := json.Unmarshal(raw, &metrics); err != nil {
		t.Fatalf("%s metrics file: %v", model, err)
	}
	return metrics
}

// segmentScenes segments the four 256×256 tiles of each scene (each one model input, as
// train.py evaluates them) and pools the confusion counts.
func segmentScenes(t *testing.T, model string, scenes []string) *confusion {
	t.Helper()
	m := loadModel(t, model, Options{Threads: 2})
	c := &confusion{}
	for _, sc := range scenes {
		for _, rc := range []string{"r0c0", "r0c1", "r1c0", "r1c1"} {
			name := sc + "_" + rc + ".png"
			img := decodeFile(t, filepath.Join(sharedAmazon, "images", name))
			res, err := m.Segment(img)
			if err != nil {
				t.Fatal(err)
			}
			c.add(res.Mask, decodeMask(t, filepath.Join(sharedAmazon, "masks", name)))
		}
	}
	return c
}

// TestFold0ValidationScenes recomputes the quality of cross-validation fold 0's model (the
// shipped model up to version 1.1.0) on its seven validation scenes and checks it against
// the bar the model card gives for that split.
func TestFold0ValidationScenes(t *testing.T) {
	needSharedData(t)
	_, c := validate(t, "testdata/cv/fold0.onnx")
	if iou, acc := c.iou(), c.accuracy(); iou < valMinIoU || acc < valMinAccuracy {
		t.Errorf("forest IoU %.4f, accuracy %.4f; the model card promises ≥ %.2f and ≥ %.2f", iou, acc, valMinIoU, valMinAccuracy)
	}
}

// TestShippedModelTrainingScenes: the shipped model is trained on all 35 scenes, so it has no
// held-out figure of its own (cross-validation is its estimate). This recomputes its figure on
// the scenes it was trained on, which must match train.py's and stay high: a check of the
// export and the runtime, not of generalisation.
func TestShippedModelTrainingScenes(t *testing.T) {
	needSharedData(t)
	metrics := readFoldMetrics(t, shippedModel)
	images, err := filepath.Glob(filepath.Join(sharedAmazon, "images", "*_r0c0.png"))
	if err != nil {
		t.Fatal(err)
	}
	if len(metrics.ValScenes) != 0 || len(metrics.TrainScenes) != len(images) {
		t.Fatalf("shipped model: %d validation and %d training scenes; want 0 and all %d", len(metrics.ValScenes), len(metrics.TrainScenes), len(images))
	}
	c := segmentScenes(t, shippedModel, metrics.TrainScenes)
	iou, acc := c.iou(), c.accuracy()
	t.Logf("shipped model on its %d training scenes: forest IoU %.4f, accuracy %.4f (train.py: %.4f, %.4f)",
		len(metrics.TrainScenes), iou, acc, metrics.Train.IoU, metrics.Train.Accuracy)
	if d(iou, metrics.Train.IoU) > 0.005 || d(acc, metrics.Train.Accuracy) > 0.005 {
		t.Errorf("Go and ONNX Runtime give IoU %.4f accuracy %.4f, train.py recorded %.4f %.4f", iou, acc, metrics.Train.IoU, metrics.Train.Accuracy)
	}
	if iou < trainMinIoU || acc < trainMinAccuracy {
		t.Errorf("forest IoU %.4f, accuracy %.4f on the training scenes; want ≥ %.2f and ≥ %.2f", iou, acc, trainMinIoU, trainMinAccuracy)
	}
}

// TestCrossValidation recomputes the five-fold cross-validation by scene of the model card
// (segment/train/cv.sh): folds 0-4 are the shipped recipe trained with seven scenes held out
// each (testdata/cv). The folds' validation scenes must partition the data set, and forest
// IoU and accuracy pooled over every scene, each segmented by the model that never saw it,
// must meet the bar. It is the quality figure of the shipped model, which is the same recipe
// trained on all 35 scenes.
func TestCrossValidation(t *testing.T) {
	needSharedData(t)
	images, err := filepath.Glob(filepath.Join(sharedAmazon, "images", "*_r0c0.png"))
	if err != nil || len(images) == 0 {
		t.Fatalf("no scenes in %s: %v", sharedAmazon, err)
	}
	var folds []string
	for k := 0; k <= 4; k++ {
		folds = append(folds, fmt.Sprintf("testdata/cv/fold%d.onnx", k))
	}
	pooled := &confusion{}
	seen := map[string]string{}
	for _, model := range folds {
		metrics, c := validate(t, model)
		for _, sc := range metrics.ValScenes {
			if prev, ok := seen[sc]; ok {
				t.Errorf("scene %s is held out by both %s and %s", sc, prev, model)
			}
			seen[sc] = model
		}
		pooled.merge(c)
	}
	if len(seen) != len(images) {
		t.Errorf("the folds hold out %d scenes, the data set has %d", len(seen), len(images))
	}
	iou, acc := pooled.iou(), pooled.accuracy()
	t.Logf("cross-validation over %d scenes: forest IoU %.4f, accuracy %.4f", len(seen), iou, acc)
	if iou < cvMinIoU || acc < cvMinAccuracy {
		t.Errorf("cross-validated forest IoU %.4f, accuracy %.4f; want ≥ %.2f and ≥ %.2f", iou, acc, cvMinIoU, cvMinAccuracy)
	}
}
