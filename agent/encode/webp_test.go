package encode

import (
	"os"
	"testing"
)

// TestWebPEncoder: the test command installs libwebp-dev and runs this
// package twice, once as built by default (the system library must be the
// one in use, as on a device with the package's Recommends) and once with
// -tags nodynamic (the built-in WebAssembly one), so both encoders pass
// every test here.
func TestWebPEncoder(t *testing.T) {
	name, why := WebPEncoder()
	t.Logf("WebP encoder: %s (%v)", name, why)
	want := "system libwebp"
	if nodynamic {
		want = "WebAssembly"
	}
	if os.Getenv("CI") == "" && !nodynamic {
		t.Skip("outside CI libwebp-dev may be missing")
	}
	if name != want {
		t.Fatalf("WebP encoder %q (%v), want %q", name, why, want)
	}
}

// BenchmarkWebPEncode encodes the 1-MP NEON sample frame as WebP at
// quality 80 with whichever libwebp this build uses: make bench runs it as
// built by default (the system library) and with -tags nodynamic (the
// WebAssembly one) and BENCHMARKS.md quotes the ratio.
func BenchmarkWebPEncode(b *testing.B) {
	img := load(b, "../testdata/frames/aerial/neon_BLAN_3_751000_4330000_crop.jpg")
	name, _ := WebPEncoder()
	b.Logf("%s, %v", name, img.Bounds().Size())
	if _, err := encodeAt(WebP, img, 80); err != nil { // the WebAssembly one compiles its module once
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := encodeAt(WebP, img, 80); err != nil {
			b.Fatal(err)
		}
	}
}
