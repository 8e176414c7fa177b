package source

import (
	"net/url"
	"path/filepath"
	"time"

	"github.com/forestwatch/forest/internal/config"
)

// Config selects and configures the capture source (the "source" mapping
// of forest-agent's config).
type Config struct {
	// Type is "dir", "http" or "exec".
	Type string     `yaml:"type"`
	Dir  DirConfig  `yaml:"dir"`
	HTTP HTTPConfig `yaml:"http"`
	Exec ExecConfig `yaml:"exec"`
	// MaxAttempts is how many times the agent begins to process one
	// capture (a file, or an image's bytes) before it gives up on it: a
	// capture that crashed or hung the agent that many times is refused
	// (a file goes to failed/) instead of being retried after every
	// restart.
	MaxAttempts int `yaml:"max_attempts"`
}

// DirConfig configures the dir source.
type DirConfig struct {
	// Path is the watched directory.
	Path string `yaml:"path"`
	// Pattern is a filepath.Match pattern of file names to take.
	Pattern string `yaml:"pattern"`
	// Settle is how long a file's size and mtime must stay unchanged before
	// it counts as complete.
	Settle config.Duration `yaml:"settle"`
	// After is "delete" or "move" (to DoneDir) once the frame is spooled.
	After string `yaml:"after"`
	// DoneDir receives spooled files when After is "move"; default
	// <path>/done.
	DoneDir string `yaml:"done_dir"`
	// MaxFileBytes skips larger files (counted as capture errors).
	MaxFileBytes int64 `yaml:"max_file_bytes"`
	// KeepBytes and KeepAge bound the files kept in DoneDir and failed/:
	// the oldest go first once together they hold more than KeepBytes, and
	// any older than KeepAge go. 0 turns a bound off. They also go first
	// when the disk runs short, before any unsent frame is evicted.
	KeepBytes int64           `yaml:"keep_bytes"`
	KeepAge   config.Duration `yaml:"keep_age"`
}

// HTTPConfig configures the http (snapshot URL) source.
type HTTPConfig struct {
	// URL is the camera's snapshot URL.
	URL string `yaml:"url"`
	// Interval is the time between captures.
	Interval config.Duration `yaml:"interval"`
	// Timeout bounds one fetch, body included.
	Timeout config.Duration `yaml:"timeout"`
	// User and PasswordFile give basic auth; the password is read from the file.
	User         string `yaml:"user"`
	PasswordFile string `yaml:"password_file"`
	// TokenFile holds a bearer token.
	TokenFile string `yaml:"token_file"`
	// MaxBytes bounds the snapshot body.
	MaxBytes int64 `yaml:"max_bytes"`
}

// ExecConfig configures the exec source.
type ExecConfig struct {
	// Command is the program and its arguments; it must print one image on
	// stdout and exit 0.
	Command []string `yaml:"command"`
	// Interval is the time between captures (from the start of one to the
	// start of the next).
	Interval config.Duration `yaml:"interval"`
	// Timeout bounds one run; the process is killed after it.
	Timeout config.Duration `yaml:"timeout"`
	// MaxBytes bounds the captured output.
	MaxBytes int64 `yaml:"max_bytes"`
}

// Defaults returns the configuration used for keys a file leaves out.
func Defaults() Config {
	return Config{
		Type: "dir",
		Dir: DirConfig{
			Path: "/var/lib/forest-agent/incoming", Pattern: "*", Settle: config.Duration(time.Second),
			After: "delete", MaxFileBytes: 64 << 20, KeepBytes: 256 << 20, KeepAge: config.Duration(30 * 24 * time.Hour),
		},
		HTTP:        HTTPConfig{Interval: config.Duration(time.Minute), Timeout: config.Duration(10 * time.Second), MaxBytes: 64 << 20},
		Exec:        ExecConfig{Interval: config.Duration(time.Minute), Timeout: config.Duration(30 * time.Second), MaxBytes: 64 << 20},
		MaxAttempts: 3,
	}
}

// Validate checks the fields of the selected source and returns the first
// problem as a *config.FieldError naming it ("source.dir.settle").
func (s *Config) Validate() error {
	pos := func(field string, d config.Duration) error {
		if d <= 0 {
			return config.Bad(field, "must be > 0 (got %s)", d.D())
		}
		return nil
	}
	if s.MaxAttempts < 1 {
		return config.Bad("source.max_attempts", "must be >= 1 (got %d)", s.MaxAttempts)
	}
	switch s.Type {
	case "dir":
		if s.Dir.Path == "" {
			return config.Bad("source.dir.path", "required for source.type dir")
		}
		if _, err := filepath.Match(s.Dir.Pattern, "x"); err != nil || s.Dir.Pattern == "" {
			return config.Bad("source.dir.pattern", "not a valid file name pattern (got %q)", s.Dir.Pattern)
		}
		if err := pos("source.dir.settle", s.Dir.Settle); err != nil {
			return err
		}
		if s.Dir.After != "delete" && s.Dir.After != "move" {
			return config.Bad("source.dir.after", "must be delete or move (got %q)", s.Dir.After)
		}
		if s.Dir.MaxFileBytes <= 0 {
			return config.Bad("source.dir.max_file_bytes", "must be > 0 (got %d)", s.Dir.MaxFileBytes)
		}
		if s.Dir.KeepBytes < 0 {
			return config.Bad("source.dir.keep_bytes", "must be >= 0 (got %d)", s.Dir.KeepBytes)
		}
		if s.Dir.KeepAge < 0 {
			return config.Bad("source.dir.keep_age", "must be >= 0 (got %s)", s.Dir.KeepAge)
		}
	case "http":
		u, err := url.Parse(s.HTTP.URL)
		if s.HTTP.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return config.Bad("source.http.url", "must be an http:// or https:// URL (got %q)", s.HTTP.URL)
		}
		if u.User != nil {
			return config.Bad("source.http.url", "must not hold credentials; use source.http.user and password_file")
		}
		if err := pos("source.http.interval", s.HTTP.Interval); err != nil {
			return err
		}
		if err := pos("source.http.timeout", s.HTTP.Timeout); err != nil {
			return err
		}
		if s.HTTP.PasswordFile != "" && s.HTTP.User == "" {
			return config.Bad("source.http.user", "required with source.http.password_file")
		}
		if s.HTTP.TokenFile != "" && s.HTTP.User != "" {
			return config.Bad("source.http.token_file", "use either basic auth (user, password_file) or a bearer token, not both")
		}
		if s.HTTP.MaxBytes <= 0 {
			return config.Bad("source.http.max_bytes", "must be > 0 (got %d)", s.HTTP.MaxBytes)
		}
	case "exec":
		if len(s.Exec.Command) == 0 || s.Exec.Command[0] == "" {
			return config.Bad("source.exec.command", "required for source.type exec")
		}
		if err := pos("source.exec.interval", s.Exec.Interval); err != nil {
			return err
		}
		if err := pos("source.exec.timeout", s.Exec.Timeout); err != nil {
			return err
		}
		if s.Exec.MaxBytes <= 0 {
			return config.Bad("source.exec.max_bytes", "must be > 0 (got %d)", s.Exec.MaxBytes)
		}
	default:
		return config.Bad("source.type", "must be dir, http or exec (got %q)", s.Type)
	}
	return nil
}
