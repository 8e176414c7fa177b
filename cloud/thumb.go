package cloud

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	_ "image/png" // masks

	"golang.org/x/image/draw"
)

// thumbSize is the longer side of a thumbnail in pixels.
const thumbSize = 240

// thumbnail returns a small JPEG of the frame whose sidecar is at key, with
// its forest mask laid over it (forest tinted green). Thumbnails are made
// by at most fleet.thumb_workers at once, one per frame however many ask,
// and cached (frames never change once stored).
func (f *fleet) thumbnail(ctx context.Context, key string) ([]byte, error) {
	if b, ok := f.thumbs.get(key); ok {
		return b, nil
	}
	return f.flights.do(ctx, key, func() ([]byte, error) {
		select {
		case f.thumbSem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-f.thumbSem }()
		b, err := f.makeThumb(ctx, key)
		if err == nil {
			f.thumbs.put(key, b)
		}
		return b, err
	})
}

func (f *fleet) makeThumb(ctx context.Context, key string) ([]byte, error) {
	sc, err := f.sidecar(ctx, key)
	if err != nil {
		return nil, err
	}
	raw, found, err := f.s.store.get(ctx, sc.Image.Key)
	if err != nil || !found {
		return nil, fmt.Errorf("image %s: found %v: %w", sc.Image.Key, found, err)
	}
	img, err := decodeBounded(raw, f.s.cfg.Consumer.MaxPixels)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", sc.Image.Key, err)
	}
	b := img.Bounds()
	w, h := thumbSize, thumbSize
	if b.Dx() >= b.Dy() {
		h = max(1, b.Dy()*thumbSize/max(1, b.Dx()))
	} else {
		w = max(1, b.Dx()*thumbSize/max(1, b.Dy()))
	}
	out := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.ApproxBiLinear.Scale(out, out.Bounds(), img, b, draw.Src, nil)
	if sc.Mask != nil {
		if mb, found, err := f.s.store.get(ctx, sc.Mask.Key); err == nil && found {
			if m, err := decodeBounded(mb, f.s.cfg.Consumer.MaxPixels); err == nil {
				overlay(out, m)
			}
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, out, &jpeg.Options{Quality: 75}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decodeBounded decodes an image after checking from its header that it
// has at most maxPixels pixels.
func decodeBounded(b []byte, maxPixels int) (image.Image, error) {
	cfg, _, err := image.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width*cfg.Height > maxPixels {
		return nil, fmt.Errorf("%dx%d pixels, over consumer.max_pixels", cfg.Width, cfg.Height)
	}
	img, _, err := image.Decode(bytes.NewReader(b))
	return img, err
}

// overlay tints the pixels of dst that mask (scaled to dst, nearest
// neighbour) marks as forest green, and darkens the others a little.
func overlay(dst *image.RGBA, mask image.Image) {
	mb, db := mask.Bounds(), dst.Bounds()
	for y := db.Min.Y; y < db.Max.Y; y++ {
		my := mb.Min.Y + (y-db.Min.Y)*mb.Dy()/db.Dy()
		for x := db.Min.X; x < db.Max.X; x++ {
			mx := mb.Min.X + (x-db.Min.X)*mb.Dx()/db.Dx()
			g := color.GrayModel.Convert(mask.At(mx, my)).(color.Gray).Y
			i := dst.PixOffset(x, y)
			p := dst.Pix[i : i+3 : i+3]
			if g >= 128 {
				p[0], p[1], p[2] = uint8(int(p[0])*6/10), uint8((int(p[1])*6+255*4)/10), uint8(int(p[2])*6/10)
			} else {
				p[0], p[1], p[2] = uint8(int(p[0])*8/10), uint8(int(p[1])*8/10), uint8(int(p[2])*8/10)
			}
		}
	}
}
