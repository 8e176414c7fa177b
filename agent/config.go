package agent

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/forestwatch/forest/agent/source"
	"github.com/forestwatch/forest/internal/config"
	"github.com/forestwatch/forest/spool"
	"github.com/forestwatch/forest/wire"
)

// Config is the agent's configuration, read from one YAML file by
// LoadConfig. firmware/agent.yaml documents every key with its default.
type Config struct {
	Device  DeviceConfig  `yaml:"device"`
	Source  source.Config `yaml:"source"`
	Segment SegmentConfig `yaml:"segment"`
	Encode  EncodeConfig  `yaml:"encode"`
	Spool   SpoolConfig   `yaml:"spool"`
	Uplink  UplinkConfig  `yaml:"uplink"`
	HTTP    HTTPConfig    `yaml:"http"`
	Log     LogConfig     `yaml:"log"`
	// ShutdownTimeout bounds the whole shutdown after SIGTERM.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
}

// DeviceConfig names the device.
type DeviceConfig struct {
	// ID is the device id carried in every frame ([A-Za-z0-9._-]{1,128}).
	ID string `yaml:"id"`
	// StateDir holds the agent's own state. An earlier version's sequence
	// counter and capture journal found there are moved into the spool at
	// start (see migrateState).
	StateDir string `yaml:"state_dir"`
}

// SegmentConfig configures segmentation and the coverage filter.
type SegmentConfig struct {
	// Model is the ONNX model file.
	Model string `yaml:"model"`
	// Library is the ONNX Runtime shared library; empty means search.
	Library string `yaml:"library"`
	// Threads is the ONNX Runtime intra-op thread count; 0 lets it choose.
	Threads int `yaml:"threads"`
	// Threshold is the forest probability threshold; 0 means the model's.
	Threshold float64 `yaml:"threshold"`
	// Tiling is "auto" (windows at the frame's scale, resampled only when a
	// known pixel size is outside the model's range), "resize" or "tile".
	Tiling string `yaml:"tiling"`
	// PixelSize is the ground size of a frame pixel in metres when the
	// camera fixes it (a mast at a known height); 0: unknown. A GeoTIFF's
	// own pixel size wins. With Tiling "auto", a frame whose pixel size is
	// outside the model's range is resampled into it.
	PixelSize float64 `yaml:"pixel_size_m"`
	// MaxPixels refuses larger frames before decoding their pixels.
	MaxPixels int `yaml:"max_pixels"`
	// Filter says what happens to frames whose coverage is below MinCoverage:
	// "keep", "thin" (keep one in ThinEvery) or "drop".
	Filter      string  `yaml:"filter"`
	MinCoverage float64 `yaml:"min_coverage"`
	ThinEvery   int     `yaml:"thin_every"`
	// OverlayDir, when set, receives a mask-overlay PNG per frame.
	OverlayDir string `yaml:"overlay_dir"`
	// OverlayKeepBytes bounds OverlayDir: the oldest overlays go first.
	// 0 turns the bound off.
	OverlayKeepBytes int64 `yaml:"overlay_keep_bytes"`
}

// EncodeConfig configures the transmitted image encoding.
type EncodeConfig struct {
	// Mode is "auto" (re-encode as WebP, or send the camera's bytes when
	// they are no larger and need no rotation, resize or crop), "keep"
	// (the camera bytes, unless EXIF says they must be turned upright:
	// then a JPEG re-encode), "webp" or "jpeg" (always re-encode in that
	// format).
	Mode string `yaml:"mode"`
	// MinSSIM is the perceptual target of a re-encode: the lowest quality
	// whose SSIM against the upright frame reaches it is chosen per frame
	// (package agent/encode). 0 re-encodes at the fixed Quality.
	MinSSIM float64 `yaml:"min_ssim"`
	// Quality is the fixed quality of a re-encode when MinSSIM is 0 (1-100).
	Quality int `yaml:"quality"`
	// WebPMaxPixels: in mode auto, frames with more pixels are not
	// re-encoded as WebP (its encoder costs about ten times JPEG's CPU):
	// an upright camera JPEG or WebP is sent as taken, anything else is
	// re-encoded as JPEG. 0: always WebP.
	WebPMaxPixels int `yaml:"webp_max_pixels"`
	// MaxDimension scales frames down so the longer side is at most this
	// many pixels (forces a re-encode); 0 keeps the size.
	MaxDimension int `yaml:"max_dimension"`
	// Crop crops the frame (and mask) to the bounding box of forest pixels
	// (forces a re-encode).
	Crop bool `yaml:"crop"`
}

// SpoolConfig configures the store-and-forward spool.
type SpoolConfig struct {
	Dir          string   `yaml:"dir"`
	MaxBytes     int64    `yaml:"max_bytes"`
	MinFreeBytes int64    `yaml:"min_free_bytes"`
	Policy       string   `yaml:"policy"`
	MaxAge       Duration `yaml:"max_age"`
	Order        string   `yaml:"order"`
}

// UplinkConfig configures the broker connection. No URL means offline.
type UplinkConfig struct {
	// URL is the broker's address. URLs lists the nodes of a RabbitMQ
	// cluster instead, for the publisher to fail over between them; set
	// one or the other (see Brokers).
	URL          string   `yaml:"url"`
	URLs         []string `yaml:"urls"`
	User         string   `yaml:"user"`
	PasswordFile string   `yaml:"password_file"`
	// PasswordEnv names an environment variable holding the password.
	PasswordEnv    string    `yaml:"password_env"`
	TLS            TLSConfig `yaml:"tls"`
	Exchange       string    `yaml:"exchange"`
	Window         int       `yaml:"window"`
	Batch          int       `yaml:"batch"`
	ConfirmTimeout Duration  `yaml:"confirm_timeout"`
	DialTimeout    Duration  `yaml:"dial_timeout"`
	Heartbeat      Duration  `yaml:"heartbeat"`
	// StatusInterval is how often the agent publishes its status report
	// (routing key status.<device>); 0 turns reports off. Not Heartbeat,
	// which is the AMQP heartbeat of the connection.
	StatusInterval Duration `yaml:"status_interval"`
	RateLimit      int64    `yaml:"rate_limit"`
	BackoffMax     Duration `yaml:"backoff_max"`
	// DeclareExchange declares the exchange on connect.
	DeclareExchange bool `yaml:"declare_exchange"`
	// MaxMessageBytes is the largest message the broker accepts (its
	// max_message_size, 128 MiB by default in RabbitMQ). A frame larger
	// than that can never be delivered: it is quarantined in the spool,
	// counted, and the drain goes on.
	MaxMessageBytes int64 `yaml:"max_message_bytes"`
	// DailyBytes is the link budget per UTC day: bytes the drain may put
	// on the connection (image, mask, headers, framing); 0 means no limit.
	// See budget.go.
	DailyBytes int64 `yaml:"daily_bytes"`
	// Windows are the times of day, "HH:MM-HH:MM" in UTC, when the drain
	// may send; empty means any time.
	Windows []string `yaml:"windows"`
}

// TLSConfig names certificate files for amqps://.
type TLSConfig struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}

// HTTPConfig configures the local status server.
type HTTPConfig struct {
	// Listen is the address of /metrics, /healthz, /readyz and the status
	// page; empty disables the server.
	Listen string `yaml:"listen"`
	// Refresh is the status page's auto-refresh interval.
	Refresh Duration `yaml:"refresh"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text or json.
	Format string `yaml:"format"`
}

// Duration is a time.Duration written as "30s" or "5m" in YAML.
type Duration = config.Duration

// Default returns the configuration used for keys a file leaves out.
func Default() Config {
	return Config{
		Device: DeviceConfig{StateDir: "/var/lib/forest-agent"},
		Source: source.Defaults(),
		Segment: SegmentConfig{
			Model:            "canopy-aerial-v1.onnx",
			Threads:          2,
			Tiling:           "auto",
			MaxPixels:        wire.MaxPixels,
			Filter:           "keep",
			ThinEvery:        10,
			OverlayKeepBytes: 64 << 20,
		},
		Encode: EncodeConfig{Mode: "auto", MinSSIM: 0.95, Quality: 85, WebPMaxPixels: 4_000_000},
		Spool: SpoolConfig{
			Dir: "/var/lib/forest-agent/spool", MaxBytes: 2 << 30, MinFreeBytes: 256 << 20,
			Policy: "drop-oldest", Order: "oldest-first",
		},
		Uplink: UplinkConfig{
			Exchange: "forest.frames", Window: 32, Batch: 64,
			ConfirmTimeout: Duration(30 * time.Second), DialTimeout: Duration(15 * time.Second),
			Heartbeat: Duration(10 * time.Second), BackoffMax: Duration(time.Minute),
			MaxMessageBytes: 128 << 20,
			StatusInterval:  Duration(5 * time.Minute),
		},
		HTTP:            HTTPConfig{Listen: "127.0.0.1:9464", Refresh: Duration(5 * time.Second)},
		Log:             LogConfig{Level: "info", Format: "text"},
		ShutdownTimeout: Duration(30 * time.Second),
	}
}

// LoadConfig reads path, decodes it over the defaults with internal/config
// (strict keys; ${ENV} and ${ENV:-default} expanded in values), resolves
// relative paths (see resolve) and validates the result. Errors wrap
// ErrConfig and name the field.
func LoadConfig(path string) (*Config, error) {
	c := Default()
	if err := config.Load(path, &c, c.finish); err != nil {
		return nil, err
	}
	c.resolve(filepath.Dir(path))
	return &c, nil
}

// ParseConfig parses and validates YAML config text (see LoadConfig).
// Relative paths are left as they are.
func ParseConfig(raw []byte) (*Config, error) {
	c := Default()
	if err := config.Parse(raw, &c); err != nil {
		return nil, err
	}
	return &c, c.finish()
}

// finish normalises what the text left and validates the result.
func (c *Config) finish() error {
	if len(c.Source.Exec.Command) == 0 {
		c.Source.Exec.Command = nil
	}
	if len(c.Uplink.Windows) == 0 {
		c.Uplink.Windows = nil
	}
	if len(c.Uplink.URLs) == 0 {
		c.Uplink.URLs = nil
	}
	return c.Validate()
}

// resolve makes relative file paths relative to base, the config file's
// directory. The working directory is never used: the agent runs as root
// in directories other users may write. A model named by a bare file name
// that base does not hold stays bare: segment.Load finds it among the
// shipped models.
func (c *Config) resolve(base string) {
	for _, p := range []*string{
		&c.Device.StateDir, &c.Source.Dir.Path, &c.Source.Dir.DoneDir, &c.Source.HTTP.PasswordFile,
		&c.Source.HTTP.TokenFile, &c.Segment.Model, &c.Segment.Library, &c.Segment.OverlayDir, &c.Spool.Dir,
		&c.Uplink.PasswordFile, &c.Uplink.TLS.CAFile, &c.Uplink.TLS.CertFile, &c.Uplink.TLS.KeyFile,
	} {
		if *p == "" || filepath.IsAbs(*p) {
			continue
		}
		if p == &c.Segment.Model && filepath.Base(*p) == *p {
			if _, err := os.Stat(filepath.Join(base, *p)); err != nil {
				continue
			}
		}
		*p = filepath.Join(base, *p)
	}
}

var bad = config.Bad

// Validate checks every field and returns the first problem as a
// *FieldError naming it, for example
// "uplink.confirm_timeout: must be > 0 (got 0s)".
func (c *Config) Validate() error {
	pos := func(field string, d Duration) error {
		if d <= 0 {
			return bad(field, "must be > 0 (got %s)", d.D())
		}
		return nil
	}
	nonneg := func(field string, v int64) error {
		if v < 0 {
			return bad(field, "must be >= 0 (got %d)", v)
		}
		return nil
	}
	if c.Device.ID == "" {
		return bad("device.id", "required")
	}
	if !wire.ValidID(c.Device.ID) {
		return bad("device.id", "must be 1-128 characters of [A-Za-z0-9._-] (got %q)", c.Device.ID)
	}
	if c.Device.StateDir == "" {
		return bad("device.state_dir", "required")
	}
	if err := c.Source.Validate(); err != nil {
		return err
	}
	g := &c.Segment
	if g.Model == "" {
		return bad("segment.model", "required")
	}
	if g.Threads < 0 {
		return bad("segment.threads", "must be >= 0 (got %d)", g.Threads)
	}
	if g.Threshold < 0 || g.Threshold >= 1 {
		return bad("segment.threshold", "must be within [0,1) (got %v)", g.Threshold)
	}
	if !(g.PixelSize >= 0) || math.IsInf(g.PixelSize, 0) {
		return bad("segment.pixel_size_m", "must be a size in metres, or 0 when unknown (got %v)", g.PixelSize)
	}
	if g.Tiling != "auto" && g.Tiling != "resize" && g.Tiling != "tile" {
		return bad("segment.tiling", "must be auto, resize or tile (got %q)", g.Tiling)
	}
	if g.MaxPixels <= 0 {
		return bad("segment.max_pixels", "must be > 0 (got %d)", g.MaxPixels)
	}
	switch g.Filter {
	case "keep", "drop":
	case "thin":
		if g.ThinEvery < 1 {
			return bad("segment.thin_every", "must be >= 1 (got %d)", g.ThinEvery)
		}
	default:
		return bad("segment.filter", "must be keep, thin or drop (got %q)", g.Filter)
	}
	if g.MinCoverage < 0 || g.MinCoverage > 1 {
		return bad("segment.min_coverage", "must be within [0,1] (got %v)", g.MinCoverage)
	}
	e := &c.Encode
	if e.Mode != "auto" && e.Mode != "keep" && e.Mode != "webp" && e.Mode != "jpeg" {
		return bad("encode.mode", "must be auto, keep, webp or jpeg (got %q)", e.Mode)
	}
	if e.MinSSIM != 0 && !(e.MinSSIM > 0 && e.MinSSIM < 1) {
		return bad("encode.min_ssim", "must be 0 (fixed quality) or within (0,1) (got %v)", e.MinSSIM)
	}
	if e.Quality < 1 || e.Quality > 100 {
		return bad("encode.quality", "must be within 1..100 (got %d)", e.Quality)
	}
	if e.WebPMaxPixels < 0 {
		return bad("encode.webp_max_pixels", "must be >= 0 (got %d)", e.WebPMaxPixels)
	}
	if e.MaxDimension < 0 {
		return bad("encode.max_dimension", "must be >= 0 (got %d)", e.MaxDimension)
	}
	if e.Mode == "keep" && (e.MaxDimension > 0 || e.Crop) {
		return bad("encode.mode", "keep sends the camera bytes unchanged; it cannot be combined with max_dimension or crop")
	}
	sp := &c.Spool
	if sp.Dir == "" {
		return bad("spool.dir", "required")
	}
	if err := nonneg("spool.max_bytes", sp.MaxBytes); err != nil {
		return err
	}
	if err := nonneg("spool.min_free_bytes", sp.MinFreeBytes); err != nil {
		return err
	}
	var pol spool.Policy
	if err := pol.UnmarshalText([]byte(sp.Policy)); err != nil {
		return bad("spool.policy", "must be drop-oldest or reject-new (got %q)", sp.Policy)
	}
	var ord spool.Order
	if err := ord.UnmarshalText([]byte(sp.Order)); err != nil {
		return bad("spool.order", "must be oldest-first, newest-first or priority (got %q)", sp.Order)
	}
	if sp.MaxAge < 0 {
		return bad("spool.max_age", "must be >= 0 (got %s)", sp.MaxAge.D())
	}
	u := &c.Uplink
	if u.URL != "" && len(u.URLs) > 0 {
		return bad("uplink.urls", "set uplink.url or uplink.urls, not both")
	}
	var scheme, user string
	for i, raw := range u.Brokers() {
		field := "uplink.url"
		if len(u.URLs) > 0 {
			field = fmt.Sprintf("uplink.urls[%d]", i)
		}
		pu, err := url.Parse(raw)
		if err != nil || (pu.Scheme != "amqp" && pu.Scheme != "amqps") || pu.Host == "" {
			return bad(field, "must be an amqp:// or amqps:// URL (got %q)", redactURL(raw))
		}
		if _, ok := pu.User.Password(); ok {
			return bad(field, "must not hold a password; use uplink.password_file or ${ENV} in uplink.user")
		}
		if i > 0 && pu.Scheme != scheme {
			return bad(field, "is %s://, but uplink.urls[0] is %s://: every node takes the same scheme", pu.Scheme, scheme)
		}
		if i > 0 && pu.User.Username() != user {
			return bad(field, "names user %q, but uplink.urls[0] names %q: set uplink.user instead", pu.User.Username(), user)
		}
		scheme, user = pu.Scheme, pu.User.Username()
		if (u.PasswordFile != "" || u.PasswordEnv != "") && u.User == "" && pu.User == nil {
			return bad("uplink.user", "required with uplink.password_file or password_env")
		}
	}
	if scheme != "" {
		if u.PasswordFile != "" && u.PasswordEnv != "" {
			return bad("uplink.password_env", "set either password_file or password_env, not both")
		}
		if u.TLS != (TLSConfig{}) && scheme != "amqps" {
			return bad("uplink.tls", "set, but uplink.url is not amqps://")
		}
		if (u.TLS.CertFile == "") != (u.TLS.KeyFile == "") {
			return bad("uplink.tls.cert_file", "cert_file and key_file go together")
		}
	}
	if u.Exchange == "" {
		return bad("uplink.exchange", "required")
	}
	if u.Window < 1 {
		return bad("uplink.window", "must be >= 1 (got %d)", u.Window)
	}
	if u.Batch < 1 {
		return bad("uplink.batch", "must be >= 1 (got %d)", u.Batch)
	}
	for _, d := range []struct {
		f string
		v Duration
	}{{"uplink.confirm_timeout", u.ConfirmTimeout}, {"uplink.dial_timeout", u.DialTimeout}, {"uplink.heartbeat", u.Heartbeat}, {"uplink.backoff_max", u.BackoffMax}} {
		if err := pos(d.f, d.v); err != nil {
			return err
		}
	}
	if u.StatusInterval != 0 && u.StatusInterval < Duration(time.Second) {
		return bad("uplink.status_interval", "must be 0 (off) or >= 1s (got %s)", u.StatusInterval.D())
	}
	if err := nonneg("uplink.rate_limit", u.RateLimit); err != nil {
		return err
	}
	if u.MaxMessageBytes < 1<<20 {
		return bad("uplink.max_message_bytes", "must be at least 1 MiB (got %d)", u.MaxMessageBytes)
	}
	if err := nonneg("segment.overlay_keep_bytes", c.Segment.OverlayKeepBytes); err != nil {
		return err
	}
	if err := nonneg("uplink.daily_bytes", u.DailyBytes); err != nil {
		return err
	}
	for _, w := range u.Windows {
		if _, err := parseWindow(w); err != nil {
			return bad("uplink.windows", "%v", err)
		}
	}
	if c.HTTP.Listen != "" {
		if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
			return bad("http.listen", "must be host:port (got %q)", c.HTTP.Listen)
		}
	}
	if err := pos("http.refresh", c.HTTP.Refresh); err != nil {
		return err
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "must be debug, info, warn or error (got %q)", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return bad("log.format", "must be text or json (got %q)", c.Log.Format)
	}
	return pos("shutdown_timeout", c.ShutdownTimeout)
}

var redactURL = config.Redact

// redactURLs is redactURL for each of urls.
func redactURLs(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = redactURL(u)
	}
	return out
}

// Brokers returns the broker addresses: URLs, or URL alone, or none
// (offline).
func (u *UplinkConfig) Brokers() []string {
	if u.URL != "" {
		return []string{u.URL}
	}
	return u.URLs
}

// brokerURLs returns the broker addresses with the user and the password
// from password_file or password_env filled in.
func (c *Config) brokerURLs() ([]string, error) {
	u := c.Uplink
	cr := config.Credentials{Prefix: "uplink", User: u.User, PasswordFile: u.PasswordFile, PasswordEnv: u.PasswordEnv}
	return cr.URLs(u.Brokers())
}
