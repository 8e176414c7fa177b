package segment

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Metadata keys read from the ONNX model's metadata_props. The model card
// (models/MODEL_CARD.md) documents each one; a model missing a required key is refused
// with a *MetadataError naming it.
const (
	KeyModelID      = "forest.model_id"       // required: stable identifier, e.g. "forest-unet"
	KeyVersion      = "forest.version"        // required: model version, e.g. "1.0.0"
	KeyInputName    = "forest.input_name"     // required: graph input holding the image tensor
	KeyOutputName   = "forest.output_name"    // required: graph output holding per-pixel scores
	KeyLayout       = "forest.layout"         // required: "NCHW" (the only layout supported)
	KeyInputSize    = "forest.input_size"     // required: "<height>x<width>" the model runs at
	KeyMean         = "forest.mean"           // required: per-channel mean, "r,g,b", after scale
	KeyStd          = "forest.std"            // required: per-channel std, "r,g,b", after scale
	KeyOutput       = "forest.output"         // required: "logits" or "probabilities"
	KeyClasses      = "forest.classes"        // required: comma-separated class names, one per output channel
	KeyName         = "forest.name"           // optional: human-readable name
	KeyScale        = "forest.scale"          // optional: multiplier applied to 0..255 values first (default 1/255)
	KeyChannelOrder = "forest.channel_order"  // optional: "RGB" (default) or "BGR"
	KeySizeMultiple = "forest.size_multiple"  // optional: input sides must be multiples of this (default 1)
	KeyForestClass  = "forest.forest_channel" // optional: output channel of the forest class (default: class named "forest")
	KeyThreshold    = "forest.threshold"      // optional: default forest probability threshold (default 0.5)
	KeyLicense      = "forest.license"        // optional: licence and attribution text
	KeyPixelSize    = "forest.pixel_size_m"   // optional: "min,max" ground metres per pixel the model was trained for
)

var requiredKeys = []string{KeyModelID, KeyVersion, KeyInputName, KeyOutputName, KeyLayout,
	KeyInputSize, KeyMean, KeyStd, KeyOutput, KeyClasses}

// Info describes a loaded model, as read from its metadata and graph.
type Info struct {
	// ID is the model's stable identifier (forest.model_id).
	ID string
	// Name is a human-readable name (forest.name), or ID when absent.
	Name string
	// Version is the model version (forest.version).
	Version string
	// Path is the model file that was loaded.
	Path string
	// Classes are the output class names, one per output channel.
	Classes []string
	// ForestChannel is the output channel holding the forest class.
	ForestChannel int
	// InputName and OutputName are the graph tensors the model is driven through.
	InputName, OutputName string
	// Layout is the input tensor layout; always "NCHW".
	Layout string
	// ChannelOrder is "RGB" or "BGR".
	ChannelOrder string
	// Width and Height are the input size the model runs at, in pixels.
	Width, Height int
	// SizeMultiple is the granularity input sides must respect.
	SizeMultiple int
	// Scale, Mean and Std define normalisation: x = (v*Scale - Mean[c]) / Std[c] for 8-bit v.
	Scale     float64
	Mean, Std [3]float64
	// Output is "logits" or "probabilities".
	Output string
	// Threshold is the forest probability above which a pixel is forest.
	Threshold float64
	// PixelSizeMin and PixelSizeMax are the ground pixel sizes in metres the model was
	// trained for (forest.pixel_size_m); 0 when the model does not say.
	PixelSizeMin, PixelSizeMax float64
	// License is the licence and attribution text, if the model carries one.
	License string
	// Metadata holds every custom metadata property of the model.
	Metadata map[string]string
}

// parseContract validates metadata and returns the contract. lookup returns a property
// and whether it is present.
func parseContract(path string, md map[string]string) (Info, error) {
	merr := &MetadataError{Model: path, Invalid: map[string]string{}}
	for _, k := range requiredKeys {
		if strings.TrimSpace(md[k]) == "" {
			merr.Missing = append(merr.Missing, k)
		}
	}
	in := Info{
		ID: md[KeyModelID], Name: md[KeyName], Version: md[KeyVersion], Path: path,
		InputName: md[KeyInputName], OutputName: md[KeyOutputName],
		Layout: strings.ToUpper(strings.TrimSpace(md[KeyLayout])), Output: strings.ToLower(strings.TrimSpace(md[KeyOutput])),
		ChannelOrder: "RGB", SizeMultiple: 1, Scale: 1.0 / 255, Threshold: 0.5,
		License: md[KeyLicense], Metadata: md,
	}
	if in.Name == "" {
		in.Name = in.ID
	}
	if v := md[KeyLayout]; v != "" && in.Layout != "NCHW" {
		merr.Invalid[KeyLayout] = fmt.Sprintf("%q: only NCHW is supported", v)
	}
	if v := md[KeyOutput]; v != "" && in.Output != "logits" && in.Output != "probabilities" {
		merr.Invalid[KeyOutput] = fmt.Sprintf("%q: want logits or probabilities", v)
	}
	if v := md[KeyInputSize]; v != "" {
		h, w, ok := parseSize(v)
		if !ok {
			merr.Invalid[KeyInputSize] = fmt.Sprintf("%q: want <height>x<width>", v)
		}
		in.Height, in.Width = h, w
	}
	for _, kv := range []struct {
		key string
		dst *[3]float64
		pos bool
	}{{KeyMean, &in.Mean, false}, {KeyStd, &in.Std, true}} {
		v := md[kv.key]
		if v == "" {
			continue
		}
		f, err := parseFloats(v, 3)
		if err == nil && kv.pos && (f[0] <= 0 || f[1] <= 0 || f[2] <= 0) {
			err = fmt.Errorf("values must be > 0")
		}
		if err != nil {
			merr.Invalid[kv.key] = fmt.Sprintf("%q: %v", v, err)
			continue
		}
		copy(kv.dst[:], f)
	}
	if v := md[KeyClasses]; v != "" {
		for _, c := range strings.Split(v, ",") {
			in.Classes = append(in.Classes, strings.TrimSpace(c))
		}
	}
	if v := md[KeyScale]; v != "" {
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || f <= 0 || math.IsInf(f, 0) {
			merr.Invalid[KeyScale] = fmt.Sprintf("%q: want a positive number", v)
		} else {
			in.Scale = f
		}
	}
	if v := md[KeyChannelOrder]; v != "" {
		switch o := strings.ToUpper(strings.TrimSpace(v)); o {
		case "RGB", "BGR":
			in.ChannelOrder = o
		default:
			merr.Invalid[KeyChannelOrder] = fmt.Sprintf("%q: want RGB or BGR", v)
		}
	}
	if v := md[KeySizeMultiple]; v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 {
			merr.Invalid[KeySizeMultiple] = fmt.Sprintf("%q: want a positive integer", v)
		} else {
			in.SizeMultiple = n
			if in.Width > 0 && (in.Width%n != 0 || in.Height%n != 0) {
				merr.Invalid[KeyInputSize] = fmt.Sprintf("%dx%d is not a multiple of %s %d", in.Height, in.Width, KeySizeMultiple, n)
			}
		}
	}
	in.ForestChannel = -1
	if v := md[KeyForestClass]; v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 || (len(in.Classes) > 0 && n >= len(in.Classes)) {
			merr.Invalid[KeyForestClass] = fmt.Sprintf("%q: want a channel index below %d", v, len(in.Classes))
		} else {
			in.ForestChannel = n
		}
	} else if len(in.Classes) > 0 {
		for i, c := range in.Classes {
			if strings.EqualFold(c, "forest") {
				in.ForestChannel = i
			}
		}
		if in.ForestChannel < 0 {
			merr.Missing = append(merr.Missing, KeyForestClass)
		}
	}
	if v := md[KeyThreshold]; v != "" {
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || f <= 0 || f >= 1 {
			merr.Invalid[KeyThreshold] = fmt.Sprintf("%q: want a number in (0,1)", v)
		} else {
			in.Threshold = f
		}
	}
	if v := md[KeyPixelSize]; v != "" {
		parts := strings.Split(v, ",")
		if len(parts) == 1 {
			parts = append(parts, parts[0])
		}
		f, err := parseFloats(strings.Join(parts, ","), 2)
		if err != nil || f[0] <= 0 || f[1] < f[0] {
			merr.Invalid[KeyPixelSize] = fmt.Sprintf("%q: want min,max metres with 0 < min <= max", v)
		} else {
			in.PixelSizeMin, in.PixelSizeMax = f[0], f[1]
		}
	}
	if len(merr.Missing) > 0 || len(merr.Invalid) > 0 {
		return in, merr
	}
	return in, nil
}

func parseSize(s string) (h, w int, ok bool) {
	a, b, found := strings.Cut(strings.ToLower(strings.TrimSpace(s)), "x")
	if !found {
		return 0, 0, false
	}
	h, err1 := strconv.Atoi(strings.TrimSpace(a))
	w, err2 := strconv.Atoi(strings.TrimSpace(b))
	if err1 != nil || err2 != nil || h < 1 || w < 1 || h > 8192 || w > 8192 {
		return 0, 0, false
	}
	return h, w, true
}

func parseFloats(s string, n int) ([]float64, error) {
	parts := strings.Split(s, ",")
	if len(parts) != n {
		return nil, fmt.Errorf("want %d comma-separated numbers", n)
	}
	out := make([]float64, n)
	for i, p := range parts {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%q is not a number", p)
		}
		out[i] = f
	}
	return out, nil
}
