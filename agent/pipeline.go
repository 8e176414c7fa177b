package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/forestwatch/forest/agent/source"
	"github.com/forestwatch/forest/agent/status"
	"github.com/forestwatch/forest/segment"
	"github.com/forestwatch/forest/spool"
	"github.com/forestwatch/forest/wire"
)

// Meta is the JSON stored in spool.Record.Meta: everything the drain needs,
// besides the image and mask, to build the frame's wire.Message.
type Meta struct {
	// V is the version of this layout: 2. The frame's sequence number is
	// its spool id. Version 1 (written before the spool owned the
	// numbering) carried it in Seq.
	V      int    `json:"v"`
	Device string `json:"device"`
	// Seq is the sequence number of a version 1 record; 0 otherwise.
	Seq         uint64    `json:"seq,omitempty"`
	Captured    time.Time `json:"captured"`
	ContentType string    `json:"content_type"`
	// SHA256 is the hex SHA-256 of the transmitted image, taken when the
	// frame was encoded and sent as is (wire.Frame.ImageSHA256).
	SHA256   string       `json:"sha256,omitempty"`
	Width    int          `json:"width"`
	Height   int          `json:"height"`
	Coverage float64      `json:"coverage"`
	Model    string       `json:"model,omitempty"`
	GPS      *wire.GPS    `json:"gps,omitempty"`
	Camera   *wire.Camera `json:"camera,omitempty"`
	// Source names the capture ("dir:<file>", "http:<url>", "exec:<cmd>");
	// the drain sends the type and the name cleaned by wire.CleanName.
	Source string `json:"source,omitempty"`
	// ClockUnsynced says the clock was not known to be right at capture.
	ClockUnsynced bool `json:"clock_unsynced,omitempty"`
}

// segmenter is the part of *segment.Model the pipeline uses.
type segmenter interface {
	SegmentFrame(*segment.Frame) (*segment.Result, error)
	Info() segment.Info
}

// metaVersion is the Meta layout this build writes.
const metaVersion = 2

// seq returns the sequence number of the frame stored as record id.
func (m *Meta) seq(id uint64) uint64 {
	if m.V == 1 {
		return m.Seq
	}
	return id
}

// putter is the part of *spool.Queue the pipeline uses.
type putter interface {
	Put(ctx context.Context, r *spool.Record) (uint64, error)
	Attempt(key string) (attempts int, id uint64, err error)
	ClearAttempts(key string) error
}

// FrameReport describes one processed capture, for `run --once` and tests.
type FrameReport struct {
	Name     string
	Seq      uint64
	SpoolID  uint64 // 0 when not spooled
	Coverage float64
	// Scale is the factor the frame was resampled by for the model because
	// of its pixel size (segment.Result.Scale); 1 when it ran at its own.
	Scale    float64
	Width    int
	Height   int
	Bytes    int    // transmitted image bytes
	Filtered string // "thin" or "drop" when the filter skipped it
	Overlay  string // overlay PNG written, if any
	Duration time.Duration
}

// pipeline turns captures into spooled frames.
type pipeline struct {
	cfg     *Config
	model   segmenter
	modelID string
	q       putter
	m       *status.Metrics
	status  *status.Tracker
	log     *slog.Logger
	report  func(FrameReport)
	// hook, in tests, is called with "encode" and "encoded" around the
	// encoding and with "put" before the spool Put.
	hook func(stage string)
	// clockSynced reports whether the clock can be trusted (clockSynced).
	clockSynced func() bool
	// memLimit is Options.GoMemoryLimit.
	memLimit int64
	enc      *encoder      // made on the first frame
	below    atomic.Uint64 // frames below min_coverage seen, for thinning
	busy     atomic.Int64  // start of the frame in flight (unix ns), 0 when idle
}

// priority maps coverage to a spool priority: 0 (<25 % forest) to 4 (100 %).
// Frames with more forest outlive frames with less when the spool is full.
func priority(coverage float64) int { return int(coverage * 4) }

// handle is the source Handler: count the attempt, decode once, segment,
// filter, encode, Put. The context only bounds waiting for the spool to
// accept the Put; once handed over, Put completes (see spool.Queue.Put).
//
// A capture with a key is counted (spool.Queue.Attempt, durably) before
// the risky work: one whose processing began more than
// source.max_attempts times without ending (the agent crashed, or its
// watchdog stopped it, every time) is refused as ErrBadFrame, so the
// restart loop it caused ends and capture goes on with the next.
func (p *pipeline) handle(ctx context.Context, c *source.Capture) (err error) {
	t0 := time.Now()
	p.busy.Store(t0.UnixNano())
	defer p.busy.Store(0)
	if c.Key != "" {
		n, id, aerr := p.q.Attempt(c.Key)
		switch {
		case aerr != nil:
			return fmt.Errorf("count the attempt at %s: %w", c.Name, aerr)
		case id != 0:
			p.log.Info("capture was spooled before; not spooling it again", "capture", c.Name, "spool_id", id)
			return nil
		case n > p.cfg.Source.MaxAttempts:
			p.m.Abandoned.Inc()
			return fmt.Errorf("%w: %s: processing it began %d times and never ended (the agent crashed or its watchdog stopped it each time); see source.max_attempts",
				ErrBadFrame, c.Name, n-1)
		}
		defer func() {
			if err != nil && !errors.Is(err, ErrBadFrame) {
				// It ended, unspooled (a full spool): not a crash.
				if cerr := p.q.ClearAttempts(c.Key); cerr != nil {
					p.log.Warn("clear attempts", "capture", c.Name, "err", cerr)
				}
			}
		}()
	}
	p.m.Captured.WithLabelValues(c.Source).Inc()
	td := time.Now()
	f, err := segment.Decode(c.Data, p.cfg.Segment.MaxPixels)
	if errors.Is(err, segment.ErrTooLarge) {
		return fmt.Errorf("%w: %s: %w (refused before decoding; raise segment.max_pixels to take such frames)", ErrBadFrame, c.Name, err)
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadFrame, c.Name, err)
	}
	if p.memLimit > 0 {
		// A frame holds about 4 bytes per pixel at once (decoded frame,
		// mask, camera bytes, spool record): a limit below that would
		// have the collector run without end.
		debug.SetMemoryLimit(max(p.memLimit, 5*int64(f.Width)*int64(f.Height)))
	}
	ts := time.Now()
	res, err := p.model.SegmentFrame(f)
	if err != nil {
		return fmt.Errorf("segment %s: %w", c.Name, err)
	}
	tDecode, tSegment := ts.Sub(td), time.Since(ts)
	p.m.SegmentSeconds.Observe(tSegment.Seconds())
	p.m.Segmented.Inc()
	rep := FrameReport{Name: c.Name, Coverage: res.Coverage, Scale: res.Scale, Width: f.Width, Height: f.Height}

	if g := p.cfg.Segment; res.Coverage < g.MinCoverage && g.Filter != "keep" {
		n := p.below.Add(1)
		if g.Filter == "drop" || (n-1)%uint64(g.ThinEvery) != 0 {
			p.m.Filtered.WithLabelValues(g.Filter).Inc()
			rep.Filtered = g.Filter
			rep.Duration = time.Since(t0)
			p.log.Debug("frame filtered", "file", c.Name, "coverage", res.Coverage, "filter", g.Filter)
			if p.report != nil {
				p.report(rep)
			}
			return nil
		}
	}

	if p.enc == nil {
		// Each trial of the quality search counts as progress for the
		// watchdog: a 12-MP frame's search can take longer than
		// WatchdogSec without being hung.
		progress := func() { p.busy.Store(time.Now().UnixNano()) }
		if p.enc, err = newEncoder(p.cfg.Encode, progress); err != nil {
			return err
		}
	}
	if p.hook != nil {
		p.hook("encode")
	}
	enc, err := p.enc.frame(c.Data, f, res.Mask)
	if p.hook != nil {
		p.hook("encoded")
	}
	if err != nil {
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	captured := c.Time
	meta := Meta{
		V: metaVersion, Device: p.cfg.Device.ID, ContentType: enc.ContentType, SHA256: wire.Sum(enc.Image), Width: enc.Width, Height: enc.Height,
		Coverage: res.Coverage, Model: p.modelID, Source: c.Source + ":" + c.Name, ClockUnsynced: !p.clockSynced(),
	}
	if x := f.EXIF; x != nil {
		if !x.DateTimeOriginal.IsZero() {
			captured = x.DateTimeOriginal
		}
		if g := x.GPS; g != nil {
			meta.GPS = &wire.GPS{Lat: g.Latitude, Lon: g.Longitude, Alt: g.Altitude, HasAlt: g.HasAltitude}
		}
		if x.Make != "" || x.Model != "" {
			meta.Camera = &wire.Camera{Make: strings.TrimSpace(x.Make), Model: strings.TrimSpace(x.Model)}
		}
	}
	if captured.IsZero() {
		captured = time.Now()
	}
	meta.Captured = captured.UTC()
	mb, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("encode frame meta: %w", err)
	}
	if p.hook != nil {
		p.hook("put")
	}
	rec := &spool.Record{Priority: priority(res.Coverage), Image: enc.Image, Mask: enc.Mask, Meta: mb, Key: c.Key,
		ClockUnsynced: meta.ClockUnsynced}
	tp := time.Now()
	id, err := p.q.Put(ctx, rec)
	tPut := time.Since(tp)
	switch {
	case errors.Is(err, spool.ErrDuplicate):
		p.log.Info("file was spooled before; not spooling it again", "file", c.Name, "spool_id", id)
		return nil
	case err != nil:
		p.m.SpoolErrors.Inc()
		if errors.Is(err, spool.ErrFull) {
			p.log.Warn("spool full, frame not spooled", "file", c.Name, "coverage", res.Coverage, "err", err)
		}
		return fmt.Errorf("spool frame %s: %w", c.Name, err)
	}
	p.m.Spooled.Inc()
	st := p.m.StageSeconds
	st.WithLabelValues("decode").Observe(tDecode.Seconds())
	st.WithLabelValues("segment").Observe(tSegment.Seconds())
	st.WithLabelValues("encode").Observe(enc.ImageTime.Seconds())
	st.WithLabelValues("mask").Observe(enc.MaskTime.Seconds())
	st.WithLabelValues("put").Observe(tPut.Seconds())
	seq := id
	d := time.Since(t0)
	p.m.FrameSeconds.Observe(d.Seconds())
	rep.Seq, rep.SpoolID, rep.Width, rep.Height, rep.Bytes, rep.Duration = seq, id, enc.Width, enc.Height, len(enc.Image), d
	if dir := p.cfg.Segment.OverlayDir; dir != "" {
		rep.Overlay = p.writeOverlay(dir, c.Name, seq, enc)
	}
	p.status.Frame(status.Frame{
		ID: wire.FrameID(p.cfg.Device.ID, seq), Name: c.Name, Seq: seq, SpoolID: id, Coverage: res.Coverage,
		Captured: meta.Captured, Spooled: time.Now(), Width: enc.Width, Height: enc.Height, Bytes: int64(len(enc.Image)),
		Thumb: thumbnail(enc.Upright, enc.MaskImg, 160),
	})
	p.log.Debug("frame spooled", "file", c.Name, "seq", seq, "spool_id", id, "coverage", res.Coverage,
		"bytes", len(enc.Image), "content_type", enc.ContentType, "quality", enc.Quality, "ssim", enc.SSIM, "ms", d.Milliseconds())
	if p.report != nil {
		p.report(rep)
	}
	return nil
}

// busyFor returns how long the frame in flight has been processed (since
// its last progress: each trial of a quality search counts), 0 when the
// pipeline is idle.
func (p *pipeline) busyFor() time.Duration {
	if t := p.busy.Load(); t != 0 {
		return time.Since(time.Unix(0, t))
	}
	return 0
}

func (p *pipeline) writeOverlay(dir, name string, seq uint64, enc *encoded) string {
	ov := segment.Overlay(enc.Upright, enc.MaskImg)
	if ov == nil {
		return ""
	}
	base := strings.TrimSuffix(filepath.Base(name), filepath.Ext(name))
	if base == "" || base == "." {
		base = "frame"
	}
	path := filepath.Join(dir, fmt.Sprintf("%012d-%s.png", seq, base))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.log.Warn("write overlay", "err", err)
		return ""
	}
	fh, err := os.Create(path)
	if err != nil {
		p.log.Warn("write overlay", "err", err)
		return ""
	}
	err = png.Encode(fh, ov)
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		p.log.Warn("write overlay", "err", err)
		return ""
	}
	return path
}
