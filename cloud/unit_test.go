package cloud_test

import (
	"bytes"
	"errors"
	"image/jpeg"
	"image/png"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/wire"
)

func TestConfigErrorsNameFields(t *testing.T) {
	cases := map[string]string{
		"amqp: {url: 'amqp://u@127.0.0.1/'}":                                                      "s3.bucket: must be set",
		"s3: {bucket: b}":                                                                         "amqp.url: must be set",
		"amqp: {url: 'http://x'}\ns3: {bucket: b}":                                                "amqp.url: must be an amqp://",
		"amqp: {url: 'amqp://x', prefetch: 70000}\ns3: {bucket: b}":                               "amqp.prefetch: must be within 1..65535 (got 70000)",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b, checksum: crc}":                                 `s3.checksum: must be sha256 or none (got "crc")`,
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b, prefix: '../x'}":                                "s3.prefix: not a safe key prefix",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b, access_key_id: k}":                              "s3.secret_access_key: s3.access_key_id and s3.secret_access_key must be set together",
		"amqp: {url: 'amqp://x', reconnect_min: 2s, reconnect_max: 1s}\ns3: {bucket: b}":          "amqp.reconnect_max: must be >= amqp.reconnect_min",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b}\nconsumer: {workers: 0, shutdown_timeout: -1s}": "consumer.shutdown_timeout: must be > 0 (got -1s)",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b}\nidentity: {devices: {gw: ['*']}}":              "identity.devices.gw: wildcards are not allowed",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b}\nhttp: {listen: nonsense}":                      "http.listen: must be host:port",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b}\nlog: {level: loud}":                            `log.level: must be debug, info, warn or error (got "loud")`,
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b, bukket: c}":                                     "s3.bukket: unknown key",
		"amqp: {url: 'amqp://x', password_file: f, password_env: E}\ns3: {bucket: b}":             "amqp.password_env: set either",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: '${T_UNSET_BUCKET}'}":                              "s3.bucket: environment variable T_UNSET_BUCKET is not set",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b, legacy_prefix: frames}":                         "s3.legacy_prefix: must not equal or sit inside s3.prefix",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b, legacy_prefix: frames/old}":                     "s3.legacy_prefix: must not equal or sit inside s3.prefix",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b, prefix: data/frames, legacy_prefix: data}":      "s3.legacy_prefix: must not contain s3.prefix",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b}\nlegacy: {users: ['*']}":                        "legacy.users[0]: must be a broker user name, no wildcards",
		"amqp: {url: 'amqp://x', urls: ['amqp://y']}\ns3: {bucket: b}":                            "amqp.urls: set amqp.url or amqp.urls, not both",
		"amqp: {urls: []}\ns3: {bucket: b}":                                                       "amqp.url: must be set",
		"amqp: {urls: ['amqp://x', 'http://y']}\ns3: {bucket: b}":                                 "amqp.urls[1]: must be an amqp://",
		"amqp: {urls: ['amqp://x', 'amqps://y']}\ns3: {bucket: b}":                                "amqp.urls[1]: is amqps://, but amqp.urls[0] is amqp://",
		"amqp: {urls: ['amqp://u@x', 'amqp://v@y']}\ns3: {bucket: b}":                             "amqp.urls[1]: names user \"v\"",
	}
	for in, want := range cases {
		_, err := cloud.ParseConfig([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", in, err, want)
		}
	}
	// Disjoint prefixes pass, as does an overlap when legacy is off.
	for _, ok := range []string{
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b, prefix: frames, legacy_prefix: frames-old}",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b, prefix: data/frames, legacy_prefix: data/legacy}",
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b, legacy_prefix: frames}\nconsumer: {accept_legacy: false}",
	} {
		if _, err := cloud.ParseConfig([]byte(ok)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	_, err := cloud.ParseConfig([]byte("amqp: {url: 'amqp://x'}"))
	var fe *cloud.FieldError
	if !errors.Is(err, cloud.ErrConfig) || !errors.As(err, &fe) || fe.Field != "s3.bucket" {
		t.Errorf("typed error: %v", err)
	}
}

// TestConfigPasswordAnyCharacter: a password holding URL and YAML syntax
// reaches the broker URL intact through amqp.password_env, and a reference
// in a comment is not expanded.
func TestConfigPasswordAnyCharacter(t *testing.T) {
	t.Setenv("T_AMQP_PW", "a@b/c#d:e%f")
	c, err := cloud.ParseConfig([]byte("# ${T_NOT_SET_IN_COMMENT}\namqp: {url: 'amqps://broker:5671/forest', user: forest-cloud, password_env: T_AMQP_PW}\ns3: {bucket: b}\n"))
	if err != nil {
		t.Fatal(err)
	}
	us, err := c.BrokerURLs()
	if err != nil || len(us) != 1 {
		t.Fatal(us, err)
	}
	u := us[0]
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	if pw, _ := pu.User.Password(); pw != "a@b/c#d:e%f" || pu.User.Username() != "forest-cloud" || pu.Host != "broker:5671" || pu.Path != "/forest" {
		t.Errorf("broker URL %s: user %q password %q host %q path %q", u, pu.User.Username(), pw, pu.Host, pu.Path)
	}
}

// TestConfigClusterURLs: amqp.urls gives every node's address the user and
// the password.
func TestConfigClusterURLs(t *testing.T) {
	t.Setenv("T_AMQP_PW", "p@ss")
	c, err := cloud.ParseConfig([]byte("amqp:\n  urls: ['amqp://n1:5672/forest', 'amqp://n2:5672/forest']\n  user: forest-cloud\n  password_env: T_AMQP_PW\ns3: {bucket: b}\n"))
	if err != nil {
		t.Fatal(err)
	}
	us, err := c.BrokerURLs()
	want := []string{"amqp://forest-cloud:p%40ss@n1:5672/forest", "amqp://forest-cloud:p%40ss@n2:5672/forest"}
	if err != nil || strings.Join(us, " ") != strings.Join(want, " ") {
		t.Fatalf("broker urls %q, %v; want %q", us, err, want)
	}
}

func TestConfigEnvAndDefaults(t *testing.T) {
	t.Setenv("T_BUCKET", "frames-prod")
	c, err := cloud.ParseConfig([]byte("amqp: {url: 'amqp://u:${T_PASS:-pw}@127.0.0.1/'}\ns3: {bucket: '${T_BUCKET}'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.S3.Bucket != "frames-prod" || c.AMQP.URL != "amqp://u:pw@127.0.0.1/" {
		t.Errorf("expansion: %q %q", c.S3.Bucket, c.AMQP.URL)
	}
	if c.AMQP.Exchange != "forest.frames" || c.AMQP.Prefetch != 32 || c.Consumer.Workers != 8 || !*c.S3.ConditionalPut ||
		c.S3.Checksum != "sha256" || c.S3.MaxConns != 16 || !*c.Identity.RequireUserID || c.AMQP.DeliveryLimit != 20 {
		t.Errorf("defaults: %+v", c)
	}
}

func TestKeysFor(t *testing.T) {
	at := time.Date(2026, 3, 4, 23, 59, 0, 0, time.FixedZone("x", -3*3600)) // 2026-03-05 UTC
	k, err := cloud.KeysFor("frames", "mast-01", "mast-01-000042", at, wire.JPEG)
	if err != nil {
		t.Fatal(err)
	}
	want := cloud.FrameKeys{
		Image:   "frames/mast-01/2026/03/05/mast-01-000042.jpg",
		Mask:    "frames/mast-01/2026/03/05/mast-01-000042.mask.png",
		Sidecar: "frames/mast-01/2026/03/05/mast-01-000042.json",
	}
	if k != want {
		t.Errorf("got %+v", k)
	}
	for _, bad := range [][2]string{{"../x", "f"}, {"d", ".."}, {"d/e", "f"}, {"", "f"}} {
		if _, err := cloud.KeysFor("p", bad[0], bad[1], at, wire.PNG); !errors.Is(err, cloud.ErrUnsafeName) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, err := cloud.KeysFor("p", "d", "f", at, "image/gif"); !errors.Is(err, cloud.ErrNotImage) {
		t.Errorf("gif: %v", err)
	}
}

func TestLegacyKey(t *testing.T) {
	if k, err := cloud.LegacyKey("legacy", "cam/IMG 1.jpeg"); err != nil || k != "legacy/cam/IMG 1.png" {
		t.Errorf("legacy key %q %v", k, err)
	}
	if k, err := cloud.LegacyKey("legacy", "noext"); err != nil || k != "legacy/noext.png" {
		t.Errorf("legacy key %q %v", k, err)
	}
}

func TestDecodeLegacy(t *testing.T) {
	img := testImage(3, 5, 4)
	l, err := cloud.DecodeLegacy(legacyBody(img, "a.jpg"), cloud.LegacyLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Name != "a.jpg" || l.Format != "png" || !bytes.Equal(l.PNG, img) || l.Width != 5 || l.Height != 4 {
		t.Errorf("%+v", l)
	}
	// A JPEG from an old device is stored as PNG, as the old service did.
	var jb bytes.Buffer
	src, _ := png.Decode(bytes.NewReader(testImage(9, 16, 12)))
	if err := jpeg.Encode(&jb, src, nil); err != nil {
		t.Fatal(err)
	}
	l, err = cloud.DecodeLegacy(legacyBody(jb.Bytes(), "b.jpg"), cloud.LegacyLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := png.DecodeConfig(bytes.NewReader(l.PNG)); err != nil || l.Format != "jpeg" || cfg.Width != 16 || cfg.Height != 12 {
		t.Errorf("jpeg legacy: %v %+v %v", l.Format, cfg, err)
	}
	_, err = cloud.DecodeLegacy(legacyBody(hugePNG(9000, 9000), "a"), cloud.LegacyLimits{MaxPixels: 1 << 20})
	var pe *cloud.PoisonError
	if !errors.As(err, &pe) || pe.Reason != cloud.ReasonTooLarge || !errors.Is(err, cloud.ErrTooLarge) {
		t.Errorf("pixel bomb: %v", err)
	}
}

// FuzzLegacy: the legacy decoder never panics, and whatever it accepts is a
// PNG within the pixel limit.
func FuzzLegacy(f *testing.F) {
	f.Add(legacyBody(testImage(1, 3, 3), "a.png"))
	f.Add(legacyBody(hugePNG(70000, 70000), "b.png"))
	f.Add([]byte(`{"image":"","image_metadata":{"image_name":"x"}}`))
	f.Add([]byte(`{"image":"R0lGODlhAQABAAAAACw=","image_metadata":{"image_name":"g.gif"}}`))
	f.Add([]byte(`{"image":null,"image_metadata":null}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, body []byte) {
		l, err := cloud.DecodeLegacy(body, cloud.LegacyLimits{MaxPixels: 1 << 16, MaxBytes: 1 << 16})
		if err != nil {
			if !errors.Is(err, cloud.ErrPoison) {
				t.Fatalf("error not poison: %v", err)
			}
			return
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(l.PNG))
		if err != nil || cfg.Width*cfg.Height > 1<<16 {
			t.Fatalf("accepted %v %v", cfg, err)
		}
	})
}
