package segment

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"math"

	"golang.org/x/image/tiff/lzw"
)

// TIFF support: baseline and BigTIFF files with 8-bit RGB (optionally with an alpha sample),
// 8-bit grey, or YCbCr in JPEG-compressed strips and tiles, chunky or planar, uncompressed,
// LZW, Deflate, PackBits or JPEG ("new-style", with shared JPEGTables), with or without the
// horizontal predictor. Only the first image of the file is read. golang.org/x/image/tiff is
// not used: it refuses JPEG compression and YCbCr, the encoding of the NEON and many drone
// orthophotos.

// TIFF tags read here.
const (
	tagImageWidth      = 256
	tagImageLength     = 257
	tagBitsPerSample   = 258
	tagCompression     = 259
	tagPhotometric     = 262
	tagStripOffsets    = 273
	tagSamplesPerPixel = 277
	tagRowsPerStrip    = 278
	tagStripByteCounts = 279
	tagPlanarConfig    = 284
	tagPredictor       = 317
	tagTileWidth       = 322
	tagTileLength      = 323
	tagTileOffsets     = 324
	tagTileByteCounts  = 325
	tagExtraSamples    = 338
	tagSampleFormat    = 339
	tagJPEGTables      = 347
)

// TIFF compression, photometric and predictor values supported.
const (
	compNone        = 1
	compLZW         = 5
	compJPEG        = 7
	compDeflate     = 8
	compDeflateOld  = 32946
	compPackBits    = 32773
	photoBlackZero  = 1
	photoRGB        = 2
	photoYCbCr      = 6
	predictorNone   = 1
	predictorHorizn = 2
)

// tiffEntry is one IFD entry with its value bytes (inline or at its offset).
type tiffEntry struct {
	typ   uint16
	count uint64
	val   []byte
}

// tiffFile is the parsed header of a TIFF's first image: layout, block offsets and GeoTIFF tags.
type tiffFile struct {
	data     []byte
	bo       binary.ByteOrder
	big      bool
	dir      map[uint16]tiffEntry
	w, h     int
	spp      int // samples per pixel
	photo    int
	comp     int
	pred     int
	planar   bool
	tiled    bool
	alpha    int // 0: no alpha sample; 1: associated (premultiplied); 2: unassociated
	bw, bh   int // block (strip or tile) size
	across   int // blocks per row of blocks
	down     int // blocks per column, per plane
	offsets  []uint64
	counts   []uint64
	jpegTabs []byte
}

var tiffTypeSize = map[uint16]int{1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}

func isTIFF(data []byte) bool {
	return len(data) >= 4 && (string(data[:4]) == "II*\x00" || string(data[:4]) == "MM\x00*" ||
		string(data[:4]) == "II+\x00" || string(data[:4]) == "MM\x00+")
}

// parseTIFF reads the header and first IFD and checks that this package can decode the
// image, without decompressing any pixel data.
func parseTIFF(data []byte) (*tiffFile, error) {
	if len(data) < 8 {
		return nil, errors.New("tiff: header truncated")
	}
	t := &tiffFile{data: data}
	switch string(data[:2]) {
	case "II":
		t.bo = binary.LittleEndian
	case "MM":
		t.bo = binary.BigEndian
	default:
		return nil, errors.New("tiff: bad byte order")
	}
	var ifd uint64
	switch t.bo.Uint16(data[2:]) {
	case 42:
		ifd = uint64(t.bo.Uint32(data[4:]))
	case 43:
		if len(data) < 16 || t.bo.Uint16(data[4:]) != 8 {
			return nil, errors.New("tiff: bad BigTIFF header")
		}
		t.big = true
		ifd = t.bo.Uint64(data[8:])
	default:
		return nil, errors.New("tiff: bad magic number")
	}
	var err error
	if t.dir, err = t.readIFD(ifd); err != nil {
		return nil, err
	}
	w, ok1 := t.uint(tagImageWidth)
	h, ok2 := t.uint(tagImageLength)
	if !ok1 || !ok2 {
		return nil, errors.New("tiff: no image size")
	}
	if w == 0 || h == 0 || w > 1<<24 || h > 1<<24 {
		return nil, fmt.Errorf("tiff: image size %dx%d", w, h)
	}
	t.w, t.h = int(w), int(h)
	spp, ok := t.uint(tagSamplesPerPixel)
	if !ok {
		spp = 1
	}
	t.spp = int(spp)
	photo, ok := t.uint(tagPhotometric)
	if !ok {
		return nil, errors.New("tiff: no PhotometricInterpretation")
	}
	t.photo = int(photo)
	comp, ok := t.uint(tagCompression)
	if !ok {
		comp = compNone
	}
	t.comp = int(comp)
	pred, ok := t.uint(tagPredictor)
	if !ok {
		pred = predictorNone
	}
	t.pred = int(pred)
	if pc, ok := t.uint(tagPlanarConfig); ok && pc == 2 && t.spp > 1 {
		t.planar = true
	}
	for _, b := range t.uints(tagBitsPerSample) {
		if b != 8 {
			return nil, fmt.Errorf("tiff: %d bits per sample (want 8)", b)
		}
	}
	if sf := t.uints(tagSampleFormat); len(sf) > 0 && sf[0] != 1 {
		return nil, fmt.Errorf("tiff: sample format %d (want unsigned integers)", sf[0])
	}
	switch {
	case t.photo == photoRGB && (t.spp == 3 || t.spp == 4):
	case t.photo == photoYCbCr && t.spp == 3 && t.comp == compJPEG:
	case t.photo == photoBlackZero && (t.spp == 1 || t.spp == 2):
	default:
		return nil, fmt.Errorf("tiff: photometric interpretation %d with %d samples per pixel (want RGB, grey, or YCbCr with JPEG compression)", t.photo, t.spp)
	}
	if t.spp == 4 || t.spp == 2 {
		if ex := t.uints(tagExtraSamples); len(ex) > 0 && (ex[0] == 1 || ex[0] == 2) {
			t.alpha = int(ex[0])
		}
	}
	switch t.comp {
	case compNone, compLZW, compDeflate, compDeflateOld, compPackBits:
	case compJPEG:
		if t.planar {
			return nil, errors.New("tiff: JPEG compression with planar configuration")
		}
		if e, ok := t.dir[tagJPEGTables]; ok {
			t.jpegTabs = e.val
		}
	default:
		return nil, fmt.Errorf("tiff: compression %d (want none, LZW, Deflate, PackBits or JPEG)", t.comp)
	}
	if t.pred != predictorNone && t.pred != predictorHorizn {
		return nil, fmt.Errorf("tiff: predictor %d", t.pred)
	}
	offTag, cntTag := uint16(tagStripOffsets), uint16(tagStripByteCounts)
	if tw, ok := t.uint(tagTileWidth); ok {
		th, _ := t.uint(tagTileLength)
		if tw < 8 || th < 8 || tw > 8192 || th > 8192 {
			return nil, fmt.Errorf("tiff: tile size %dx%d", tw, th)
		}
		t.bw, t.bh = int(tw), int(th)
		t.tiled = true
		offTag, cntTag = tagTileOffsets, tagTileByteCounts
	} else {
		t.bw, t.bh = t.w, t.h
		if r, ok := t.uint(tagRowsPerStrip); ok && r > 0 && int(r) < t.h {
			t.bh = int(r)
		}
	}
	t.across = (t.w + t.bw - 1) / t.bw
	t.down = (t.h + t.bh - 1) / t.bh
	n := t.across * t.down
	if t.planar {
		n *= t.spp
	}
	t.offsets, t.counts = t.uints(offTag), t.uints(cntTag)
	if len(t.offsets) < n || len(t.counts) < n {
		return nil, fmt.Errorf("tiff: %d block offsets and %d byte counts for %d blocks", len(t.offsets), len(t.counts), n)
	}
	for i := 0; i < n; i++ {
		if t.offsets[i] > uint64(len(data)) || t.counts[i] > uint64(len(data))-t.offsets[i] {
			return nil, fmt.Errorf("tiff: block %d lies outside the file", i)
		}
	}
	return t, nil
}

// readIFD reads the entries of the IFD at off. Values of unknown types are skipped.
func (t *tiffFile) readIFD(off uint64) (map[uint16]tiffEntry, error) {
	d := t.data
	var n uint64
	p := off
	entry, cnt := uint64(12), uint64(2)
	if t.big {
		entry, cnt = 20, 8
	}
	if off+cnt > uint64(len(d)) {
		return nil, errors.New("tiff: IFD offset outside the file")
	}
	if t.big {
		n = t.bo.Uint64(d[p:])
	} else {
		n = uint64(t.bo.Uint16(d[p:]))
	}
	p += cnt
	if n > 4096 || p+n*entry > uint64(len(d)) {
		return nil, errors.New("tiff: IFD truncated")
	}
	out := make(map[uint16]tiffEntry, n)
	for k := uint64(0); k < n; k++ {
		e := d[p+k*entry : p+(k+1)*entry]
		tag, typ := t.bo.Uint16(e), t.bo.Uint16(e[2:])
		var count uint64
		var inline []byte
		if t.big {
			count, inline = t.bo.Uint64(e[4:]), e[12:20]
		} else {
			count, inline = uint64(t.bo.Uint32(e[4:])), e[8:12]
		}
		sz, ok := tiffTypeSize[typ]
		if !ok || count > uint64(len(d)) {
			continue
		}
		total := uint64(sz) * count
		if total <= uint64(len(inline)) {
			out[tag] = tiffEntry{typ, count, inline[:total]}
			continue
		}
		var o uint64
		if t.big {
			o = t.bo.Uint64(inline)
		} else {
			o = uint64(t.bo.Uint32(inline))
		}
		if o > uint64(len(d)) || total > uint64(len(d))-o {
			return nil, fmt.Errorf("tiff: tag %d value outside the file", tag)
		}
		out[tag] = tiffEntry{typ, count, d[o : o+total]}
	}
	return out, nil
}

// uints returns an integer-valued tag's values (BYTE, SHORT, LONG or LONG8).
func (t *tiffFile) uints(tag uint16) []uint64 {
	e, ok := t.dir[tag]
	if !ok {
		return nil
	}
	out := make([]uint64, 0, e.count)
	for i := uint64(0); i < e.count; i++ {
		switch e.typ {
		case 1:
			out = append(out, uint64(e.val[i]))
		case 3:
			out = append(out, uint64(t.bo.Uint16(e.val[2*i:])))
		case 4:
			out = append(out, uint64(t.bo.Uint32(e.val[4*i:])))
		case 16:
			out = append(out, t.bo.Uint64(e.val[8*i:]))
		default:
			return nil
		}
	}
	return out
}

func (t *tiffFile) uint(tag uint16) (uint64, bool) {
	v := t.uints(tag)
	if len(v) == 0 {
		return 0, false
	}
	return v[0], true
}

// doubles returns a DOUBLE-valued tag's values.
func (t *tiffFile) doubles(tag uint16) []float64 {
	e, ok := t.dir[tag]
	if !ok || e.typ != 12 {
		return nil
	}
	out := make([]float64, e.count)
	for i := range out {
		out[i] = math.Float64frombits(t.bo.Uint64(e.val[8*i:]))
	}
	return out
}

// decode decompresses every block into a new image: *image.NRGBA for RGB (alpha 255 unless
// the file has an alpha sample), *image.RGBA for premultiplied alpha, *image.Gray for grey.
func (t *tiffFile) decode() (image.Image, error) {
	r := image.Rect(0, 0, t.w, t.h)
	var img image.Image
	var pix []byte
	var stride, bpp int
	switch {
	case t.photo == photoBlackZero && t.alpha == 0:
		g := image.NewGray(r)
		img, pix, stride, bpp = g, g.Pix, g.Stride, 1
	case t.alpha == 1:
		m := image.NewRGBA(r)
		img, pix, stride, bpp = m, m.Pix, m.Stride, 4
	default:
		m := image.NewNRGBA(r)
		img, pix, stride, bpp = m, m.Pix, m.Stride, 4
	}
	planes := 1
	if t.planar {
		planes = t.spp
	}
	var buf []byte
	for p := 0; p < planes; p++ {
		for by := 0; by < t.down; by++ {
			for bx := 0; bx < t.across; bx++ {
				i := p*t.across*t.down + by*t.across + bx
				x0, y0 := bx*t.bw, by*t.bh
				// Strips: the last one may be shorter; tiles are always full size.
				bh := t.bh
				if !t.tiled && y0+bh > t.h {
					bh = t.h - y0
				}
				block := t.data[t.offsets[i] : t.offsets[i]+t.counts[i]]
				if t.comp == compJPEG {
					if err := t.jpegBlock(block, x0, y0, pix, stride, bpp); err != nil {
						return nil, fmt.Errorf("tiff: block %d: %w", i, err)
					}
					continue
				}
				spp := t.spp
				if t.planar {
					spp = 1
				}
				want := t.bw * bh * spp
				var err error
				if buf, err = t.inflate(block, buf, want); err != nil {
					return nil, fmt.Errorf("tiff: block %d: %w", i, err)
				}
				if t.pred == predictorHorizn {
					for y := 0; y < bh; y++ {
						row := buf[y*t.bw*spp : (y+1)*t.bw*spp]
						for x := spp; x < len(row); x++ {
							row[x] += row[x-spp]
						}
					}
				}
				t.place(buf, spp, p, x0, y0, bh, pix, stride, bpp)
			}
		}
	}
	if t.photo == photoBlackZero && t.alpha != 0 {
		// Grey with alpha was decoded into NRGBA's red and alpha: copy grey to green and blue.
		for i := 0; i < len(pix); i += 4 {
			pix[i+1], pix[i+2] = pix[i], pix[i]
		}
	}
	return img, nil
}

// inflate decompresses one block into buf (grown as needed) and returns exactly want bytes.
func (t *tiffFile) inflate(block, buf []byte, want int) ([]byte, error) {
	if cap(buf) < want {
		buf = make([]byte, want)
	}
	buf = buf[:want]
	var r io.Reader
	switch t.comp {
	case compNone:
		if len(block) < want {
			return nil, errors.New("not enough pixel data")
		}
		copy(buf, block)
		return buf, nil
	case compPackBits:
		return buf, unpackBits(block, buf)
	case compLZW:
		lr := lzw.NewReader(bytes.NewReader(block), lzw.MSB, 8)
		defer lr.Close()
		r = lr
	case compDeflate, compDeflateOld:
		zr, err := zlib.NewReader(bytes.NewReader(block))
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		r = zr
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, errors.New("not enough pixel data")
		}
		return nil, err
	}
	return buf, nil
}

// unpackBits decodes PackBits data into dst, which it must fill exactly.
func unpackBits(src, dst []byte) error {
	o := 0
	for i := 0; i < len(src) && o < len(dst); {
		n := int(int8(src[i]))
		i++
		switch {
		case n >= 0:
			if i+n+1 > len(src) {
				return errors.New("packbits: literal run truncated")
			}
			o += copy(dst[o:], src[i:i+n+1])
			i += n + 1
		case n != -128:
			if i >= len(src) {
				return errors.New("packbits: repeat run truncated")
			}
			for k := 0; k < 1-n && o < len(dst); k++ {
				dst[o] = src[i]
				o++
			}
			i++
		}
	}
	if o != len(dst) {
		return errors.New("not enough pixel data")
	}
	return nil
}

// place copies a decompressed block (bw×bh, spp samples per pixel; for planar files one plane
// p) into the output pixels, clipped to the image.
func (t *tiffFile) place(buf []byte, spp, p, x0, y0, bh int, pix []byte, stride, bpp int) {
	w := min(t.bw, t.w-x0)
	h := min(bh, t.h-y0)
	for y := 0; y < h; y++ {
		src := buf[y*t.bw*spp:]
		dst := pix[(y0+y)*stride+x0*bpp:]
		switch {
		case bpp == 1: // grey, no alpha (a planar file's unspecified extra planes are skipped)
			if p == 0 {
				for x := 0; x < w; x++ {
					dst[x] = src[x*spp]
				}
			}
		case t.planar:
			// Plane p is sample p: R, G, B then alpha, or grey (into red) then alpha.
			c := p
			if t.photo == photoBlackZero && p == 1 {
				c = 3
			}
			if p == 0 && t.alpha == 0 {
				for x := 0; x < w; x++ {
					dst[4*x+3] = 255
				}
			}
			if c > 3 || (c == 3 && t.alpha == 0) {
				continue
			}
			for x := 0; x < w; x++ {
				dst[4*x+c] = src[x]
			}
		case t.photo == photoBlackZero: // grey + alpha, chunky
			for x := 0; x < w; x++ {
				dst[4*x], dst[4*x+3] = src[2*x], src[2*x+1]
			}
		case spp == 3:
			for x := 0; x < w; x++ {
				s := src[3*x : 3*x+3]
				dst[4*x], dst[4*x+1], dst[4*x+2], dst[4*x+3] = s[0], s[1], s[2], 255
			}
		default: // RGB + extra sample
			for x := 0; x < w; x++ {
				s := src[spp*x : spp*x+4]
				a := s[3]
				if t.alpha == 0 {
					a = 255
				}
				dst[4*x], dst[4*x+1], dst[4*x+2], dst[4*x+3] = s[0], s[1], s[2], a
			}
		}
	}
}

// jpegBlock decodes one JPEG-compressed strip or tile, with the file's shared JPEGTables
// spliced in front of it, and writes its pixels (converted to RGB) into the output.
func (t *tiffFile) jpegBlock(block []byte, x0, y0 int, pix []byte, stride, bpp int) error {
	stream := block
	if len(t.jpegTabs) > 4 && len(block) > 2 {
		// Tables: SOI ... EOI; block: SOI ... EOI. Joined: SOI tables... block-without-SOI.
		tabs := t.jpegTabs
		if bytes.HasSuffix(tabs, []byte{0xFF, 0xD9}) {
			tabs = tabs[:len(tabs)-2]
		}
		stream = make([]byte, 0, len(tabs)+len(block))
		stream = append(append(stream, tabs...), block[2:]...)
	}
	// The JPEG stream declares its own size: refuse one larger than the block before
	// decoding it (a decompression bomb inside a small TIFF).
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(stream))
	if err != nil {
		return err
	}
	if cfg.Width > t.bw || cfg.Height > t.bh {
		return fmt.Errorf("JPEG data of %dx%d in a %dx%d block", cfg.Width, cfg.Height, t.bw, t.bh)
	}
	img, err := jpeg.Decode(bytes.NewReader(stream))
	if err != nil {
		return err
	}
	b := img.Bounds()
	w := min(b.Dx(), t.w-x0)
	h := min(b.Dy(), t.h-y0)
	rgb := t.photo == photoRGB // JPEG data holding RGB, not YCbCr
	for y := 0; y < h; y++ {
		dst := pix[(y0+y)*stride+x0*bpp:]
		switch m := img.(type) {
		case *image.YCbCr:
			for x := 0; x < w; x++ {
				yi, ci := m.YOffset(b.Min.X+x, b.Min.Y+y), m.COffset(b.Min.X+x, b.Min.Y+y)
				yy, cb, cr := m.Y[yi], m.Cb[ci], m.Cr[ci]
				if bpp == 1 {
					dst[x] = yy
					continue
				}
				r, g, bl := yy, cb, cr
				if !rgb {
					r, g, bl = color.YCbCrToRGB(yy, cb, cr)
				}
				dst[4*x], dst[4*x+1], dst[4*x+2], dst[4*x+3] = r, g, bl, 255
			}
		case *image.Gray:
			row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
			for x := 0; x < w; x++ {
				if bpp == 1 {
					dst[x] = row[x]
				} else {
					dst[4*x], dst[4*x+1], dst[4*x+2], dst[4*x+3] = row[x], row[x], row[x], 255
				}
			}
		default:
			for x := 0; x < w; x++ {
				c := color.NRGBAModel.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA)
				if bpp == 1 {
					dst[x] = c.G
				} else {
					dst[4*x], dst[4*x+1], dst[4*x+2], dst[4*x+3] = c.R, c.G, c.B, 255
				}
			}
		}
	}
	return nil
}
