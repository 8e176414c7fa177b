package segment

import (
	"image"
	"image/color"
	"os"
	"path/filepath"
	"testing"
)

// requireRuntime skips (or fails under CI) when the ONNX Runtime library cannot be loaded.
func requireRuntime(t testing.TB) {
	t.Helper()
	lib := LibraryPath("")
	if err := acquireEnv(lib); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("ONNX Runtime library is required under CI but could not be loaded from %s: %v (run make deps or set %s)", lib, err, EnvLibraryPath)
		}
		t.Skipf("ONNX Runtime library not available at %s: %v (run make deps or set %s)", lib, err, EnvLibraryPath)
	}
	if err := releaseEnv(); err != nil {
		t.Fatal(err)
	}
}

// loadModel loads path with opts after requireRuntime and closes it on cleanup.
func loadModel(t testing.TB, path string, opts Options) *Model {
	t.Helper()
	requireRuntime(t)
	m, err := Load(path, opts)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

// withMetadata writes a copy of the ONNX model at src with metadata props appended
// (ModelProto field 14, repeated StringStringEntryProto) and returns its path.
func withMetadata(t testing.TB, src string, props map[string]string) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	field := func(num int, b []byte) []byte {
		out := appendVarint(nil, uint64(num<<3|2))
		out = appendVarint(out, uint64(len(b)))
		return append(out, b...)
	}
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	sortStrings(keys)
	for _, k := range keys {
		entry := append(field(1, []byte(k)), field(2, []byte(props[k]))...)
		data = append(data, field(14, entry)...)
	}
	p := filepath.Join(t.TempDir(), "model.onnx")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// tinyProps is the metadata of testdata/tiny.onnx.
func tinyProps() map[string]string {
	return map[string]string{
		KeyModelID: "tiny-green", KeyVersion: "0.0.1", KeyInputName: "image", KeyOutputName: "logits",
		KeyLayout: "NCHW", KeyInputSize: "32x32", KeyMean: "0.5,0.5,0.5", KeyStd: "0.5,0.5,0.5",
		KeyOutput: "logits", KeyClasses: "forest",
	}
}

// greenRamp returns a w×h NRGBA image whose green channel is g(x,y) and red/blue are
// fixed noise that the tiny model ignores.
func greenRamp(w, h int, g func(x, y int) uint8) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.SetNRGBA(x, y, color.NRGBA{uint8(x * 7), g(x, y), uint8(y * 13), 255})
		}
	}
	return img
}
