package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// execSource runs a command per capture that prints one image on stdout,
// for example `libcamera-still -n -o -` or
// `ffmpeg -rtsp_transport tcp -i rtsp://cam/stream -frames:v 1 -f image2 -`.
// The command runs in its own process group; after Timeout the whole group
// is killed. A non-zero exit, a timeout, output larger than MaxBytes or
// output that is not an image is counted and logged, never fatal.
type execSource struct {
	cfg ExecConfig
	env Env
}

// Run runs the command every Interval until ctx is done.
func (s *execSource) Run(ctx context.Context, h Handler) error {
	runEvery(ctx, s.cfg.Interval.D(), func() { s.capture(ctx, h) })
	return nil
}

// Once runs the command once.
func (s *execSource) Once(ctx context.Context, h Handler) error {
	s.capture(ctx, h)
	return nil
}

func (s *execSource) capture(ctx context.Context, h Handler) {
	data, err := s.run(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.env.Failed("exec", err)
		}
		return
	}
	err = h(ctx, &Capture{Source: "exec", Name: strings.Join(s.cfg.Command, " "), Data: data, Time: time.Now(), Key: ContentKey(data)})
	switch {
	case err == nil:
		s.env.OK("exec")
	case errors.Is(err, ErrBadFrame):
		s.env.Failed("exec", err)
	default:
		s.env.Log.Warn("frame not spooled", "source", "exec", "err", err)
	}
}

// limitedBuffer keeps at most max bytes and remembers whether more came.
type limitedBuffer struct {
	buf      bytes.Buffer
	max      int64
	overflow bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - int64(b.buf.Len()); int64(len(p)) > room {
		b.overflow = true
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (s *execSource) run(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout.D())
	defer cancel()
	cmd := exec.CommandContext(ctx, s.cfg.Command[0], s.cfg.Command[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out := &limitedBuffer{max: s.cfg.MaxBytes}
	stderr := &limitedBuffer{max: 4096}
	cmd.Stdout, cmd.Stderr = out, stderr
	err := cmd.Run()
	name := s.cfg.Command[0]
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return nil, fmt.Errorf("%w: %s: killed after source.exec.timeout %s", ErrCapture, name, s.cfg.Timeout.D())
	case err != nil:
		msg := strings.TrimSpace(stderr.buf.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		return nil, fmt.Errorf("%w: %s: %w (stderr: %q)", ErrCapture, name, err, msg)
	case out.overflow:
		return nil, fmt.Errorf("%w: %s: output larger than source.exec.max_bytes (%d)", ErrCapture, name, s.cfg.MaxBytes)
	case out.buf.Len() == 0:
		return nil, fmt.Errorf("%w: %s: no output", ErrCapture, name)
	}
	return out.buf.Bytes(), nil
}
