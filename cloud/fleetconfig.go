package cloud

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/forestwatch/forest/internal/config"
	"github.com/forestwatch/forest/wire"
)

// FleetConfig configures the agents' status reports and the fleet page
// (see fleet.go).
type FleetConfig struct {
	// StatusQueue is the queue of status reports (default
	// forest.cloud.status): classic, auto-delete, bounded, bound to
	// amqp.exchange with StatusBindingKey (default status.#). Reports are
	// disposable: while no forest-cloud runs, none are kept.
	StatusQueue      string `yaml:"status_queue"`
	StatusBindingKey string `yaml:"status_binding_key"`
	// StatusPrefix starts the key of each device's latest report,
	// {status_prefix}/{device}.json (default status).
	StatusPrefix string `yaml:"status_prefix"`
	// Devices are always on the page and in the metrics, reported or not.
	// Other devices are added when they first report, up to MaxDevices
	// in all (default 1000), so the metrics' series stay bounded.
	Devices    []string `yaml:"devices"`
	MaxDevices int      `yaml:"max_devices"`
	// SilentAfter is how many of a device's status intervals may pass
	// without a report before it is shown silent (default 3).
	SilentAfter int `yaml:"silent_after"`
	// DefaultInterval is the status interval assumed for a device whose
	// report does not give one (default 5m).
	DefaultInterval time.Duration `yaml:"default_interval"`
	// Refresh is how often the stored reports are re-read from S3, so
	// that every replica shows what any replica received (default 30s).
	Refresh time.Duration `yaml:"refresh"`
	// Allow lists the networks (CIDR) allowed to see the fleet page
	// (default loopback only). A network that reaches beyond private
	// addresses needs TokenFile or BasicAuth.
	Allow []string `yaml:"allow"`
	// TokenFile holds a token (16 characters or more) that a client must
	// send as "Authorization: Bearer <token>" or as the password of HTTP
	// basic auth (any user name).
	TokenFile string `yaml:"token_file"`
	// BasicAuth requires HTTP basic auth with this user and the password
	// in PasswordFile.
	BasicAuth BasicAuthConfig `yaml:"basic_auth"`
	// ThumbWorkers bounds the thumbnails made at once (default 2);
	// ThumbCache is how many are kept in memory (default 512, about
	// 10 KB each).
	ThumbWorkers int `yaml:"thumb_workers"`
	ThumbCache   int `yaml:"thumb_cache"`
	// DLQScanInterval is how often, at most and only while the page is
	// viewed, the dead-letter queue is read through to count its messages
	// by device and reason (default 5m); DLQScanLimit bounds the messages
	// read (default 1000).
	DLQScanInterval time.Duration `yaml:"dlq_scan_interval"`
	DLQScanLimit    int           `yaml:"dlq_scan_limit"`
}

// BasicAuthConfig names the fleet page's basic-auth user and password file.
type BasicAuthConfig struct {
	User         string `yaml:"user"`
	PasswordFile string `yaml:"password_file"`
}

func (f *FleetConfig) defaults() {
	def(&f.StatusQueue, "forest.cloud.status")
	def(&f.StatusBindingKey, "status.#")
	def(&f.StatusPrefix, "status")
	def(&f.MaxDevices, 1000)
	def(&f.SilentAfter, 3)
	def(&f.DefaultInterval, 5*time.Minute)
	def(&f.Refresh, 30*time.Second)
	if f.Allow == nil {
		f.Allow = []string{"127.0.0.0/8", "::1/128"}
	}
	def(&f.ThumbWorkers, 2)
	def(&f.ThumbCache, 512)
	def(&f.DLQScanInterval, 5*time.Minute)
	def(&f.DLQScanLimit, 1000)
}

func (c *Config) validateFleet(bad func(field, format string, args ...any)) {
	f := &c.Fleet
	if f.StatusQueue == "" || f.StatusQueue == c.AMQP.Queue || f.StatusQueue == c.AMQP.DeadLetterQueue {
		bad("fleet.status_queue", "must be set and differ from amqp.queue and amqp.dead_letter_queue")
	}
	if f.StatusBindingKey == "" || f.StatusBindingKey == c.AMQP.BindingKey {
		bad("fleet.status_binding_key", "must be set and differ from amqp.binding_key")
	}
	if _, err := wire.SanitiseName(f.StatusPrefix); err != nil || strings.Contains(f.StatusPrefix, "/") {
		bad("fleet.status_prefix", "must be one safe key segment (got %q)", f.StatusPrefix)
	}
	for _, p := range []string{c.S3.Prefix, c.S3.LegacyPrefix} {
		if p != "" && (f.StatusPrefix == p || strings.HasPrefix(p+"/", f.StatusPrefix+"/")) {
			bad("fleet.status_prefix", "must differ from s3.prefix and s3.legacy_prefix (got %q)", f.StatusPrefix)
		}
	}
	for _, d := range f.Devices {
		if !wire.ValidID(d) {
			bad("fleet.devices", "%q is not a device id", d)
		}
	}
	if f.MaxDevices < len(f.Devices) || f.MaxDevices < 1 {
		bad("fleet.max_devices", "must be >= 1 and >= the number of fleet.devices (got %d)", f.MaxDevices)
	}
	if f.SilentAfter < 1 {
		bad("fleet.silent_after", "must be >= 1 (got %d)", f.SilentAfter)
	}
	for name, d := range map[string]time.Duration{"fleet.default_interval": f.DefaultInterval, "fleet.refresh": f.Refresh, "fleet.dlq_scan_interval": f.DLQScanInterval} {
		if d <= 0 {
			bad(name, "must be > 0 (got %s)", d)
		}
	}
	if f.ThumbWorkers < 1 || f.ThumbCache < 1 || f.DLQScanLimit < 1 {
		bad("fleet.thumb_workers", "thumb_workers, thumb_cache and dlq_scan_limit must be >= 1")
	}
	if f.TokenFile != "" && f.BasicAuth != (BasicAuthConfig{}) {
		bad("fleet.token_file", "set either fleet.token_file or fleet.basic_auth, not both")
	}
	if (f.BasicAuth.User == "") != (f.BasicAuth.PasswordFile == "") {
		bad("fleet.basic_auth", "user and password_file go together")
	}
	auth := f.TokenFile != "" || f.BasicAuth.User != ""
	if _, err := parseAllow(f.Allow, auth); err != nil {
		bad("fleet.allow", "%v", err)
	}
}

// parseAllow parses the allowed networks. Without auth, each must hold
// only loopback, private or link-local addresses: the page is off the
// public internet unless a password guards it.
func parseAllow(cidrs []string, auth bool) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("%q is not a network in CIDR notation (e.g. 10.0.0.0/8)", c)
		}
		p = p.Masked()
		if !auth && !local(p) {
			return nil, fmt.Errorf("%s admits public addresses: set fleet.token_file or fleet.basic_auth, or list private networks only", p)
		}
		out = append(out, p)
	}
	return out, nil
}

// local reports whether every address of p is loopback, private or
// link-local.
func local(p netip.Prefix) bool {
	first := p.Addr()
	last := lastAddr(p)
	ok := func(a netip.Addr) bool {
		return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast()
	}
	if !ok(first) || !ok(last) {
		return false
	}
	// Both ends local: also require one local block to hold both.
	for _, b := range []string{"127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10"} {
		bp := netip.MustParsePrefix(b)
		if bp.Contains(first) && bp.Contains(last) {
			return true
		}
	}
	return false
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range a {
		for b := 0; b < 8; b++ {
			if i*8+b >= bits {
				a[i] |= 0x80 >> b
			}
		}
	}
	l, _ := netip.AddrFromSlice(a)
	return l
}

// secret reads the token or the basic-auth password.
func (f *FleetConfig) secret() (user, secret string, err error) {
	path := f.TokenFile
	if path == "" {
		path = f.BasicAuth.PasswordFile
	}
	if path == "" {
		return "", "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", config.Bad("fleet", "read %s: %v", path, err)
	}
	s := strings.TrimSpace(string(b))
	if f.TokenFile != "" && len(s) < 16 {
		return "", "", config.Bad("fleet.token_file", "the token in %s is shorter than 16 characters", path)
	}
	if s == "" {
		return "", "", config.Bad("fleet.basic_auth.password_file", "%s is empty", path)
	}
	return f.BasicAuth.User, s, nil
}
