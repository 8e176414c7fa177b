// Package source captures frames for forest-agent: from a watched
// directory (dir), a camera's HTTP snapshot URL (http) or a command that
// prints one image (exec).
//
// A Source hands captures to a Handler one at a time, from one goroutine,
// so the frame in flight is always the one the handler works on. A capture
// that produced no usable image is reported through Env.Failed and never
// stops the source. The dir source disposes of a file (delete, or move to
// done/) only after the handler returned nil, and moves a file the handler
// refused as ErrBadFrame to failed/; a file whose frame could not be
// spooled stays and is offered again.
package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"time"
)

// Capture is one image taken by a source, before decoding.
type Capture struct {
	// Source is the source type: "dir", "http" or "exec".
	Source string
	// Name identifies the capture for people: a file name, URL or command.
	Name string
	// Data is the encoded image as the camera produced it.
	Data []byte
	// Time is when the capture was taken; EXIF time, when present, wins.
	Time time.Time
	// Key identifies the capture across restarts: for the dir source its
	// name, size and modification time; for the others its bytes
	// (ContentKey). The agent counts attempts to process it and stores it
	// with the frame in the spool (spool.Record.Key), so that a capture is
	// spooled once even when the agent dies between spooling it and moving
	// it, and one that crashes the agent is given up after
	// Config.MaxAttempts.
	Key string
}

// Handler processes one capture. It returns nil once the frame is durably
// spooled or deliberately dropped by the coverage filter, an error wrapping
// ErrBadFrame when the capture is not a usable image (the source then gives
// up on it), and any other error when it could not be spooled now (the
// source may offer it again later).
type Handler func(ctx context.Context, c *Capture) error

// Source produces captures. Sources call the handler from one goroutine,
// one capture at a time, so the frame in flight is always the one the
// handler is working on.
type Source interface {
	// Run captures until ctx is done and then returns nil, after the
	// handler call in progress (if any) has returned. Capture failures are
	// reported through Env.failed and never end Run.
	Run(ctx context.Context, h Handler) error
	// Once captures what is available now (the files present, one snapshot,
	// one command run), hands it to h and returns.
	Once(ctx context.Context, h Handler) error
}

// Env is what a source reports to. Failed and OK must be set.
type Env struct {
	// Log receives the source's own messages; nil discards them.
	Log *slog.Logger
	// Failed counts and logs a capture that produced no usable image.
	Failed func(source string, err error)
	// OK records a capture that produced an image.
	OK func(source string)
}

// ContentKey is the Capture.Key of a capture that has no name that lasts
// (a snapshot, a command's output): its bytes' SHA-256. The same image
// captured twice is the same capture.
func ContentKey(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// New builds the source cfg selects.
func New(cfg Config, env Env) Source {
	if env.Log == nil {
		env.Log = slog.New(slog.DiscardHandler)
	}
	switch cfg.Type {
	case "http":
		return &httpSource{cfg: cfg.HTTP, env: env}
	case "exec":
		return &execSource{cfg: cfg.Exec, env: env}
	default:
		return &dirSource{cfg: cfg.Dir, env: env}
	}
}

// sleepCtx waits d or until ctx is done; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// runEvery calls fn at once and then every interval (start to start)
// until ctx is done.
func runEvery(ctx context.Context, interval time.Duration, fn func()) {
	for {
		start := time.Now()
		fn()
		if ctx.Err() != nil {
			return
		}
		wait := interval - time.Since(start)
		if wait < 0 {
			wait = 0
		}
		if !sleepCtx(ctx, wait) {
			return
		}
	}
}
