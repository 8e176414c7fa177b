package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/forestwatch/forest/cloud"
)

func TestHelpAndVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "Examples:") {
		t.Fatalf("help: %d %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "forest-cloud ") {
		t.Fatalf("version: %d %q", code, out.String())
	}
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 {
		t.Fatalf("unknown command: %d", code)
	}
	// Every subcommand's help: on stdout, exit 0, with an example.
	for _, args := range [][]string{{"run", "--help"}, {"dlq", "--help"}, {"dlq", "list", "--help"}, {"dlq", "requeue", "-h"}, {"dlq", "purge", "--help"},
		{"dlq", "export", "--help"}, {"config", "check", "--help"}, {"policy", "--help"}, {"queue", "--help"}, {"queue", "migrate", "--help"}} {
		out.Reset()
		if code := run(args, &out, &errb); code != 0 || !strings.Contains(out.String(), "Usage: forest-cloud "+args[0]) ||
			!strings.Contains(out.String(), "Example") {
			t.Errorf("%v: %d %q", args, code, out.String())
		}
	}
	errb.Reset()
	if code := run([]string{"run"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--config FILE is required") {
		t.Errorf("run without --config: %d %q", code, errb.String())
	}
}

// TestExampleConfig checks that the shipped cloud.yaml is valid once its
// environment references are set, and that a broken one names the field.
func TestExampleConfig(t *testing.T) {
	t.Setenv("AMQP_PASSWORD", "secret")
	t.Setenv("FOREST_BUCKET", "forest-frames")
	var out, errb bytes.Buffer
	if code := run([]string{"config", "check", "cloud.yaml"}, &out, &errb); code != 0 {
		t.Fatalf("config check: %d %s", code, errb.String())
	}
	t.Setenv("FOREST_BUCKET", "")
	errb.Reset()
	if code := run([]string{"config", "check", "cloud.yaml"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "s3.bucket: must be set") {
		t.Fatalf("config check without bucket: %d %q", code, errb.String())
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("amqp:\n  url: amqp://x@127.0.0.1/\n  prefetch: -1\ns3:\n  bucket: b\n  bukket: c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := run([]string{"run", "--config", bad}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "bukket") {
		t.Fatalf("unknown key: %d %q", code, errb.String())
	}
}

// TestExampleConfigHasEveryKey: cloud.yaml documents every key of
// cloud.Config, and no key that does not exist.
func TestExampleConfigHasEveryKey(t *testing.T) {
	b, err := os.ReadFile("cloud.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(prefix string, typ reflect.Type, m map[string]any)
	walk = func(prefix string, typ reflect.Type, m map[string]any) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			name := strings.Split(f.Tag.Get("yaml"), ",")[0]
			v, ok := m[name]
			if !ok {
				t.Errorf("cloud.yaml lacks %s%s", prefix, name)
				continue
			}
			if f.Type.Kind() == reflect.Struct {
				sub, _ := v.(map[string]any)
				walk(prefix+name+".", f.Type, sub)
			}
		}
	}
	walk("", reflect.TypeFor[cloud.Config](), doc)
}
