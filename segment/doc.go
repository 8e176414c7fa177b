// Package segment decides, on the device, which pixels of a frame are forest. It runs an
// ONNX segmentation model through ONNX Runtime (github.com/yalue/onnxruntime_go) and
// returns a 0/255 mask at the frame's size, the forest coverage fraction and timings.
//
// The model's contract — input and output names, NCHW layout, input size, normalisation,
// whether it emits logits or probabilities, class names, id and version — is read from
// the ONNX file's metadata properties (the Key constants; see models/MODEL_CARD.md), so a
// different model can be dropped in without code changes. A model without that metadata
// is refused with a *MetadataError naming the missing keys.
//
// Typical use:
//
//	m, err := segment.Load("segment/models/forest-unet-v1.onnx", segment.Options{Threads: 2})
//	...
//	defer m.Close()
//	f, err := segment.Decode(jpegBytes, 0) // refuses decompression bombs, honours EXIF orientation
//	...
//	res, err := m.Segment(f.Image)
//	png, err := segment.MaskPNG(res.Mask)
//
// Frames of any size are accepted. By default (Resize) the frame is resampled to the
// model's input size (area averaging when shrinking, bilinear when enlarging), the model
// runs once and its scores are resampled bilinearly back to the frame's size before
// thresholding. With Options.Tiling = Tile, frames larger than the model input are cut
// into overlapping model-sized windows at full resolution, and each output pixel is taken
// from the window whose centre is nearest.
//
// Concurrency: a Model owns one pre-allocated input tensor, one output tensor and scratch
// buffers, all reused across calls. Segment and Close are safe for concurrent use; Segment
// calls on one Model are serialised by a mutex. Load several Models for parallel
// inference. The ONNX Runtime environment is process-global: the first Load (or
// RuntimeVersion) loads the shared library, the last Close unloads it, and all Models in a
// process must use the same library.
//
// Guarantees: the returned mask always has the input's size and holds only 0 and 255;
// Coverage equals the fraction of 255 pixels; Decode never decodes pixel data of an image
// whose header declares more pixels than allowed.
package segment
