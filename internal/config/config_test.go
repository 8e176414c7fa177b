package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/config"
)

type inner struct {
	URL      string          `yaml:"url"`
	Port     int             `yaml:"port"`
	Ratio    float64         `yaml:"ratio"`
	On       *bool           `yaml:"on"`
	Wait     config.Duration `yaml:"wait"`
	Timeout  time.Duration   `yaml:"timeout"`
	Hosts    []string        `yaml:"hosts"`
	ByDevice map[string][]string
}

type conf struct {
	Name  string `yaml:"name"`
	Inner inner  `yaml:"inner"`
}

func parse(t *testing.T, text string) (conf, error) {
	t.Helper()
	c := conf{Name: "default", Inner: inner{Port: 5672, Wait: config.Duration(time.Second)}}
	err := config.Parse([]byte(text), &c)
	return c, err
}

func TestParseDefaultsAndValues(t *testing.T) {
	c, err := parse(t, "inner:\n  url: amqp://x\n  timeout: 3s\n  hosts: [a, b]\n  bydevice: {gw: [m1]}\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "default" || c.Inner.Port != 5672 || c.Inner.Wait.D() != time.Second {
		t.Errorf("defaults lost: %+v", c)
	}
	if c.Inner.URL != "amqp://x" || c.Inner.Timeout != 3*time.Second || len(c.Inner.Hosts) != 2 || c.Inner.ByDevice["gw"][0] != "m1" {
		t.Errorf("values not decoded: %+v", c)
	}
	if c, err := parse(t, ""); err != nil || c.Name != "default" {
		t.Errorf("empty text: %+v %v", c, err)
	}
	if c, err := parse(t, "inner:\nname: x\n"); err != nil || c.Inner.Port != 5672 || c.Name != "x" {
		t.Errorf("empty mapping: %+v %v", c, err)
	}
}

// TestExpandAfterParsing: references are expanded in values only, after
// parsing, so a secret with YAML or URL syntax in it stays one value and a
// comment is never expanded (an unset variable there is no error).
func TestExpandAfterParsing(t *testing.T) {
	t.Setenv("FC_SECRET", "p@ss/w#rd: \"x\"")
	t.Setenv("FC_PORT", "5671")
	t.Setenv("FC_EMPTY", "")
	t.Setenv("FC_ON", "true")
	c, err := parse(t, `# ${FC_UNSET_IN_COMMENT} is not expanded
name: ${FC_SECRET} # ${FC_UNSET_TOO}
inner:
  url: "amqp://u:${FC_SECRET}@h/${FC_EMPTY}"
  port: ${FC_PORT}
  ratio: ${FC_UNSET_R:-0.5}
  on: ${FC_ON}
  wait: ${FC_EMPTY:-2m}
  hosts: ["${FC_PORT}", x]
`)
	if err != nil {
		t.Fatal(err)
	}
	want := conf{Name: "p@ss/w#rd: \"x\"", Inner: inner{URL: "amqp://u:p@ss/w#rd: \"x\"@h/", Port: 5671, Ratio: 0.5,
		Wait: config.Duration(2 * time.Minute), Hosts: []string{"5671", "x"}}}
	if c.Name != want.Name || c.Inner.URL != want.Inner.URL || c.Inner.Port != want.Inner.Port || c.Inner.Ratio != want.Inner.Ratio ||
		c.Inner.Wait != want.Inner.Wait || c.Inner.On == nil || !*c.Inner.On || c.Inner.Hosts[0] != "5671" {
		t.Errorf("got %+v", c)
	}
}

func TestErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ text, field, says string }{
		{"inner:\n  url: ${FC_NOT_SET_X}\n", "inner.url", "FC_NOT_SET_X is not set (line 2)"},
		{"inner:\n  hosts: [a, '${FC_NOT_SET_Y}']\n", "inner.hosts[1]", "FC_NOT_SET_Y"},
		{"inner:\n  prot: 1\n", "inner.prot", "unknown key (line 2)"},
		{"nmae: x\n", "nmae", "unknown key"},
		{"inner:\n  port: many\n", "inner.port", `must be a whole number (got "many", line 2)`},
		{"inner:\n  wait: soon\n", "inner.wait", `"soon" is not a duration`},
		{"inner:\n  timeout: soon\n", "inner.timeout", "must be a duration"},
		{"inner:\n  on: perhaps\n", "inner.on", "must be true or false"},
		{"inner:\n  hosts: a\n", "inner.hosts", "must be a list"},
		{"inner: 3\n", "inner", "want a mapping"},
	} {
		_, err := parse(t, tc.text)
		var fe *config.FieldError
		if !errors.As(err, &fe) || !errors.Is(err, config.ErrConfig) {
			t.Errorf("%q: want a *FieldError, got %v", tc.text, err)
			continue
		}
		if fe.Field != tc.field || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%q: got %q (field %q), want field %q saying %q", tc.text, err, fe.Field, tc.field, tc.says)
		}
	}
	if _, err := parse(t, "name: [unclosed\n"); !errors.Is(err, config.ErrConfig) {
		t.Errorf("syntax error: %v", err)
	}
	// Every problem is reported, not only the first.
	_, err := parse(t, "nmae: x\ninner:\n  url: ${FC_NOT_SET_Z}\n  port: x\n")
	for _, f := range []string{"nmae", "inner.url", "inner.port"} {
		if err == nil || !strings.Contains(err.Error(), f+":") {
			t.Errorf("error %v does not name %s", err, f)
		}
	}
}
