package firmware

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/internal/unitfile"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Getenv(mdweEnv) != "" {
		mdweExec() // does not return
	}
	rabbittest.Main(m)
}

// missing fails the test when CI is set and skips it otherwise.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	rabbittest.Unavailable(t, format, args...)
}

func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		missing(t, "%s not found (apt-get install %s)", tool, map[string]string{
			"systemd-analyze": "systemd", "dpkg-deb": "dpkg", "dpkg": "dpkg", "useradd": "passwd",
		}[tool])
	}
	return p
}

// unit parses forest-agent.service into section -> key -> values.
func unit(t *testing.T) map[string]map[string][]string {
	t.Helper()
	u, err := unitfile.Parse("forest-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestUnitDirectives(t *testing.T) {
	s := unit(t)["Service"]
	want := map[string]string{
		"Type": "notify", "Restart": "always", "User": "forest-agent", "DynamicUser": "no",
		"StateDirectory": "forest-agent", "ConfigurationDirectory": "forest-agent",
		"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
		"CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
		"SystemCallArchitectures": "native", "SupplementaryGroups": "video",
		"MemoryDenyWriteExecute": "yes", "LockPersonality": "yes", "RestrictNamespaces": "yes",
		"ProtectControlGroups": "yes", "ProtectKernelModules": "yes", "ProtectKernelTunables": "yes",
		"DevicePolicy": "closed", "DeviceAllow": "char-video4linux rw",
		"ExecStart": "/usr/bin/forest-agent run --config /etc/forest-agent/agent.yaml",
	}
	for k, v := range want {
		got, ok := s[k]
		if !ok || got[len(got)-1] != v {
			t.Errorf("%s=%q, want %q", k, got, v)
		}
	}
	if got := s["SystemCallFilter"]; len(got) == 0 || got[0] != "@system-service" {
		t.Errorf("SystemCallFilter=%q, want @system-service first", got)
	}
	for _, k := range []string{"WatchdogSec", "MemoryMax", "UMask"} {
		if len(s[k]) == 0 {
			t.Errorf("%s not set", k)
		}
	}
	u := unit(t)["Unit"]
	if len(u["StartLimitIntervalSec"]) == 0 || len(u["StartLimitBurst"]) == 0 {
		t.Error("Restart=always without StartLimitIntervalSec/StartLimitBurst")
	}
}

// TestStopTimeoutCoversShutdownTimeout checks that systemd waits longer than
// the agent's own bounded shutdown (shutdown_timeout in agent.yaml) before
// it SIGKILLs the agent.
func TestStopTimeoutCoversShutdownTimeout(t *testing.T) {
	stop, err := time.ParseDuration(unit(t)["Service"]["TimeoutStopSec"][0])
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	shutdown := 30 * time.Second // the agent's default
	raw, err := os.ReadFile("agent.yaml")
	switch {
	case errors.Is(err, os.ErrNotExist):
		t.Log("firmware/agent.yaml not written yet; using the agent's default shutdown_timeout 30s")
	case err != nil:
		t.Fatal(err)
	default:
		var c struct {
			ShutdownTimeout string `yaml:"shutdown_timeout"`
		}
		if err := yaml.Unmarshal(raw, &c); err != nil {
			t.Fatalf("agent.yaml: %v", err)
		}
		if c.ShutdownTimeout != "" {
			if shutdown, err = time.ParseDuration(c.ShutdownTimeout); err != nil {
				t.Fatalf("agent.yaml shutdown_timeout: %v", err)
			}
		}
	}
	if stop < shutdown+10*time.Second {
		t.Errorf("TimeoutStopSec %s leaves less than 10s beyond shutdown_timeout %s", stop, shutdown)
	}
}

// TestUnitVerify runs systemd-analyze verify in a temporary root holding the
// distribution's units, the unit and a stand-in /usr/bin/forest-agent
// (verify checks that ExecStart's binary exists).
func TestUnitVerify(t *testing.T) {
	sa := need(t, "systemd-analyze")
	root := t.TempDir()
	sys := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(sys, "sysinit.target")); err != nil {
		sys = "/lib/systemd/system"
	}
	for _, d := range []string{"usr/bin", "usr/lib/systemd", "etc/systemd/system"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", sys, filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy units: %v: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/forest-agent"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unitPath := filepath.Join(root, "etc/systemd/system/forest-agent.service")
	copyFile(t, "forest-agent.service", unitPath, 0o644)
	out, err := exec.Command(sa, "verify", "--root="+root, unitPath).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

var exposure = regexp.MustCompile(`Overall exposure level for forest-agent\.service: ([0-9.]+) (\S+)`)

// TestUnitSecurityScore requires systemd-analyze security to rate the unit
// 2.5 or lower ("OK") and README.md to quote the score.
func TestUnitSecurityScore(t *testing.T) {
	sa := need(t, "systemd-analyze")
	out, err := exec.Command(sa, "security", "--offline=yes", "--no-pager", "./forest-agent.service").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := exposure.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security: %s %s", m[1], m[2])
	if score > 2.5 {
		t.Errorf("exposure %.1f > 2.5:\n%s", score, out)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if quote := "exposure level " + string(m[1]) + " " + string(m[2]); !bytes.Contains(readme, []byte(quote)) {
		t.Errorf("README.md does not record the measured score %q", quote)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}
