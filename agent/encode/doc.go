// Package encode chooses how a frame is encoded for the link: WebP or JPEG
// at the lowest quality whose structural similarity (SSIM) to the image
// being encoded reaches a target.
//
// SSIM is Wang et al. (2004) on luma (BT.601 Y' of the RGB a reader
// displays), with the 11×11 Gaussian window (σ 1.5), K1 0.01, K2 0.03,
// L 255, averaged over every window inside the frame at full resolution.
// It matches its definition (TestSSIMDefinition) and scikit-image's
// structural_similarity on images decoded by Pillow (TestSSIMReference).
// A trial is measured on its own bytes decoded again: JPEG by image/jpeg,
// WebP by golang.org/x/image/webp with video-range Y'CbCr as libwebp
// converts it (image/color's full-range reading would make it darker).
//
// WebP is encoded by github.com/gen2brain/webp: through the system's
// libwebp.so when one is installed (Debian's libwebp-dev, which the device
// package recommends), else by libwebp 1.4 compiled to WebAssembly and run
// in the process by wazero, so the agent works without any C library, at
// about 4 times the CPU and 40 MB more peak memory (WebPEncoder). The
// output of either is checked by the same SSIM.
//
// A Searcher is used by one goroutine (the agent's pipeline); it keeps the
// last frame's quality as the start of the next search. Memory beyond the
// trial encodings is two luma planes (one byte per pixel) and a few rows.
package encode
