package segment

import (
	"context"
	"errors"
	"fmt"
	"image"
	"log/slog"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	ort "github.com/yalue/onnxruntime_go"
)

// Tiling selects how frames whose size differs from the model's input are handled.
type Tiling int

const (
	// Auto, the default, runs the model at the model's own scale: a frame larger than the
	// model input is cut into overlapping model-sized windows at full resolution whose
	// scores are blended (linear ramps across each overlap, so no seams show), and a frame
	// smaller than the input on a side is mirror-padded rather than stretched. When the
	// frame's ground pixel size is known (Options.PixelSize, or Frame.PixelSize through
	// SegmentFrame) and lies outside the range the model was trained for
	// (forest.pixel_size_m), the frame is first resampled to the nearest end of that range.
	Auto Tiling = iota
	// Resize scales the whole frame to the model's input size, runs the model once and
	// scales the scores back. Cost is one inference per frame whatever its size; crowns
	// shrink with the frame.
	Resize
	// Tile is Auto without resampling by pixel size: windows always at the frame's scale.
	Tile
)

// String returns "auto", "resize" or "tile".
func (t Tiling) String() string {
	switch t {
	case Auto:
		return "auto"
	case Resize:
		return "resize"
	case Tile:
		return "tile"
	}
	return fmt.Sprintf("tiling(%d)", int(t))
}

// ParseTiling parses "auto", "resize" or "tile" (empty means Auto).
func ParseTiling(s string) (Tiling, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return Auto, nil
	case "resize":
		return Resize, nil
	case "tile":
		return Tile, nil
	}
	return Auto, fmt.Errorf("tiling %q: want auto, resize or tile", s)
}

// Options configure Load. The zero value is usable.
type Options struct {
	// Threads is the number of intra-op threads ONNX Runtime uses; 0 lets it choose (one
	// per physical core).
	Threads int
	// LibraryPath is the ONNX Runtime shared library; empty means LibraryPath("").
	LibraryPath string
	// Threshold is the forest probability above which a pixel is forest; 0 means the
	// model's forest.threshold metadata, else 0.5.
	Threshold float64
	// Tiling selects Auto (default), Resize or Tile for frames not at the model's input size.
	Tiling Tiling
	// TileOverlap is the least overlap between neighbouring windows in Auto and Tile mode,
	// in pixels, over which their scores are blended; 0 means one eighth of the model's
	// input side.
	TileOverlap int
	// PixelSize is the ground size of a frame pixel in metres, when known (a camera at a
	// fixed height); 0 means unknown. In Auto mode a pixel size outside the model's range
	// makes Segment resample the frame first. SegmentFrame prefers the frame's own.
	PixelSize float64
	// Logger receives load and per-frame debug events; nil discards them.
	Logger *slog.Logger
}

// Timings break down where Segment spent its time.
type Timings struct {
	// Preprocess covers pixel conversion, resizing and normalisation.
	Preprocess time.Duration
	// Inference covers ONNX Runtime Run calls.
	Inference time.Duration
	// Postprocess covers thresholding, mask resizing and stitching.
	Postprocess time.Duration
	// Total is the wall time of the Segment call.
	Total time.Duration
	// Runs is the number of inferences (1 in Resize mode, the window count otherwise).
	Runs int
}

// Result is the outcome of segmenting one frame.
type Result struct {
	// Mask has the input frame's size (origin at 0,0); 255 is forest, 0 is not.
	Mask *image.Gray
	// Coverage is the fraction of mask pixels that are forest, in [0,1].
	Coverage float64
	// Scale is the factor the frame was resampled by before tiling because of its pixel
	// size (0.25: a quarter of its width and height); 1 when it ran at its own scale, 0 in
	// Resize mode.
	Scale float64
	// Timings break down the call's duration.
	Timings
}

// Model is a loaded segmentation model with its input and output tensors allocated once.
// Segment is safe for concurrent use: calls are serialised on the model's buffers (one
// inference at a time per Model; ONNX Runtime itself uses Options.Threads threads). Load
// one Model per worker for parallel inference.
type Model struct {
	mu     sync.Mutex
	info   Info
	opts   Options
	log    *slog.Logger
	closed bool

	sess    *ort.AdvancedSession
	sessOpt *ort.SessionOptions
	in, out *ort.Tensor[float32]
	planes  [3][]float32 // views into the input tensor
	outData []float32
	nclass  int

	ch   [3]int // tensor plane p reads RGB channel ch[p]
	lut  [3][256]float32
	a, b [3]float32
	tau  float32

	rowc   rowCache // rows of frames that are not 8-bit RGBA, converted on demand
	tmp    []float32
	acc    []float32
	score  []float32
	side   []byte
	kx, ky kernelCache // frame -> model
	mx, my kernelCache // model -> frame
	tiles  tiler       // Auto and Tile mode state
}

// Load opens an ONNX model, reads its contract from the metadata properties (see the
// Key constants) and prepares a session with pre-allocated tensors. A bare file name
// names a shipped model (ShippedModel) when one exists. The ONNX Runtime library is
// loaded on first use (see LibraryPath) and shared by all Models.
func Load(modelPath string, opts Options) (*Model, error) {
	if p := ShippedModel(modelPath); p != "" {
		modelPath = p
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "segment")
	if opts.Threshold < 0 || opts.Threshold >= 1 {
		return nil, fmt.Errorf("load %s: threshold %v: must be in [0,1)", modelPath, opts.Threshold)
	}
	if opts.TileOverlap < 0 {
		return nil, fmt.Errorf("load %s: tile overlap %d: must be >= 0", modelPath, opts.TileOverlap)
	}
	if opts.PixelSize < 0 || math.IsNaN(opts.PixelSize) || math.IsInf(opts.PixelSize, 0) {
		return nil, fmt.Errorf("load %s: pixel size %v: must be >= 0", modelPath, opts.PixelSize)
	}
	if opts.Tiling < Auto || opts.Tiling > Tile {
		return nil, fmt.Errorf("load %s: %v: want auto, resize or tile", modelPath, opts.Tiling)
	}
	data, err := os.ReadFile(modelPath)
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	lib := LibraryPath(opts.LibraryPath)
	if err := acquireEnv(lib); err != nil {
		return nil, fmt.Errorf("load %s: %w", modelPath, err)
	}
	m := &Model{opts: opts, log: log}
	if err := m.init(modelPath, data); err != nil {
		return nil, errors.Join(fmt.Errorf("load %s: %w", modelPath, err), m.destroy())
	}
	log.Info("model loaded", "model", modelPath, "model_id", m.info.ID, "version", m.info.Version,
		"input_size", fmt.Sprintf("%dx%d", m.info.Height, m.info.Width), "threads", opts.Threads,
		"tiling", opts.Tiling.String(), "library", lib)
	return m, nil
}

func (m *Model) init(path string, data []byte) error {
	md, err := readMetadata(data)
	if err != nil {
		return err
	}
	info, err := parseContract(path, md)
	if err != nil {
		return err
	}
	if m.opts.Threshold > 0 {
		info.Threshold = m.opts.Threshold
	}
	m.info = info
	ins, outs, err := ort.GetInputOutputInfoWithONNXData(data)
	if err != nil {
		return fmt.Errorf("read model inputs: %w", err)
	}
	inInfo, ok := findIO(ins, info.InputName)
	if !ok {
		return fmt.Errorf("%w: %s %q is not a graph input (have %s)", ErrMetadata, KeyInputName, info.InputName, ioNames(ins))
	}
	if len(ins) > 1 {
		// ONNX Runtime would accept the session and fail every Run on the input left unfed.
		var extra []ort.InputOutputInfo
		for _, io := range ins {
			if io.Name != info.InputName {
				extra = append(extra, io)
			}
		}
		return fmt.Errorf("%w: the graph has inputs %s besides %q, and the package feeds only the image", ErrUnsupportedModel, ioNames(extra), info.InputName)
	}
	outInfo, ok := findIO(outs, info.OutputName)
	if !ok {
		return fmt.Errorf("%w: %s %q is not a graph output (have %s)", ErrMetadata, KeyOutputName, info.OutputName, ioNames(outs))
	}
	if inInfo.DataType != ort.TensorElementDataTypeFloat || outInfo.DataType != ort.TensorElementDataTypeFloat {
		return fmt.Errorf("%w: input and output must be float32 tensors (have %s, %s)", ErrUnsupportedModel, inInfo.DataType, outInfo.DataType)
	}
	H, W := int64(info.Height), int64(info.Width)
	if !dimsMatch(inInfo.Dimensions, []int64{1, 3, H, W}) {
		return fmt.Errorf("%w: input %q has shape %v, metadata says [1 3 %d %d] (NCHW)", ErrUnsupportedModel, info.InputName, inInfo.Dimensions, H, W)
	}
	m.nclass = len(info.Classes)
	if !dimsMatch(outInfo.Dimensions, []int64{1, int64(m.nclass), H, W}) {
		return fmt.Errorf("%w: output %q has shape %v, want [1 %d %d %d] (one channel per class in %s, same size as the input)",
			ErrUnsupportedModel, info.OutputName, outInfo.Dimensions, m.nclass, H, W, KeyClasses)
	}
	if m.in, err = ort.NewEmptyTensor[float32](ort.NewShape(1, 3, H, W)); err != nil {
		return fmt.Errorf("allocate input tensor: %w", err)
	}
	if m.out, err = ort.NewEmptyTensor[float32](ort.NewShape(1, int64(m.nclass), H, W)); err != nil {
		return fmt.Errorf("allocate output tensor: %w", err)
	}
	if m.sessOpt, err = ort.NewSessionOptions(); err != nil {
		return fmt.Errorf("session options: %w", err)
	}
	if m.opts.Threads > 0 {
		if err := m.sessOpt.SetIntraOpNumThreads(m.opts.Threads); err != nil {
			return fmt.Errorf("set threads: %w", err)
		}
		if err := m.sessOpt.SetInterOpNumThreads(1); err != nil {
			return fmt.Errorf("set threads: %w", err)
		}
	}
	// No memory pattern: with it ONNX Runtime plans one block for all
	// intermediate tensors on top of its arena, and the agent spooling
	// frames with the shipped model peaked at 166 MB RSS; without it at
	// 116 MB, at the same speed (BENCHMARKS.md, agent). (Without the arena
	// as well: 346 MB.)
	if err := m.sessOpt.SetMemPattern(false); err != nil {
		return fmt.Errorf("session options: %w", err)
	}
	m.sess, err = ort.NewAdvancedSessionWithONNXData(data, []string{info.InputName}, []string{info.OutputName},
		[]ort.Value{m.in}, []ort.Value{m.out}, m.sessOpt)
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	n := info.Width * info.Height
	d := m.in.GetData()
	m.planes = [3][]float32{d[:n], d[n : 2*n], d[2*n : 3*n]}
	m.outData = m.out.GetData()
	m.ch = [3]int{0, 1, 2}
	if info.ChannelOrder == "BGR" {
		m.ch = [3]int{2, 1, 0}
	}
	for p := 0; p < 3; p++ {
		// Plane p is the model's channel p (reading RGB channel m.ch[p]); Mean and Std are
		// listed in the model's channel order.
		a := info.Scale / info.Std[p]
		b := -info.Mean[p] / info.Std[p]
		m.a[p], m.b[p] = float32(a), float32(b)
		for v := 0; v < 256; v++ {
			m.lut[p][v] = float32(float64(v)*a + b)
		}
	}
	m.tau = scoreThreshold(info.Output, m.nclass, info.Threshold)
	return nil
}

// scoreThreshold maps a probability threshold onto the score Segment compares against:
// the logit for sigmoid outputs, the log-odds against the best other class's logit for
// two-class logits, log p for more classes, p itself for probabilities.
func scoreThreshold(output string, nclass int, t float64) float32 {
	if output == "probabilities" {
		return float32(t)
	}
	if nclass <= 2 {
		return float32(math.Log(t / (1 - t)))
	}
	return float32(math.Log(t))
}

func readMetadata(data []byte) (map[string]string, error) {
	meta, err := ort.GetModelMetadataWithONNXData(data)
	if err != nil {
		return nil, fmt.Errorf("read model metadata: %w", err)
	}
	defer meta.Destroy()
	keys, err := meta.GetCustomMetadataMapKeys()
	if err != nil {
		return nil, fmt.Errorf("read model metadata keys: %w", err)
	}
	md := make(map[string]string, len(keys))
	for _, k := range keys {
		v, _, err := meta.LookupCustomMetadataMap(k)
		if err != nil {
			return nil, fmt.Errorf("read model metadata %q: %w", k, err)
		}
		md[k] = v
	}
	return md, nil
}

func findIO(list []ort.InputOutputInfo, name string) (ort.InputOutputInfo, bool) {
	for _, io := range list {
		if io.Name == name {
			return io, true
		}
	}
	return ort.InputOutputInfo{}, false
}

func ioNames(list []ort.InputOutputInfo) string {
	names := make([]string, len(list))
	for i, io := range list {
		names[i] = fmt.Sprintf("%q", io.Name)
	}
	return strings.Join(names, ", ")
}

// dimsMatch reports whether a graph shape fits want; dynamic (<=0) dimensions match anything.
func dimsMatch(have ort.Shape, want []int64) bool {
	if len(have) != len(want) {
		return false
	}
	for i, d := range have {
		if d > 0 && d != want[i] {
			return false
		}
	}
	return true
}

// Info returns the model's contract and identity. The result is a copy the caller may
// modify.
func (m *Model) Info() Info {
	in := m.info
	in.Classes = slices.Clone(in.Classes)
	in.Metadata = maps.Clone(in.Metadata)
	return in
}

// Close releases the session and tensors. It is safe to call more than once.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	return m.destroy()
}

func (m *Model) destroy() error {
	var errs []error
	if m.sess != nil {
		errs = append(errs, m.sess.Destroy())
		m.sess = nil
	}
	if m.sessOpt != nil {
		errs = append(errs, m.sessOpt.Destroy())
		m.sessOpt = nil
	}
	if m.in != nil {
		errs = append(errs, m.in.Destroy())
		m.in = nil
	}
	if m.out != nil {
		errs = append(errs, m.out.Destroy())
		m.out = nil
	}
	errs = append(errs, releaseEnv())
	return errors.Join(errs...)
}

// Segment classifies every pixel of img as forest or not. The mask has img's size. See
// Options.Tiling for how frames of other sizes than the model's input are handled; the
// frame's pixel size is Options.PixelSize. Pixels that are no data — transparent, or pure
// black or white (every sample <= 2 or >= 253) — are never forest, whatever the model says.
func (m *Model) Segment(img image.Image) (*Result, error) {
	return m.segment(img, m.opts.PixelSize)
}

// SegmentFrame is Segment for a decoded frame, using the frame's own pixel size (a
// GeoTIFF's) when it has one, else Options.PixelSize.
func (m *Model) SegmentFrame(f *Frame) (*Result, error) {
	if f == nil {
		return nil, ErrEmptyImage
	}
	px := m.opts.PixelSize
	if f.PixelSize > 0 {
		px = f.PixelSize
	}
	return m.segment(f.Image, px)
}

func (m *Model) segment(img image.Image, pixelSize float64) (*Result, error) {
	if img == nil || img.Bounds().Empty() {
		return nil, ErrEmptyImage
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	t0 := time.Now()
	b := img.Bounds()
	fw, fh := b.Dx(), b.Dy()
	mw, mh := m.info.Width, m.info.Height
	res := &Result{Mask: image.NewGray(image.Rect(0, 0, fw, fh))}
	src := m.pixels(img)
	defer func() { m.rowc.img = nil }() // the cache must not keep the frame alive
	count := 0
	scale := 1.0
	if m.opts.Tiling == Auto {
		scale = m.scaleFor(pixelSize, fw, fh)
	}
	if m.opts.Tiling != Resize && !(fw == mw && fh == mh && scale == 1) {
		res.Scale = scale
		var err error
		count, err = m.segmentTiles(src, fw, fh, scale, res)
		if err != nil {
			return nil, err
		}
	} else {
		if fw == mw && fh == mh {
			res.Scale = 1
		}
		switch {
		case fw == mw && fh == mh:
			copyRGB(src, 0, 0, mw, mh, m.planes, m.ch, &m.lut)
		case fw%mw == 0 && fh%mh == 0:
			boxDownscale(src, fw/mw, fh/mh, mw, mh, m.planes, m.ch, m.a, m.b)
		default:
			m.tmp, m.acc = resampleRGB(src, m.kx.get(fw, mw), m.ky.get(fh, mh), m.planes, m.ch, m.a, m.b, m.tmp, m.acc)
		}
		t1 := time.Now()
		res.Preprocess = t1.Sub(t0)
		if err := m.sess.Run(); err != nil {
			return nil, fmt.Errorf("segment: run model: %w", err)
		}
		t2 := time.Now()
		res.Inference = t2.Sub(t1)
		res.Runs = 1
		score := m.scorePlane()
		count, m.side = maskFromScore(score, mw, mh, m.tau, res.Mask.Pix, fw, fh, res.Mask.Stride,
			m.mx.get(mw, fw), m.my.get(mh, fh), m.side)
		res.Postprocess = time.Since(t2)
	}
	t3 := time.Now()
	count -= clearNoData(src, fw, fh, res.Mask)
	res.Postprocess += time.Since(t3)
	res.Coverage = float64(count) / float64(fw*fh)
	res.Total = time.Since(t0)
	if m.log.Enabled(context.Background(), slog.LevelDebug) {
		m.log.Debug("frame segmented", "width", fw, "height", fh, "coverage", res.Coverage,
			"runs", res.Runs, "scale", res.Scale, "ms", float64(res.Total.Microseconds())/1000)
	}
	return res, nil
}

// scaleFor returns the factor a frame of pixel size px (metres, 0: unknown) is resampled by
// so that its pixel size falls within the model's range: 1 when unknown, when the model
// has no range, or when within 5 % of the range. Enlarging is capped so that the resampled
// frame has at most max(its own pixel count, 16 megapixels).
func (m *Model) scaleFor(px float64, fw, fh int) float64 {
	lo, hi := m.info.PixelSizeMin, m.info.PixelSizeMax
	if px <= 0 || lo <= 0 {
		return 1
	}
	s := px / min(max(px, lo), hi)
	if s > 1/1.05 && s < 1.05 {
		return 1
	}
	if s > 1 {
		limit := math.Sqrt(max(float64(fw)*float64(fh), 16e6) / (float64(fw) * float64(fh)))
		s = min(s, limit)
	}
	return s
}

// pixels returns img's pixels for reading: RGBA and NRGBA images directly from their Pix
// slices, anything else converted into the model's reusable packed RGB buffer.
func (m *Model) pixels(img image.Image) pixels {
	b := img.Bounds()
	switch p := img.(type) {
	case *image.RGBA:
		return pixels{pix: p.Pix, off: p.PixOffset(b.Min.X, b.Min.Y), stride: p.Stride, bpp: 4}
	case *image.NRGBA:
		return pixels{pix: p.Pix, off: p.PixOffset(b.Min.X, b.Min.Y), stride: p.Stride, bpp: 4}
	}
	// n rows: a band of windows, a box of boxDownscale, or a resampling kernel's taps.
	n := max(m.info.Height, b.Dy()/m.info.Height+1) + 2
	m.rowc.reset(img, n)
	return pixels{bpp: 3, rows: &m.rowc}
}

// scorePlane returns one value per output pixel that is compared against m.tau: the
// forest channel itself for one-class or probability outputs, else the forest logit minus
// the best other logit (two classes) or log-softmax (more).
func (m *Model) scorePlane() []float32 {
	n := m.info.Width * m.info.Height
	f := m.info.ForestChannel
	if m.nclass == 1 || m.info.Output == "probabilities" {
		return m.outData[f*n : (f+1)*n]
	}
	if cap(m.score) < n {
		m.score = make([]float32, n)
	}
	s := m.score[:n]
	fo := m.outData[f*n : (f+1)*n]
	if m.nclass == 2 {
		o := m.outData[(1-f)*n : (2-f)*n]
		for i := range s {
			s[i] = fo[i] - o[i]
		}
		return s
	}
	for i := range s {
		mx := fo[i]
		for c := 0; c < m.nclass; c++ {
			mx = max(mx, m.outData[c*n+i])
		}
		var sum float64
		for c := 0; c < m.nclass; c++ {
			sum += math.Exp(float64(m.outData[c*n+i] - mx))
		}
		s[i] = fo[i] - mx - float32(math.Log(sum))
	}
	return s
}
