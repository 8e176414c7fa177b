package cloud_test

import (
	"bytes"
	"errors"
	"image"
	"image/jpeg"
	"image/png"
	"net/url"
	"slices"
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
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b}\nlegacy: {format: tiff}":                        `legacy.format: must be original or png (got "tiff")`,
		"amqp: {url: 'amqp://x'}\ns3: {bucket: b}\nlegacy: {key: hash}":                           `legacy.key: must be extension or name (got "hash")`,
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
	for _, c := range []struct{ name, ext, want string }{
		{"cam/IMG 1.jpeg", "jpg", "legacy/cam/IMG 1.jpg"},
		{"cam/IMG 1.jpeg", "png", "legacy/cam/IMG 1.png"},
		{"noext", "png", "legacy/noext.png"},
		{"cam/.hidden", "jpg", "legacy/cam/.hidden.jpg"},
		// The old service's key: image_name as sent.
		{"cam/IMG 1.jpeg", "", "legacy/cam/IMG 1.jpeg"},
		{"noext", "", "legacy/noext"},
	} {
		if k, err := cloud.LegacyKey("legacy", c.name, c.ext); err != nil || k != c.want {
			t.Errorf("LegacyKey(%q, %q) = %q, %v; want %q", c.name, c.ext, k, err, c.want)
		}
	}
	if _, err := cloud.LegacyKey("legacy", "../x.jpg", ""); err == nil {
		t.Error("a traversal name is refused with the old layout too")
	}
}

// jpegOf encodes the test image n as a JPEG.
func jpegOf(t testing.TB, n, w, h int) []byte {
	t.Helper()
	src, err := png.Decode(bytes.NewReader(testImage(n, w, h)))
	if err != nil {
		t.Fatal(err)
	}
	var jb bytes.Buffer
	if err := jpeg.Encode(&jb, src, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return jb.Bytes()
}

// TestDecodeLegacy: by default a legacy image is kept as sent, with the
// content type and extension of its format; converted, a JPEG becomes a
// PNG of exactly the decoded pixels. An image cut short is refused either
// way, and a pixel bomb before it is decoded.
func TestDecodeLegacy(t *testing.T) {
	img := testImage(3, 5, 4)
	l, err := cloud.DecodeLegacy(legacyBody(img, "a.jpg"), cloud.LegacyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Name != "a.jpg" || l.Format != "png" || !bytes.Equal(l.Image, img) || l.ContentType != "image/png" || l.Ext != "png" || l.Width != 5 || l.Height != 4 {
		t.Errorf("%+v", l)
	}
	jb := jpegOf(t, 9, 16, 12)
	l, err = cloud.DecodeLegacy(legacyBody(jb, "b.jpg"), cloud.LegacyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(l.Image, jb) || l.Format != "jpeg" || l.ContentType != "image/jpeg" || l.Ext != "jpg" || l.Width != 16 || l.Height != 12 {
		t.Errorf("jpeg kept as sent: %+v", l)
	}
	// Some cameras append bytes after the end of the image.
	if _, err := cloud.DecodeLegacy(legacyBody(append(slices.Clone(jb), "trailer"...), "c.jpg"), cloud.LegacyOptions{}); err != nil {
		t.Errorf("jpeg with bytes after its end marker: %v", err)
	}
	// A PNG is kept as sent when PNG is asked for.
	l, err = cloud.DecodeLegacy(legacyBody(img, "a.png"), cloud.LegacyOptions{PNG: true})
	if err != nil || !bytes.Equal(l.Image, img) {
		t.Errorf("png converted to png: %v", err)
	}
	// A JPEG converted: a PNG of exactly the pixels the JPEG decodes to.
	l, err = cloud.DecodeLegacy(legacyBody(jb, "b.jpg"), cloud.LegacyOptions{PNG: true})
	if err != nil {
		t.Fatal(err)
	}
	if l.Format != "jpeg" || l.ContentType != "image/png" || l.Ext != "png" {
		t.Errorf("jpeg as png: %+v", l)
	}
	samePixels(t, jb, l.Image)

	var pe *cloud.PoisonError
	for name, body := range map[string][]byte{
		"truncated jpeg":       jb[:len(jb)*2/3],
		"jpeg without its end": jb[:len(jb)-2],
		"truncated png":        img[:len(img)-5],
		"png with a bad crc":   flip(img, len(img)/2),
	} {
		for _, conv := range []bool{false, true} {
			_, err := cloud.DecodeLegacy(legacyBody(body, "x.jpg"), cloud.LegacyOptions{PNG: conv})
			if !errors.As(err, &pe) || pe.Reason != cloud.ReasonNotImage {
				t.Errorf("%s (png %v): %v, want reason not_image", name, conv, err)
			}
		}
	}
	_, err = cloud.DecodeLegacy(legacyBody(hugePNG(9000, 9000), "a"), cloud.LegacyOptions{MaxPixels: 1 << 20})
	if !errors.As(err, &pe) || pe.Reason != cloud.ReasonTooLarge || !errors.Is(err, cloud.ErrTooLarge) {
		t.Errorf("pixel bomb: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := slices.Clone(b)
	c[i] ^= 0x40
	return c
}

// samePixels checks that the PNG holds exactly the pixels of the JPEG as
// image/jpeg decodes it.
func samePixels(t *testing.T, jpg, pngb []byte) {
	t.Helper()
	want, err := jpeg.Decode(bytes.NewReader(jpg))
	if err != nil {
		t.Fatal(err)
	}
	got, err := png.Decode(bytes.NewReader(pngb))
	if err != nil {
		t.Fatalf("converted image is not a PNG: %v", err)
	}
	if got.Bounds() != want.Bounds() {
		t.Fatalf("png %v, jpeg %v", got.Bounds(), want.Bounds())
	}
	b := want.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r0, g0, b0, _ := want.At(x, y).RGBA()
			r1, g1, b1, a1 := got.At(x, y).RGBA()
			if r0>>8 != r1>>8 || g0>>8 != g1>>8 || b0>>8 != b1>>8 || a1 != 0xffff {
				t.Fatalf("pixel %d,%d: png %d,%d,%d,%d, jpeg %d,%d,%d", x, y, r1>>8, g1>>8, b1>>8, a1>>8, r0>>8, g0>>8, b0>>8)
			}
		}
	}
}

// FuzzLegacy: the legacy decoder never panics, and whatever it accepts is
// an image within the pixel limit: the received format kept as sent, or a
// PNG when converted.
func FuzzLegacy(f *testing.F) {
	f.Add(legacyBody(testImage(1, 3, 3), "a.png"))
	f.Add(legacyBody(jpegOf(f, 2, 9, 7), "a.jpg"))
	f.Add(legacyBody(hugePNG(70000, 70000), "b.png"))
	f.Add([]byte(`{"image":"","image_metadata":{"image_name":"x"}}`))
	f.Add([]byte(`{"image":"R0lGODlhAQABAAAAACw=","image_metadata":{"image_name":"g.gif"}}`))
	f.Add([]byte(`{"image":null,"image_metadata":null}`))
	f.Add([]byte(`not json`))
	f.Add([]byte(`{"image":"YQ","image_metadata":{"image_name":"unpadded"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, conv := range []bool{false, true} {
			l, err := cloud.DecodeLegacy(body, cloud.LegacyOptions{MaxPixels: 1 << 16, MaxBytes: 1 << 16, PNG: conv})
			if err != nil {
				if !errors.Is(err, cloud.ErrPoison) {
					t.Fatalf("error not poison: %v", err)
				}
				continue
			}
			cfg, format, err := image.DecodeConfig(bytes.NewReader(l.Image))
			if err != nil || cfg.Width*cfg.Height > 1<<16 || cfg.Width != l.Width || cfg.Height != l.Height {
				t.Fatalf("accepted %v %v", cfg, err)
			}
			if conv && format != "png" || !conv && format != l.Format || "image/"+format != l.ContentType {
				t.Fatalf("png %v: stored %s as %s, received %s", conv, format, l.ContentType, l.Format)
			}
		}
	})
}

// TestGCPercentFor: forest-cloud collects less often while its live heap is
// small message bodies, and at the default rate when it converts legacy
// images to PNG.
func TestGCPercentFor(t *testing.T) {
	c, err := cloud.ParseConfig([]byte("amqp: {url: 'amqp://x'}\ns3: {bucket: b}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cloud.GCPercentFor(c); got != cloud.GCPercent {
		t.Errorf("default: GOGC %d, want %d", got, cloud.GCPercent)
	}
	c.Legacy.Format = cloud.LegacyPNG
	if got := cloud.GCPercentFor(c); got != 100 {
		t.Errorf("legacy.format png: GOGC %d, want 100", got)
	}
}
