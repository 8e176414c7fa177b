// Package encode chooses how a frame is encoded for the link: JPEG at the
// lowest quality whose structural similarity (SSIM, on luma, against the
// image being encoded) reaches a target.
package encode
