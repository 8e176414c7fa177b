package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// dirSource takes image files from a directory.
//
// A file is taken when it is complete: its size and modification time have
// not changed for Settle. inotify (fsnotify) events say which files to
// look at; a scan at start and every rescan interval catches files that
// arrived while the agent was down or whose events were lost. Names
// starting with "." or ending in ".tmp" or ".part" are ignored, so
// writers that rename into place are picked up at the rename.
//
// After the handler returned nil (the frame is spooled, or dropped by the
// filter) the file is deleted or moved to DoneDir. A file that is not a
// usable image (or that the agent gave up on after MaxAttempts) is moved to
// <path>/failed, with <name>.reason.txt saying why. A file whose frame
// could not be spooled stays and is retried.
type dirSource struct {
	cfg DirConfig
	env Env
}

const dirRescan = 30 * time.Second

type fileSeen struct {
	size    int64
	mtime   time.Time
	stable  time.Time // when size and mtime were first seen as they are now
	retryAt time.Time
}

func (s *dirSource) doneDir() string {
	if s.cfg.DoneDir != "" {
		return s.cfg.DoneDir
	}
	return filepath.Join(s.cfg.Path, "done")
}

func (s *dirSource) failedDir() string { return filepath.Join(s.cfg.Path, "failed") }

func (s *dirSource) prepare() error {
	if err := os.MkdirAll(s.cfg.Path, 0o755); err != nil {
		return fmt.Errorf("dir source: %w", err)
	}
	if s.cfg.After == "move" {
		if err := os.MkdirAll(s.doneDir(), 0o755); err != nil {
			return fmt.Errorf("dir source: %w", err)
		}
	}
	return nil
}

func (s *dirSource) wanted(name string) bool {
	if strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".tmp") || strings.HasSuffix(name, ".part") || strings.HasSuffix(name, ReasonSuffix) {
		return false
	}
	ok, _ := filepath.Match(s.cfg.Pattern, name)
	return ok
}

// list returns the wanted regular files in the directory.
func (s *dirSource) list() ([]string, error) {
	ents, err := os.ReadDir(s.cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("dir source: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && s.wanted(e.Name()) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Run watches the directory until ctx is done.
func (s *dirSource) Run(ctx context.Context, h Handler) error {
	if err := s.prepare(); err != nil {
		return err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("dir source: watch: %w", err)
	}
	defer w.Close()
	if err := w.Add(s.cfg.Path); err != nil {
		return fmt.Errorf("dir source: watch %s: %w", s.cfg.Path, err)
	}
	settle := s.cfg.Settle.D()
	pending := map[string]*fileSeen{}
	add := func(name string) {
		if _, ok := pending[name]; !ok && s.wanted(name) {
			pending[name] = &fileSeen{size: -1}
		}
	}
	rescan := func() {
		names, err := s.list()
		if err != nil {
			s.env.Failed("dir", fmt.Errorf("%w: scan: %w", ErrCapture, err))
			return
		}
		s.env.OK("dir") // the directory is readable: the source works
		for _, n := range names {
			add(n)
		}
	}
	rescan()
	tick := time.NewTicker(max(settle/4, 10*time.Millisecond))
	defer tick.Stop()
	lastScan := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Has(fsnotify.Create) || ev.Has(fsnotify.Write) || ev.Has(fsnotify.Chmod) {
				add(filepath.Base(ev.Name))
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// Overflow and the like: a rescan finds what the events missed.
			s.env.Log.Warn("directory watch", "err", err)
			rescan()
		case now := <-tick.C:
			if now.Sub(lastScan) >= dirRescan {
				lastScan = now
				rescan()
			}
			for _, name := range s.ready(pending, now, settle) {
				if ctx.Err() != nil {
					return nil
				}
				if s.take(ctx, h, name) {
					delete(pending, name)
				} else {
					pending[name].retryAt = time.Now().Add(settle * 5)
				}
			}
		}
	}
}

// ready updates pending with fresh stats and returns the files that have
// been stable for settle, oldest first.
func (s *dirSource) ready(pending map[string]*fileSeen, now time.Time, settle time.Duration) []string {
	var out []string
	for name, f := range pending {
		fi, err := os.Stat(filepath.Join(s.cfg.Path, name))
		if err != nil || !fi.Mode().IsRegular() {
			delete(pending, name) // gone or renamed away
			continue
		}
		if fi.Size() != f.size || !fi.ModTime().Equal(f.mtime) {
			f.size, f.mtime, f.stable = fi.Size(), fi.ModTime(), now
			continue
		}
		if now.Sub(f.stable) >= settle && now.After(f.retryAt) {
			out = append(out, name)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := pending[out[i]], pending[out[j]]
		if !a.mtime.Equal(b.mtime) {
			return a.mtime.Before(b.mtime)
		}
		return out[i] < out[j]
	})
	return out
}

// Once takes the complete files present now: files whose size and
// modification time do not change over Settle.
func (s *dirSource) Once(ctx context.Context, h Handler) error {
	if err := s.prepare(); err != nil {
		return err
	}
	names, err := s.list()
	if err != nil {
		return err
	}
	pending := map[string]*fileSeen{}
	for _, n := range names {
		pending[n] = &fileSeen{size: -1}
	}
	settle := s.cfg.Settle.D()
	s.ready(pending, time.Now(), settle)
	if !sleepCtx(ctx, settle) {
		return nil
	}
	for _, name := range s.ready(pending, time.Now(), settle) {
		if ctx.Err() != nil {
			return nil
		}
		s.take(ctx, h, name)
	}
	for name := range pending {
		if _, err := os.Stat(filepath.Join(s.cfg.Path, name)); err == nil {
			s.env.Log.Info("file still being written, left for the next run", "file", name)
		}
	}
	return nil
}

// take reads one file, hands it to h and disposes of it. It reports
// whether the file is finished with (spooled, dropped or failed).
func (s *dirSource) take(ctx context.Context, h Handler, name string) bool {
	path := filepath.Join(s.cfg.Path, name)
	f, err := os.Open(path)
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return false
	}
	if fi.Size() > s.cfg.MaxFileBytes {
		f.Close()
		s.fail(path, fmt.Errorf("%w: %s: %d bytes is more than source.dir.max_file_bytes", ErrBadFrame, name, fi.Size()))
		return true
	}
	data, err := io.ReadAll(io.LimitReader(f, s.cfg.MaxFileBytes+1))
	f.Close()
	if err != nil {
		s.env.Failed("dir", fmt.Errorf("%w: read %s: %w", ErrCapture, name, err))
		return false
	}
	c := &Capture{
		Source: "dir", Name: name, Data: data, Time: fi.ModTime(),
		Key: fmt.Sprintf("dir:%s:%d:%d", name, fi.Size(), fi.ModTime().UnixNano()),
	}
	err = h(ctx, c)
	switch {
	case err == nil:
		s.env.OK("dir")
	case errors.Is(err, ErrBadFrame):
		s.fail(path, err)
		return true
	default:
		s.env.Log.Warn("frame not spooled, file kept for a retry", "file", name, "err", err)
		return false
	}
	if s.cfg.After == "delete" {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.env.Log.Error("delete spooled file", "file", name, "err", err)
		}
		return true
	}
	s.moveTo(path, s.doneDir())
	return true
}

// fail reports a file that is not a usable frame and moves it to failed/,
// with the reason beside it in <name>.reason.txt.
func (s *dirSource) fail(path string, why error) {
	s.env.Failed("dir", why)
	s.moveTo(path, s.failedDir())
	reason := fmt.Sprintf("%s\t%v\n", time.Now().UTC().Format(time.RFC3339), why)
	if err := os.WriteFile(filepath.Join(s.failedDir(), filepath.Base(path)+ReasonSuffix), []byte(reason), 0o644); err != nil {
		s.env.Log.Error("write the reason a file failed", "file", path, "err", err)
	}
}

// ReasonSuffix ends the name of the file in failed/ that says why the file
// of the same name is there.
const ReasonSuffix = ".reason.txt"

func (s *dirSource) moveTo(path, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.env.Log.Error("move file", "file", path, "err", err)
		return
	}
	if err := os.Rename(path, filepath.Join(dir, filepath.Base(path))); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.env.Log.Error("move file", "file", path, "to", dir, "err", err)
	}
}
