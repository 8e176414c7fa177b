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
//	f, err := segment.Decode(data, 0) // JPEG, PNG, WebP or TIFF; refuses decompression bombs, honours EXIF orientation
//	...
//	res, err := m.SegmentFrame(f) // or m.Segment(img)
//	png, err := segment.MaskPNG(res.Mask)
//
// Frames of any size are accepted. By default (Auto) the model runs at its own scale: a
// frame larger than the model input is cut into overlapping model-sized windows at full
// resolution and their scores are blended across each overlap (so crowns keep the size the
// model was trained on and no seams show); a frame smaller than the input is mirror-padded.
// Windows run one after another and their scores are summed into one band of rows across
// the frame, which is thresholded into the mask as it completes: no score map of the whole
// frame is held. Only when the frame's ground pixel size is known (Options.PixelSize, or a
// GeoTIFF's through SegmentFrame) and falls outside the range the model was trained for
// (forest.pixel_size_m) is the frame resampled first. Resize scales the whole frame to the
// model input instead (one inference per frame); Tile is Auto without resampling. Pixels
// that are no data (pure black or white, or transparent) are never forest.
//
// Concurrency: a Model owns one pre-allocated input tensor, one output tensor and scratch
// buffers, all reused across calls. Segment and Close are safe for concurrent use; Segment
// calls on one Model are serialised by a mutex. Load several Models for parallel
// inference. The ONNX Runtime environment is process-global: the first Load (or
// RuntimeVersion) loads the shared library, the last Close unloads it, and all Models in a
// process must use the same library.
//
// Guarantees: the returned mask always has the input's size and holds only 0 and 255;
// Coverage equals the fraction of 255 pixels; no-data pixels are 0; Decode never decodes
// pixel data of an image whose header declares more pixels than allowed.
package segment
