// Package fastpng writes 8-bit gray or RGB PNGs with one fixed row filter,
// "Up" (each byte minus the one above), at a zlib level the caller picks.
// image/png instead tries five filters on every row and converts pixels
// through color.Color, which costs far more than it saves on camera photos
// (cloud's legacy re-encoding) and forest masks (segment.MaskPNG).
package fastpng

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"image"
	"io"
	"sync"
)

// writers holds reusable compressors per zlib level: one holds about
// 1 MB of tables.
var writers = func() map[int]*sync.Pool {
	m := map[int]*sync.Pool{}
	for level := zlib.HuffmanOnly; level <= zlib.BestCompression; level++ {
		m[level] = &sync.Pool{New: func() any {
			w, _ := zlib.NewWriterLevel(io.Discard, level)
			return w
		}}
	}
	return m
}()

// Encode writes an 8-bit PNG of r with channels 1 (gray) or 3 (RGB),
// asking fill for each row's samples, compressed at zlib level (from
// zlib.HuffmanOnly to zlib.BestCompression).
func Encode(r image.Rectangle, channels, level int, fill func(y int, row []byte)) ([]byte, error) {
	w, h := r.Dx(), r.Dy()
	var out bytes.Buffer
	if level == zlib.HuffmanOnly {
		out.Grow(h*(1+channels*w) + 1024) // without LZ77, photos barely compress
	}
	out.WriteString("\x89PNG\r\n\x1a\n")
	var ihdr [13]byte
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8] = 8 // bit depth
	ihdr[9] = 0 // gray
	if channels == 3 {
		ihdr[9] = 2 // RGB
	}
	writeChunk(&out, "IHDR", ihdr[:])
	// IDAT chunks of at most 64 KB, as image/png writes them.
	idat := bufio.NewWriterSize(chunkWriter{&out}, 64<<10)
	pool := writers[level]
	zw := pool.Get().(*zlib.Writer)
	defer pool.Put(zw)
	zw.Reset(idat)
	prev, cur := make([]byte, channels*w), make([]byte, channels*w)
	line := make([]byte, 1+channels*w)
	line[0] = 2 // filter "up"; the first row's "above" is zeros
	for y := r.Min.Y; y < r.Max.Y; y++ {
		fill(y, cur)
		for i, v := range cur {
			line[1+i] = v - prev[i]
		}
		if _, err := zw.Write(line); err != nil {
			return nil, err
		}
		prev, cur = cur, prev
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if err := idat.Flush(); err != nil {
		return nil, err
	}
	writeChunk(&out, "IEND", nil)
	return out.Bytes(), nil
}

// Gray writes m as an 8-bit gray PNG at zlib level.
func Gray(m *image.Gray, level int) ([]byte, error) {
	return Encode(m.Rect, 1, level, func(y int, row []byte) {
		copy(row, m.Pix[m.PixOffset(m.Rect.Min.X, y):])
	})
}

// chunkWriter writes each Write as one IDAT chunk.
type chunkWriter struct{ out *bytes.Buffer }

func (c chunkWriter) Write(p []byte) (int, error) {
	writeChunk(c.out, "IDAT", p)
	return len(p), nil
}

func writeChunk(out *bytes.Buffer, typ string, data []byte) {
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(data)))
	copy(hdr[4:], typ)
	out.Write(hdr[:])
	out.Write(data)
	crc := crc32.Update(crc32.ChecksumIEEE(hdr[4:]), crc32.IEEETable, data)
	var c [4]byte
	binary.BigEndian.PutUint32(c[:], crc)
	out.Write(c[:])
}
