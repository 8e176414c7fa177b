package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const minimal = "device:\n  id: dev-1\n"

func TestConfigMinimalTakesDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Device.ID = "dev-1"
	if !reflect.DeepEqual(*c, want) {
		t.Fatalf("got %+v\nwant %+v", *c, want)
	}
}

// TestFirmwareDefaultConfig proves firmware/agent.yaml shows every key with
// its default: parsed, it equals Default(), and it names every key that
// Default() marshals to.
func TestFirmwareDefaultConfig(t *testing.T) {
	path := filepath.Join("..", "firmware", "agent.yaml")
	t.Setenv("FOREST_DEVICE_ID", "mast-7")
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Device.ID = "mast-7"
	if !reflect.DeepEqual(*c, want) {
		t.Fatalf("firmware/agent.yaml differs from Default():\n got %+v\nwant %+v", *c, want)
	}
	raw, _ := os.ReadFile(path)
	var doc, def map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	b, _ := yaml.Marshal(want)
	if err := yaml.Unmarshal(b, &def); err != nil {
		t.Fatal(err)
	}
	var walk func(prefix string, d, f map[string]any)
	walk = func(prefix string, d, f map[string]any) {
		for k, v := range d {
			fv, ok := f[k]
			if !ok {
				t.Errorf("firmware/agent.yaml does not document %s%s", prefix, k)
				continue
			}
			if dm, ok := v.(map[string]any); ok {
				fm, _ := fv.(map[string]any)
				walk(prefix+k+".", dm, fm)
			}
		}
	}
	walk("", def, doc)
}

func TestConfigEnvExpansion(t *testing.T) {
	t.Setenv("DEV", "env-dev")
	t.Setenv("EMPTY", "")
	c, err := ParseConfig([]byte("device:\n  id: ${DEV}\n  state_dir: ${NOPE_UNSET:-/tmp/x}\nspool:\n  dir: /s${EMPTY:-/fallback}\n# ${IGNORED_IN_COMMENT}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Device.ID != "env-dev" || c.Device.StateDir != "/tmp/x" || c.Spool.Dir != "/s/fallback" {
		t.Fatalf("expansion wrong: %+v %+v", c.Device, c.Spool)
	}
	_, err = ParseConfig([]byte("device:\n  id: ${FOREST_TEST_UNSET_VAR}\n"))
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "FOREST_TEST_UNSET_VAR") || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("unset variable: %v", err)
	}
}

// TestConfigErrors checks that each bad value is refused with an error
// naming its field.
func TestConfigErrors(t *testing.T) {
	cases := []struct {
		yaml, field, msg string
	}{
		{"device: {id: ''}", "device.id", "required"},
		{"device: {id: 'a b'}", "device.id", "must be 1-128"},
		{"source: {type: ftp}", "source.type", `got "ftp"`},
		{"source: {dir: {after: keep}}", "source.dir.after", "delete or move"},
		{"source: {dir: {settle: 0s}}", "source.dir.settle", "must be > 0 (got 0s)"},
		{"source: {dir: {pattern: '['}}", "source.dir.pattern", "pattern"},
		{"source: {type: http}", "source.http.url", "http://"},
		{"source: {type: http, http: {url: 'http://u:p@cam/snap.jpg'}}", "source.http.url", "credentials"},
		{"source: {type: http, http: {url: 'http://cam/s', timeout: -1s}}", "source.http.timeout", "must be > 0 (got -1s)"},
		{"source: {type: http, http: {url: 'http://cam/s', password_file: /x}}", "source.http.user", "required"},
		{"source: {type: http, http: {url: 'http://cam/s', user: a, token_file: /t}}", "source.http.token_file", "not both"},
		{"source: {type: exec}", "source.exec.command", "required"},
		{"source: {type: exec, exec: {command: [x], timeout: 0s}}", "source.exec.timeout", "must be > 0 (got 0s)"},
		{"segment: {model: ''}", "segment.model", "required"},
		{"segment: {threshold: 1.5}", "segment.threshold", "1.5"},
		{"segment: {filter: sometimes}", "segment.filter", "keep, thin or drop"},
		{"segment: {filter: thin, thin_every: 0}", "segment.thin_every", ">= 1"},
		{"segment: {tiling: zoom}", "segment.tiling", "auto, resize or tile"},
		{"segment: {pixel_size_m: -0.1}", "segment.pixel_size_m", "metres"},
		{"segment: {pixel_size_m: .nan}", "segment.pixel_size_m", "metres"},
		{"segment: {max_pixels: 0}", "segment.max_pixels", "> 0"},
		{"encode: {mode: png}", "encode.mode", "auto, keep, webp or jpeg"},
		{"encode: {min_ssim: 1}", "encode.min_ssim", "within (0,1)"},
		{"encode: {quality: 0}", "encode.quality", "1..100"},
		{"encode: {mode: keep, crop: true}", "encode.mode", "cannot be combined"},
		{"spool: {policy: fifo}", "spool.policy", "drop-oldest or reject-new"},
		{"spool: {order: random}", "spool.order", "oldest-first"},
		{"spool: {max_bytes: -1}", "spool.max_bytes", ">= 0 (got -1)"},
		{"uplink: {url: 'http://broker'}", "uplink.url", "amqp://"},
		{"uplink: {url: 'amqp://u:secret@broker/'}", "uplink.url", "password"},
		{"uplink: {confirm_timeout: 0s}", "uplink.confirm_timeout", "must be > 0 (got 0s)"},
		{"uplink: {window: 0}", "uplink.window", ">= 1"},
		{"uplink: {url: 'amqp://broker/', password_file: /p}", "uplink.user", "required"},
		{"uplink: {url: 'amqp://a/', urls: ['amqp://b/']}", "uplink.urls", "not both"},
		{"uplink: {urls: ['amqp://a/', 'http://b/']}", "uplink.urls[1]", "amqp://"},
		{"uplink: {urls: ['amqps://a/', 'amqp://b/']}", "uplink.urls[1]", "same scheme"},
		{"uplink: {urls: ['amqp://u@a/', 'amqp://v@b/']}", "uplink.urls[1]", "uplink.user"},
		{"uplink: {urls: ['amqp://a/', 'amqp://u:pw@b/']}", "uplink.urls[1]", "password"},
		{"uplink: {urls: ['amqp://a/'], tls: {ca_file: /ca}}", "uplink.tls", "amqps"},
		{"uplink: {url: 'amqp://broker/', tls: {ca_file: /ca}}", "uplink.tls", "not amqps"},
		{"http: {listen: 'localhost'}", "http.listen", "host:port"},
		{"log: {level: loud}", "log.level", "debug, info"},
		{"shutdown_timeout: 0s", "shutdown_timeout", "must be > 0 (got 0s)"},
		{"source: {type: http, http: {url: 'http://cam/s', interval: 0s}}", "source.http.interval", "must be > 0 (got 0s)"},
		{"source: {type: http, http: {url: 'http://cam/s', max_bytes: 0}}", "source.http.max_bytes", "must be > 0 (got 0)"},
		{"source: {type: exec, exec: {command: [x], interval: -1s}}", "source.exec.interval", "must be > 0 (got -1s)"},
		{"source: {type: exec, exec: {command: [x], max_bytes: -5}}", "source.exec.max_bytes", "must be > 0 (got -5)"},
		{"segment: {threads: -1}", "segment.threads", ">= 0 (got -1)"},
		{"segment: {min_coverage: 2}", "segment.min_coverage", "[0,1] (got 2)"},
		{"spool: {min_free_bytes: -1}", "spool.min_free_bytes", ">= 0 (got -1)"},
		{"spool: {max_age: -1h}", "spool.max_age", ">= 0 (got -1h0m0s)"},
		{"uplink: {url: 'amqp://broker/', user: u, password_file: /p, password_env: P}", "uplink.password_env", "not both"},
		{"uplink: {url: 'amqps://broker/', tls: {cert_file: /c}}", "uplink.tls.cert_file", "go together"},
		{"uplink: {exchange: ''}", "uplink.exchange", "required"},
		{"uplink: {batch: 0}", "uplink.batch", ">= 1 (got 0)"},
		{"uplink: {dial_timeout: 0s}", "uplink.dial_timeout", "must be > 0 (got 0s)"},
		{"uplink: {heartbeat: -1s}", "uplink.heartbeat", "(got -1s)"},
		{"uplink: {backoff_max: 0s}", "uplink.backoff_max", "must be > 0 (got 0s)"},
		{"http: {refresh: 0s}", "http.refresh", "must be > 0 (got 0s)"},
		{"log: {format: xml}", "log.format", `text or json (got "xml")`},
	}
	for _, tc := range cases {
		t.Run(tc.field, func(t *testing.T) {
			y := minimal + tc.yaml + "\n"
			if strings.HasPrefix(tc.yaml, "device:") {
				y = tc.yaml + "\n"
			}
			_, err := ParseConfig([]byte(y))
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrConfig) {
				t.Fatalf("%s: want a *FieldError, got %v", tc.yaml, err)
			}
			if fe.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("%s: got %q, want field %s with %q", tc.yaml, err, tc.field, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Fatalf("message should start with the field: %q", err)
			}
		})
	}
}

func TestConfigSyntaxErrors(t *testing.T) {
	for _, y := range []string{
		minimal + "uplink: {confirm_timeout: soon}\n", // not a duration
		minimal + "uplinks: {}\n",                     // unknown key
		minimal + "spool: [1, 2]\n",                   // wrong type
	} {
		if _, err := ParseConfig([]byte(y)); !errors.Is(err, ErrConfig) {
			t.Errorf("%q: want ErrConfig, got %v", y, err)
		}
	}
	_, err := ParseConfig([]byte(minimal + "uplink: {confirm_timeout: soon}\n"))
	if !strings.Contains(err.Error(), "soon") {
		t.Errorf("duration error should quote the value: %v", err)
	}
}

func TestConfigSecrets(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	c, err := ParseConfig([]byte(minimal + "uplink: {url: 'amqp://broker:5672/vh', user: dev, password_file: " + pw + "}\n"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := c.brokerURLs()
	if err != nil || len(u) != 1 || u[0] != "amqp://dev:s3cret@broker:5672/vh" {
		t.Fatalf("broker url %q, %v", u, err)
	}
	t.Setenv("FOREST_TEST_PW", "fromenv")
	c, err = ParseConfig([]byte(minimal + "uplink: {url: 'amqp://broker/', user: dev, password_env: FOREST_TEST_PW}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if u, err := c.brokerURLs(); err != nil || len(u) != 1 || u[0] != "amqp://dev:fromenv@broker/" {
		t.Fatalf("broker url %q, %v", u, err)
	}
	// A cluster: every node's URL gets the user and password.
	c, err = ParseConfig([]byte(minimal + "uplink:\n  urls: ['amqp://n1:5672/vh', 'amqp://n2:5672/vh', 'amqp://n3/vh']\n  user: dev\n  password_env: FOREST_TEST_PW\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"amqp://dev:fromenv@n1:5672/vh", "amqp://dev:fromenv@n2:5672/vh", "amqp://dev:fromenv@n3/vh"}
	if u, err := c.brokerURLs(); err != nil || !reflect.DeepEqual(u, want) {
		t.Fatalf("broker urls %q, %v; want %q", u, err, want)
	}
	c.Uplink.PasswordEnv = "FOREST_TEST_UNSET_PW"
	if _, err := c.brokerURLs(); !errors.Is(err, ErrConfig) {
		t.Fatalf("unset password env: %v", err)
	}
}
