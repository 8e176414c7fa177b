package main

import (
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/forestwatch/forest/internal/human"
	"github.com/forestwatch/forest/internal/procstat"
	"github.com/forestwatch/forest/segment"
	"github.com/forestwatch/forest/spool"
)

// segmentResult is one line of `forest-agent segment --json`.
type segmentResult struct {
	File     string  `json:"file"`
	Coverage float64 `json:"coverage"`
	Width    int     `json:"width"`
	Height   int     `json:"height"`
	Scale    float64 `json:"scale"`
	// MS is decode plus segmentation; SegmentMS the Model.Segment call alone,
	// which ran the model Windows times (tiles, or 1 when resized), and
	// SegmentCPUMS the process CPU time (all threads) during that call.
	MS           float64 `json:"ms"`
	SegmentMS    float64 `json:"segment_ms"`
	SegmentCPUMS float64 `json:"segment_cpu_ms"`
	Windows      int     `json:"windows"`
	Mask         string  `json:"mask,omitempty"`
	Overlay      string  `json:"overlay,omitempty"`
	Error        string  `json:"error,omitempty"`
}

// segmentOptions configure segmentFiles.
type segmentOptions struct {
	// Model is the ONNX model; Library the ONNX Runtime library ("" searches).
	Model, Library string
	// Threads is the ONNX Runtime thread count (0 lets it choose).
	Threads int
	// PixelSize is the images' ground metres per pixel (0: unknown).
	PixelSize float64
	// OutDir, when set, receives <name>.mask.png (0/255) and
	// <name>.overlay.png per image.
	OutDir string
	// JSON writes one JSON object per image instead of a table row.
	JSON bool
	// MaxPixels bounds decoded frames (0 means segment.DefaultMaxPixels).
	MaxPixels int
}

// segmentFiles segments image files with the model and writes, per image,
// its coverage, size and timing to w. It returns the number of files that
// failed; a file that fails does not stop the others.
func segmentFiles(files []string, o segmentOptions, w io.Writer) (failed int, err error) {
	m, err := segment.Load(o.Model, segment.Options{Threads: o.Threads, LibraryPath: o.Library, PixelSize: o.PixelSize})
	if err != nil {
		return 0, err
	}
	defer m.Close()
	if o.OutDir != "" {
		if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
			return 0, err
		}
	}
	enc := json.NewEncoder(w)
	if !o.JSON {
		fmt.Fprintf(w, "%-48s %9s %11s %9s\n", "file", "coverage", "size", "ms")
	}
	for _, f := range files {
		r := segmentOne(m, f, o)
		if r.Error != "" {
			failed++
		}
		if o.JSON {
			if err := enc.Encode(r); err != nil {
				return failed, err
			}
			continue
		}
		if r.Error != "" {
			fmt.Fprintf(w, "%-48s error: %s\n", f, r.Error)
			continue
		}
		fmt.Fprintf(w, "%-48s %8.1f%% %11s %9.1f\n", f, r.Coverage*100, fmt.Sprintf("%dx%d", r.Width, r.Height), r.MS)
	}
	return failed, nil
}

func segmentOne(m *segment.Model, file string, o segmentOptions) segmentResult {
	r := segmentResult{File: file}
	data, err := os.ReadFile(file)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	t0 := time.Now()
	f, err := segment.Decode(data, o.MaxPixels)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	cpu0 := procstat.ProcessCPU()
	res, err := m.SegmentFrame(f)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.SegmentCPUMS = float64((procstat.ProcessCPU() - cpu0).Microseconds()) / 1000
	r.MS = float64(time.Since(t0).Microseconds()) / 1000
	r.SegmentMS, r.Windows = float64(res.Total.Microseconds())/1000, res.Runs
	r.Coverage, r.Width, r.Height, r.Scale = res.Coverage, f.Width, f.Height, res.Scale
	if o.OutDir == "" {
		return r
	}
	base := strings.TrimSuffix(filepath.Base(file), filepath.Ext(file))
	mask, err := segment.MaskPNG(res.Mask)
	if err == nil {
		r.Mask = filepath.Join(o.OutDir, base+".mask.png")
		err = os.WriteFile(r.Mask, mask, 0o644)
	}
	if err == nil {
		r.Overlay = filepath.Join(o.OutDir, base+".overlay.png")
		var fh *os.File
		if fh, err = os.Create(r.Overlay); err == nil {
			err = png.Encode(fh, segment.Overlay(f.Image, res.Mask))
			if cerr := fh.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		r.Error = err.Error()
	}
	return r
}

// spoolStats prints the statistics of the spool in dir (not open by a
// running agent) as text or JSON.
func spoolStats(dir string, asJSON bool, w io.Writer) error {
	st, err := spool.Inspect(dir)
	if err != nil {
		return err
	}
	if asJSON {
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(st)
	}
	fmt.Fprintf(w, "spool %s\n", dir)
	fmt.Fprintf(w, "  frames        %d\n", st.Frames)
	fmt.Fprintf(w, "  bytes         %s (%d)\n", human.Bytes(st.Bytes), st.Bytes)
	fmt.Fprintf(w, "  file          %s\n", human.Bytes(st.FileBytes))
	if st.Frames > 0 {
		fmt.Fprintf(w, "  oldest        %s (%s old)\n", st.OldestCreated.UTC().Format(time.RFC3339), st.OldestAge.Round(time.Second))
	}
	fmt.Fprintf(w, "  last id       %d\n", st.LastID)
	fmt.Fprintf(w, "  quarantined   %d\n", st.Quarantined)
	for _, r := range []string{spool.ReasonMaxBytes, spool.ReasonMinFree, spool.ReasonMaxAge} {
		fmt.Fprintf(w, "  evicted %-9s %d\n", r, st.Evictions[r])
	}
	if st.CorruptRenames > 0 {
		fmt.Fprintf(w, "  corrupt files renamed aside: %d\n", st.CorruptRenames)
	}
	return nil
}

// spoolCheck verifies (and with repair, repairs) the spool in dir and
// prints the report. It reports whether the spool was found sound.
func spoolCheck(dir string, repair, asJSON bool, w io.Writer) (bool, error) {
	rep, err := spool.Check(dir, repair)
	if err != nil {
		return false, err
	}
	if asJSON {
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return rep.OK, e.Encode(rep)
	}
	state := "ok"
	if !rep.OK {
		state = "PROBLEMS FOUND"
	}
	fmt.Fprintf(w, "spool %s: %s — %d sound record(s), %s, %d quarantined\n", dir, state, rep.Records, human.Bytes(rep.Bytes), rep.Quarantined)
	for _, p := range rep.Problems {
		where := p.Bucket
		if p.ID != 0 {
			where = fmt.Sprintf("%s record %d", p.Bucket, p.ID)
		}
		fmt.Fprintf(w, "  problem: %s: %s (repair: %s)\n", where, p.Reason, p.Action)
	}
	if rep.Repaired {
		fmt.Fprintln(w, "  repaired")
		if rep.RenamedTo != "" {
			fmt.Fprintf(w, "  damaged file renamed to %s; %d record(s) salvaged\n", rep.RenamedTo, rep.Salvaged)
		}
	} else if !rep.OK {
		fmt.Fprintln(w, "  run again with --repair to quarantine damaged records")
	}
	return rep.OK, nil
}
