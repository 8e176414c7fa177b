package uplink

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/forestwatch/forest/wire"
)

// Defaults applied by New to zero fields of Options.
const (
	DefaultExchange       = "forest.frames"
	DefaultWindow         = 32
	DefaultConfirmTimeout = 30 * time.Second
	DefaultDialTimeout    = 15 * time.Second
	DefaultHeartbeat      = 10 * time.Second
	DefaultBackoffMin     = 500 * time.Millisecond
	DefaultBackoffMax     = time.Minute
	DefaultCloseTimeout   = 5 * time.Second
)

// Options configure a Publisher. The zero value, with a URL, publishes to
// the durable topic exchange "forest.frames" with routing key
// "frames.<device>" and the defaults above.
type Options struct {
	// URL is the broker's amqp:// or amqps:// URL, with credentials and
	// vhost. Set URL or URLs.
	URL string
	// URLs are the addresses of the nodes of a RabbitMQ cluster, each an
	// amqp:// or amqps:// URL with credentials and vhost, all of one
	// scheme. Run connects to one of them, starting at a random one so
	// that a fleet spreads over the nodes; when a connection attempt
	// fails it tries the next at once, and after a connection is lost it
	// dials the next one first. The backoff applies only after every
	// address failed in turn. URL is the same as a URLs of one.
	URLs []string
	// TLS configures amqps:// connections; ignored fields keep the system
	// defaults (system roots, server name from the URL).
	TLS TLSOptions

	// Exchange is the exchange frames are published to (default
	// "forest.frames").
	Exchange string
	// RoutingKey, when set, is used for every message. Otherwise the key is
	// "frames." + the message's "device" header ("frames.unknown" without
	// one).
	RoutingKey string
	// Route, when set, computes the routing key of each message and takes
	// precedence over RoutingKey.
	Route func(*wire.Message) string
	// DeclareExchange declares Exchange as a durable topic exchange on every
	// connection. Leave it off when the device's broker user may only write.
	DeclareExchange bool

	// Window is the maximum number of published but unconfirmed messages
	// (default 32, sized for a slow link).
	Window int
	// ConfirmTimeout bounds the wait for each message's confirm, not counting
	// time the broker holds the connection blocked (default 30s). On expiry
	// the message is reported TimedOut and the connection is dropped.
	ConfirmTimeout time.Duration
	// DialTimeout bounds the TCP connect plus the TLS and AMQP handshakes
	// (default 15s).
	DialTimeout time.Duration
	// Heartbeat is the AMQP heartbeat interval requested (default 10s); a
	// link silent for about three intervals is declared dead. Values under
	// one second take the broker's interval.
	Heartbeat time.Duration
	// BackoffMin and BackoffMax bound the jittered exponential delay between
	// connection attempts (defaults 500ms and 1m).
	BackoffMin, BackoffMax time.Duration
	// CloseTimeout bounds how long Run, once its context is cancelled, waits
	// for outstanding confirms before closing the connection (default 5s).
	CloseTimeout time.Duration

	// MaxMessageBytes is the largest body the broker accepts (RabbitMQ's
	// max_message_size); a larger message is refused with
	// ErrInvalidMessage before it is sent, since the broker would close
	// the channel on it. 0 means 128 MiB, RabbitMQ's default.
	MaxMessageBytes int64

	// RateLimit caps the body bytes published per second with a token
	// bucket, for metered links; 0 means unlimited.
	RateLimit int64
	// Burst is the token bucket's size in bytes (default RateLimit, one
	// second's worth). A message larger than Burst still passes, after the
	// bucket has refilled enough to pay for it.
	Burst int64

	// Name is advertised to the broker as the connection name (for example
	// "forest-agent/dev-42"). Optional.
	Name string
	// Logger receives connection events; nil discards them.
	Logger *slog.Logger
	// Registerer receives the publisher's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// TLSOptions name the files of an amqps:// connection.
type TLSOptions struct {
	// CAFile is a PEM bundle of the certificate authorities trusted to sign
	// the broker's certificate; empty means the system roots.
	CAFile string
	// CertFile and KeyFile are the client certificate and key in PEM, for
	// brokers that require a client certificate. Both or neither.
	CertFile, KeyFile string
	// ServerName is the name checked against the broker's certificate;
	// empty means the URL's host.
	ServerName string
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidOptions, field, fmt.Sprintf(format, args...))
}

// normalize validates o and fills in defaults; URLs holds every address
// afterwards (URL alone becomes a URLs of one).
func (o Options) normalize() (Options, error) {
	switch {
	case o.URL != "" && len(o.URLs) > 0:
		return o, invalid("url", "set url or urls, not both")
	case o.URL != "":
		o.URLs = []string{o.URL}
	case len(o.URLs) == 0:
		return o, invalid("url", "required")
	}
	o.URLs = slices.Clone(o.URLs)
	var scheme string
	for i, raw := range o.URLs {
		field := "url"
		if len(o.URLs) > 1 {
			field = fmt.Sprintf("urls[%d]", i)
		}
		u, err := url.Parse(raw)
		if err != nil {
			return o, invalid(field, "%v", err)
		}
		if u.Scheme != "amqp" && u.Scheme != "amqps" {
			return o, invalid(field, "scheme must be amqp or amqps (got %q)", u.Scheme)
		}
		if u.Host == "" {
			return o, invalid(field, "no host")
		}
		if i > 0 && u.Scheme != scheme {
			return o, invalid(field, "scheme %s, but urls[0] is %s: use one scheme for every node", u.Scheme, scheme)
		}
		scheme = u.Scheme
	}
	if o.TLS != (TLSOptions{}) && scheme != "amqps" {
		return o, invalid("tls", "set, but the url is not amqps://")
	}
	if (o.TLS.CertFile == "") != (o.TLS.KeyFile == "") {
		return o, invalid("tls", "cert_file and key_file go together")
	}
	durs := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"confirm_timeout", &o.ConfirmTimeout, DefaultConfirmTimeout},
		{"dial_timeout", &o.DialTimeout, DefaultDialTimeout},
		{"heartbeat", &o.Heartbeat, DefaultHeartbeat},
		{"backoff_min", &o.BackoffMin, DefaultBackoffMin},
		{"backoff_max", &o.BackoffMax, DefaultBackoffMax},
		{"close_timeout", &o.CloseTimeout, DefaultCloseTimeout},
	}
	for _, d := range durs {
		if *d.v < 0 {
			return o, invalid(d.name, "must be >= 0 (got %s)", *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if o.BackoffMax < o.BackoffMin {
		return o, invalid("backoff_max", "must be >= backoff_min (got %s < %s)", o.BackoffMax, o.BackoffMin)
	}
	if o.Window < 0 {
		return o, invalid("window", "must be >= 0 (got %d)", o.Window)
	}
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.RateLimit < 0 {
		return o, invalid("rate_limit", "must be >= 0 (got %d)", o.RateLimit)
	}
	if o.Burst < 0 {
		return o, invalid("burst", "must be >= 0 (got %d)", o.Burst)
	}
	if o.Burst == 0 {
		o.Burst = o.RateLimit
	}
	if o.Exchange == "" {
		o.Exchange = DefaultExchange
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// tlsConfig loads the files named by o.TLS, for every URL in o.URLs:
// each checks the broker's certificate against its own host name unless
// TLS.ServerName is set. Nil for amqp:// URLs.
func (o Options) tlsConfig() ([]*tls.Config, error) {
	u, _ := url.Parse(o.URLs[0])
	if u.Scheme != "amqps" {
		return make([]*tls.Config, len(o.URLs)), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.TLS.ServerName}
	if o.TLS.CAFile != "" {
		pem, err := os.ReadFile(o.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read tls ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, invalid("tls.ca_file", "no PEM certificate in %s", o.TLS.CAFile)
		}
		cfg.RootCAs = pool
	}
	if o.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.TLS.CertFile, o.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load tls client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	cfgs := make([]*tls.Config, len(o.URLs))
	for i, raw := range o.URLs {
		cfgs[i] = cfg.Clone()
		if cfgs[i].ServerName == "" {
			u, _ := url.Parse(raw)
			cfgs[i].ServerName = u.Hostname()
		}
	}
	return cfgs, nil
}
