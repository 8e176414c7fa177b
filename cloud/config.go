package cloud

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/forestwatch/forest/internal/config"
	"github.com/forestwatch/forest/wire"
)

// Config is forest-cloud's configuration, read from YAML (see
// cmd/forest-cloud/cloud.yaml, which documents every key with its default).
// Zero values take the defaults applied by Defaults.
type Config struct {
	// AMQP is the broker and queue topology.
	AMQP AMQPConfig `yaml:"amqp"`
	// S3 is the bucket and how to reach it.
	S3 S3Config `yaml:"s3"`
	// Consumer sizes the worker pool and bounds the input.
	Consumer ConsumerConfig `yaml:"consumer"`
	// Identity says which broker users may publish for which devices.
	Identity IdentityConfig `yaml:"identity"`
	// Legacy says whose legacy JSON messages are accepted and how they
	// are stored.
	Legacy LegacyConfig `yaml:"legacy"`
	// HTTP is where /metrics, /healthz and /readyz are served.
	HTTP HTTPConfig `yaml:"http"`
	// Fleet configures the agents' status reports and the fleet page.
	Fleet FleetConfig `yaml:"fleet"`
	// Log selects the log level and format.
	Log LogConfig `yaml:"log"`
}

// AMQPConfig names the broker and the queue topology.
type AMQPConfig struct {
	// URL is the broker's amqp:// or amqps:// URL. Set URL or URLs.
	URL string `yaml:"url"`
	// URLs are the addresses of the nodes of a RabbitMQ cluster, all with
	// the same scheme, vhost and user. The consumer connects to one of
	// them and, when it fails or is lost, to the next (see Brokers).
	URLs []string `yaml:"urls"`
	// User overrides the URL's user; PasswordFile or PasswordEnv (the
	// name of an environment variable) give its password, so that a
	// password with any character in it never has to be written into the
	// URL.
	User         string `yaml:"user"`
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
	// Exchange is the topic exchange the agents publish to
	// (default forest.frames).
	Exchange string `yaml:"exchange"`
	// BindingKey binds Queue to Exchange (default frames.#).
	BindingKey string `yaml:"binding_key"`
	// Queue is the durable quorum queue consumed (default
	// forest.cloud.frames).
	Queue string `yaml:"queue"`
	// DeadLetterExchange is the fanout exchange of dead letters (default
	// forest.cloud.dlx).
	DeadLetterExchange string `yaml:"dead_letter_exchange"`
	// DeadLetterQueue is the quorum queue of dead letters (default
	// forest.cloud.frames.dlq).
	DeadLetterQueue string `yaml:"dead_letter_queue"`
	// DeliveryLimit is the policy's delivery-limit (default 20): deliveries
	// of one message before the broker dead-letters it.
	DeliveryLimit int `yaml:"delivery_limit"`
	// DeadLetterStrategy is the policy's dead-letter-strategy:
	// at-least-once (the default; the broker keeps a dead letter until
	// the dead-letter queue confirmed it) or at-most-once.
	DeadLetterStrategy string `yaml:"dead_letter_strategy"`
	// MaxLength and MaxLengthBytes are the policy's max-length and
	// max-length-bytes of the frames queue (0, the default: no limit).
	// Past them the broker refuses new frames (overflow reject-publish),
	// which then wait in the devices' spools.
	MaxLength      int   `yaml:"max_length"`
	MaxLengthBytes int64 `yaml:"max_length_bytes"`
	// PolicyName and PolicyPriority name the policy that carries these
	// settings (defaults forest-cloud-frames and 10); see Policy.
	PolicyName     string `yaml:"policy_name"`
	PolicyPriority int    `yaml:"policy_priority"`
	// Prefetch bounds unacknowledged messages per consumer (default 32).
	// Acks are held for up to half of what the workers leave free of it
	// (see the package comment).
	Prefetch int `yaml:"prefetch"`
	// Heartbeat is the AMQP heartbeat interval (default 10s).
	Heartbeat time.Duration `yaml:"heartbeat"`
	// ReconnectMin and ReconnectMax bound the jittered reconnect backoff
	// (defaults 500ms and 30s).
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	ReconnectMax time.Duration `yaml:"reconnect_max"`
	// ConfirmTimeout bounds the wait for the broker to confirm a dead
	// letter or requeued message (default 30s).
	ConfirmTimeout time.Duration `yaml:"confirm_timeout"`
}

// S3Config names the bucket and how to reach it. Credentials, region and
// profile come from the standard AWS configuration (environment, shared
// files, instance role) unless set here.
type S3Config struct {
	// Bucket is the bucket to write to (required).
	Bucket string `yaml:"bucket"`
	// Prefix starts the key of every frame object (default frames).
	Prefix string `yaml:"prefix"`
	// LegacyPrefix starts the key of every legacy image (default legacy).
	LegacyPrefix string `yaml:"legacy_prefix"`
	// Endpoint overrides the S3 endpoint, for S3-compatible servers.
	Endpoint string `yaml:"endpoint"`
	// Region overrides the AWS region.
	Region string `yaml:"region"`
	// Profile selects a shared-config profile.
	Profile string `yaml:"profile"`
	// PathStyle selects path-style addressing (host/bucket/key).
	PathStyle bool `yaml:"path_style"`
	// AccessKeyID and SecretAccessKey override the credential chain; use
	// ${ENV} expansion, never literal secrets.
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey string `yaml:"secret_access_key"`
	// Checksum is "sha256" (send x-amz-checksum-sha256 with every PUT,
	// the default) or "none" (for servers that reject flexible checksums).
	Checksum string `yaml:"checksum"`
	// ConditionalPut sends If-None-Match: * (default true); when false, a
	// GET precedes each PUT instead (racy between replicas, for servers
	// without conditional writes).
	ConditionalPut *bool `yaml:"conditional_put"`
	// SidecarLast writes a frame's sidecar only after its image and mask
	// are stored, so that a sidecar means a complete frame (default true).
	// False writes all three at once.
	SidecarLast *bool `yaml:"sidecar_last"`
	// RequestTimeout bounds one S3 request (default 30s).
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// RetryMin and RetryMax bound the jittered backoff between retries of
	// a transient S3 error (defaults 200ms and 10s); RetryMaxElapsed is
	// how long a message is retried before it is returned to the queue
	// (default 2m).
	RetryMin        time.Duration `yaml:"retry_min"`
	RetryMax        time.Duration `yaml:"retry_max"`
	RetryMaxElapsed time.Duration `yaml:"retry_max_elapsed"`
	// MaxConns bounds the connections to the S3 endpoint (default
	// 2 × Consumer.Workers).
	MaxConns int `yaml:"max_conns"`
}

// ConsumerConfig sizes the worker pool and the limits on input.
type ConsumerConfig struct {
	// Workers is the number of messages handled at once (default 8).
	Workers int `yaml:"workers"`
	// ShutdownTimeout is how long in-flight messages may finish after a
	// stop before they are returned to the queue (default 30s).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MaxMessageBytes is the largest body accepted (default 32 MiB).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// MaxPixels is the largest image accepted, width × height, checked
	// from the header before decoding (default wire.MaxPixels, 40 M, what
	// forest-agent takes). Decoding a legacy image holds up to 4 bytes per
	// pixel per worker.
	MaxPixels int `yaml:"max_pixels"`
	// AcceptLegacy accepts the legacy JSON message (default true).
	AcceptLegacy *bool `yaml:"accept_legacy"`
}

// IdentityConfig says which broker users may publish for which devices.
type IdentityConfig struct {
	// RequireUserID refuses wire frames without a user_id property
	// (default true).
	RequireUserID *bool `yaml:"require_user_id"`
	// Devices maps a broker user to the devices it may publish for, in
	// addition to the device named like the user. No wildcards.
	Devices map[string][]string `yaml:"devices"`
}

// LegacyConfig governs the legacy JSON message of old devices: whose are
// accepted and how their images are stored, under s3.legacy_prefix.
type LegacyConfig struct {
	// Users are the broker users whose legacy messages are accepted,
	// matched against the message's user_id property, which RabbitMQ
	// validates against the publishing connection's user. A legacy message
	// names no device, so its user is all that says who sent it: one from
	// any other user, or without a user_id, is dead-lettered with reason
	// legacy_user. Empty (the default): no legacy message is accepted.
	Users []string `yaml:"users"`
	// Format is LegacyOriginal (the default: the image as the device sent
	// it, with its own content type and extension) or LegacyPNG (converted
	// to PNG, as the old service stored every image).
	Format string `yaml:"format"`
	// Key is LegacyKeyExt (the default: image_name with its extension
	// replaced by the stored format's) or LegacyKeyName (image_name as
	// sent, the old service's key).
	Key string `yaml:"key"`
}

// Values of LegacyConfig.Format and Key.
const (
	LegacyOriginal = "original"
	LegacyPNG      = "png"
	LegacyKeyExt   = "extension"
	LegacyKeyName  = "name"
)

// HTTPConfig is where /metrics, /healthz and /readyz are served.
type HTTPConfig struct {
	// Listen is host:port ("" turns the server off).
	Listen string `yaml:"listen"`
}

// LogConfig selects the log output.
type LogConfig struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// Format is json (default) or text.
	Format string `yaml:"format"`
}

// LoadConfig reads, expands, parses, defaults and validates a config file.
func LoadConfig(path string) (*Config, error) {
	var c Config
	if err := config.Load(path, &c, c.finish); err != nil {
		return nil, err
	}
	return &c, nil
}

// ParseConfig parses b with internal/config (strict keys; ${ENV} and
// ${ENV:-default} expanded in values, an unset variable without a default
// is an error naming the field), applies defaults and validates the result.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	if err := config.Parse(b, &c); err != nil {
		return nil, err
	}
	return &c, c.finish()
}

// finish applies the defaults and validates the result.
func (c *Config) finish() error {
	if len(c.AMQP.URLs) == 0 {
		c.AMQP.URLs = nil
	}
	c.Defaults()
	return c.Validate()
}

// Brokers returns the broker addresses as configured: amqp.urls, or
// amqp.url alone.
func (a *AMQPConfig) Brokers() []string {
	if a.URL != "" {
		return []string{a.URL}
	}
	return a.URLs
}

// BrokerURLs returns the broker addresses (amqp.url or amqp.urls) with
// amqp.user and the password from amqp.password_file or amqp.password_env
// filled in.
func (c *Config) BrokerURLs() ([]string, error) {
	a := c.AMQP
	cr := config.Credentials{Prefix: "amqp", User: a.User, PasswordFile: a.PasswordFile, PasswordEnv: a.PasswordEnv}
	return cr.URLs(a.Brokers())
}

func ptr[T any](v T) *T { return &v }

// Defaults fills zero values with the defaults.
func (c *Config) Defaults() {
	a := &c.AMQP
	def(&a.Exchange, "forest.frames")
	def(&a.BindingKey, "frames.#")
	def(&a.Queue, "forest.cloud.frames")
	def(&a.DeadLetterExchange, "forest.cloud.dlx")
	def(&a.DeadLetterQueue, "forest.cloud.frames.dlq")
	def(&a.DeliveryLimit, 20)
	def(&a.DeadLetterStrategy, "at-least-once")
	def(&a.PolicyName, "forest-cloud-frames")
	def(&a.PolicyPriority, 10)
	def(&a.Prefetch, 32)
	def(&a.Heartbeat, 10*time.Second)
	def(&a.ReconnectMin, 500*time.Millisecond)
	def(&a.ReconnectMax, 30*time.Second)
	def(&a.ConfirmTimeout, 30*time.Second)
	s := &c.S3
	def(&s.Prefix, "frames")
	def(&s.LegacyPrefix, "legacy")
	def(&s.Checksum, "sha256")
	if s.ConditionalPut == nil {
		s.ConditionalPut = ptr(true)
	}
	if s.SidecarLast == nil {
		s.SidecarLast = ptr(true)
	}
	def(&s.RequestTimeout, 30*time.Second)
	def(&s.RetryMin, 200*time.Millisecond)
	def(&s.RetryMax, 10*time.Second)
	def(&s.RetryMaxElapsed, 2*time.Minute)
	k := &c.Consumer
	def(&k.Workers, 8)
	def(&k.ShutdownTimeout, 30*time.Second)
	def(&k.MaxMessageBytes, DefaultMaxMessageBytes)
	def(&k.MaxPixels, DefaultMaxPixels)
	if k.AcceptLegacy == nil {
		k.AcceptLegacy = ptr(true)
	}
	def(&s.MaxConns, 2*k.Workers)
	if c.Identity.RequireUserID == nil {
		c.Identity.RequireUserID = ptr(true)
	}
	def(&c.Legacy.Format, LegacyOriginal)
	def(&c.Legacy.Key, LegacyKeyExt)
	def(&c.Log.Level, "info")
	def(&c.Log.Format, "json")
	c.Fleet.defaults()
}

func def[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// Validate checks the configuration; the error names every bad field
// (errors.Join of *FieldError), e.g. "s3.bucket: must be set".
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, config.Bad(field, format, args...))
	}
	switch {
	case c.AMQP.URL != "" && len(c.AMQP.URLs) > 0:
		bad("amqp.urls", "set amqp.url or amqp.urls, not both")
	case len(c.AMQP.Brokers()) == 0:
		bad("amqp.url", "must be set (e.g. amqps://broker.internal:5671/forest, with amqp.user and amqp.password_env), or amqp.urls to the nodes of a cluster")
	default:
		var first *url.URL
		for i, raw := range c.AMQP.Brokers() {
			field := "amqp.url"
			if len(c.AMQP.URLs) > 0 {
				field = fmt.Sprintf("amqp.urls[%d]", i)
			}
			u, err := url.Parse(raw)
			switch {
			case err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || u.Host == "":
				bad(field, "must be an amqp:// or amqps:// URL")
				continue
			case first == nil:
				first = u
			case u.Scheme != first.Scheme:
				bad(field, "is %s://, but amqp.urls[0] is %s://: every node takes the same scheme", u.Scheme, first.Scheme)
			case u.User.Username() != first.User.Username():
				bad(field, "names user %q, but amqp.urls[0] names %q: set amqp.user instead", u.User.Username(), first.User.Username())
			}
		}
	}
	if c.AMQP.PasswordFile != "" && c.AMQP.PasswordEnv != "" {
		bad("amqp.password_env", "set either amqp.password_file or amqp.password_env, not both")
	}
	for f, v := range map[string]string{"amqp.exchange": c.AMQP.Exchange, "amqp.queue": c.AMQP.Queue,
		"amqp.dead_letter_exchange": c.AMQP.DeadLetterExchange, "amqp.dead_letter_queue": c.AMQP.DeadLetterQueue} {
		if v == "" {
			bad(f, "must not be empty")
		}
	}
	if c.AMQP.Queue != "" && c.AMQP.Queue == c.AMQP.DeadLetterQueue {
		bad("amqp.dead_letter_queue", "must differ from amqp.queue")
	}
	if c.AMQP.DeliveryLimit < 1 {
		bad("amqp.delivery_limit", "must be >= 1 (got %d)", c.AMQP.DeliveryLimit)
	}
	if s := c.AMQP.DeadLetterStrategy; s != "at-least-once" && s != "at-most-once" {
		bad("amqp.dead_letter_strategy", "must be at-least-once or at-most-once (got %q)", s)
	}
	if c.AMQP.MaxLength < 0 {
		bad("amqp.max_length", "must be >= 0 (got %d)", c.AMQP.MaxLength)
	}
	if c.AMQP.MaxLengthBytes < 0 {
		bad("amqp.max_length_bytes", "must be >= 0 (got %d)", c.AMQP.MaxLengthBytes)
	}
	if c.AMQP.PolicyName == "" || strings.ContainsAny(c.AMQP.PolicyName, "\x00\n") {
		bad("amqp.policy_name", "must be a policy name (got %q)", c.AMQP.PolicyName)
	}
	if c.AMQP.Prefetch < 1 || c.AMQP.Prefetch > 65535 {
		bad("amqp.prefetch", "must be within 1..65535 (got %d)", c.AMQP.Prefetch)
	}
	positive := func(f string, d time.Duration) {
		if d <= 0 {
			bad(f, "must be > 0 (got %s)", d)
		}
	}
	positive("amqp.heartbeat", c.AMQP.Heartbeat)
	positive("amqp.reconnect_min", c.AMQP.ReconnectMin)
	positive("amqp.confirm_timeout", c.AMQP.ConfirmTimeout)
	if c.AMQP.ReconnectMax < c.AMQP.ReconnectMin {
		bad("amqp.reconnect_max", "must be >= amqp.reconnect_min (got %s < %s)", c.AMQP.ReconnectMax, c.AMQP.ReconnectMin)
	}
	if c.S3.Bucket == "" {
		bad("s3.bucket", "must be set")
	}
	for f, p := range map[string]string{"s3.prefix": c.S3.Prefix, "s3.legacy_prefix": c.S3.LegacyPrefix} {
		if p == "" {
			continue
		}
		if _, err := wire.SanitiseName(p); err != nil {
			bad(f, "not a safe key prefix: %v", err)
		}
	}
	if c.Consumer.AcceptLegacy == nil || *c.Consumer.AcceptLegacy {
		// A legacy image's key is any name the old device sends under the
		// legacy prefix, so the two prefixes must not overlap: a legacy
		// name could otherwise take a frame's key first.
		if p, l := c.S3.Prefix, c.S3.LegacyPrefix; p == "" || l == "" || l == p || strings.HasPrefix(l, p+"/") {
			bad("s3.legacy_prefix", "must not equal or sit inside s3.prefix (got %q with s3.prefix %q): a legacy image could take a frame's key", l, p)
		} else if strings.HasPrefix(p, l+"/") {
			bad("s3.legacy_prefix", "must not contain s3.prefix (got %q with s3.prefix %q): a legacy image could take a frame's key", l, p)
		}
	}
	for i, u := range c.Legacy.Users {
		if u == "" || strings.ContainsAny(u, "*?") {
			bad(fmt.Sprintf("legacy.users[%d]", i), "must be a broker user name, no wildcards (got %q)", u)
		}
	}
	if c.S3.Endpoint != "" {
		if u, err := url.Parse(c.S3.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("s3.endpoint", "must be an http:// or https:// URL (got %q)", c.S3.Endpoint)
		}
	}
	if (c.S3.AccessKeyID == "") != (c.S3.SecretAccessKey == "") {
		bad("s3.secret_access_key", "s3.access_key_id and s3.secret_access_key must be set together")
	}
	if c.S3.Checksum != "sha256" && c.S3.Checksum != "none" {
		bad("s3.checksum", "must be sha256 or none (got %q)", c.S3.Checksum)
	}
	positive("s3.request_timeout", c.S3.RequestTimeout)
	positive("s3.retry_min", c.S3.RetryMin)
	positive("s3.retry_max_elapsed", c.S3.RetryMaxElapsed)
	if c.S3.RetryMax < c.S3.RetryMin {
		bad("s3.retry_max", "must be >= s3.retry_min (got %s < %s)", c.S3.RetryMax, c.S3.RetryMin)
	}
	if c.S3.MaxConns < 1 {
		bad("s3.max_conns", "must be >= 1 (got %d)", c.S3.MaxConns)
	}
	if c.Consumer.Workers < 1 || c.Consumer.Workers > 1024 {
		bad("consumer.workers", "must be within 1..1024 (got %d)", c.Consumer.Workers)
	}
	positive("consumer.shutdown_timeout", c.Consumer.ShutdownTimeout)
	if c.Consumer.MaxMessageBytes < 1 {
		bad("consumer.max_message_bytes", "must be > 0 (got %d)", c.Consumer.MaxMessageBytes)
	}
	if c.Consumer.MaxPixels < 1 {
		bad("consumer.max_pixels", "must be > 0 (got %d)", c.Consumer.MaxPixels)
	}
	for user, devs := range c.Identity.Devices {
		for _, d := range devs {
			if d == "*" {
				bad("identity.devices."+user, "wildcards are not allowed; list each device")
			}
		}
	}
	if c.Legacy.Format != LegacyOriginal && c.Legacy.Format != LegacyPNG {
		bad("legacy.format", "must be %s or %s (got %q)", LegacyOriginal, LegacyPNG, c.Legacy.Format)
	}
	if c.Legacy.Key != LegacyKeyExt && c.Legacy.Key != LegacyKeyName {
		bad("legacy.key", "must be %s or %s (got %q)", LegacyKeyExt, LegacyKeyName, c.Legacy.Key)
	}
	if c.HTTP.Listen != "" {
		if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
			bad("http.listen", "must be host:port (got %q)", c.HTTP.Listen)
		}
	}
	c.validateFleet(bad)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error (got %q)", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		bad("log.format", "must be json or text (got %q)", c.Log.Format)
	}
	return errors.Join(errs...)
}
