package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/forestwatch/forest/internal/config"
)

// httpSource fetches a snapshot URL every Interval (IP cameras). Each fetch,
// body included, is bounded by Timeout, so a camera that stalls costs one
// timeout, is counted as a failed capture and does not delay the next one
// beyond it. Credentials are read from their files at every fetch, so they
// can be rotated without a restart.
type httpSource struct {
	cfg    HTTPConfig
	env    Env
	client *http.Client
}

func (s *httpSource) name() string {
	u, err := url.Parse(s.cfg.URL)
	if err != nil {
		return "camera"
	}
	return u.Redacted()
}

// Run fetches a snapshot every Interval until ctx is done.
func (s *httpSource) Run(ctx context.Context, h Handler) error {
	runEvery(ctx, s.cfg.Interval.D(), func() { s.capture(ctx, h) })
	return nil
}

// Once fetches one snapshot.
func (s *httpSource) Once(ctx context.Context, h Handler) error {
	s.capture(ctx, h)
	return nil
}

func (s *httpSource) capture(ctx context.Context, h Handler) {
	data, err := s.fetch(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.env.Failed("http", err)
		}
		return
	}
	err = h(ctx, &Capture{Source: "http", Name: s.name(), Data: data, Time: time.Now(), Key: ContentKey(data)})
	switch {
	case err == nil:
		s.env.OK("http")
	case errors.Is(err, ErrBadFrame):
		s.env.Failed("http", err)
	default:
		s.env.Log.Warn("frame not spooled", "source", "http", "err", err)
	}
}

func (s *httpSource) fetch(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout.D())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCapture, err)
	}
	switch {
	case s.cfg.TokenFile != "":
		tok, err := config.ReadSecret("source.http.token_file", s.cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCapture, err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	case s.cfg.User != "":
		pw := ""
		if s.cfg.PasswordFile != "" {
			if pw, err = config.ReadSecret("source.http.password_file", s.cfg.PasswordFile); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrCapture, err)
			}
		}
		req.SetBasicAuth(s.cfg.User, pw)
	}
	client := s.client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: fetch %s: %w", ErrCapture, s.name(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: fetch %s: status %s", ErrCapture, s.name(), resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, s.cfg.MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrCapture, s.name(), err)
	}
	if int64(len(data)) > s.cfg.MaxBytes {
		return nil, fmt.Errorf("%w: %s: snapshot larger than source.http.max_bytes (%d)", ErrCapture, s.name(), s.cfg.MaxBytes)
	}
	return data, nil
}
