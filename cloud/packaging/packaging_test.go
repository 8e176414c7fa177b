package packaging

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/unitfile"
)

// missing fails the test when CI is set and skips it otherwise.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format+" (CI is set, so this is a failure; run `make deps`)", args...)
	}
	t.Skipf(format, args...)
}

func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		missing(t, "%s not found", tool)
	}
	return p
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// unit parses forest-cloud.service into section -> key -> values.
func unit(t *testing.T) map[string]map[string][]string {
	t.Helper()
	u, err := unitfile.Parse("forest-cloud.service")
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestUnitDirectives(t *testing.T) {
	s := unit(t)["Service"]
	want := map[string]string{
		"Type": "notify", "NotifyAccess": "main", "Restart": "always", "User": "forest-cloud", "DynamicUser": "no",
		"ExecStartPre":  "/usr/bin/forest-cloud config check /etc/forest-cloud/cloud.yaml",
		"ExecStart":     "/usr/bin/forest-cloud run --config /etc/forest-cloud/cloud.yaml",
		"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes", "NoNewPrivileges": "yes",
		"CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "SystemCallArchitectures": "native",
		"MemoryDenyWriteExecute": "yes", "LockPersonality": "yes", "RestrictNamespaces": "yes", "PrivateUsers": "yes",
		"ProtectControlGroups": "yes", "ProtectKernelModules": "yes", "ProtectKernelTunables": "yes",
		"EnvironmentFile": "-/etc/forest-cloud/environment",
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
	// GOMEMLIMIT stays under MemoryHigh, so the collector tightens before
	// the kernel throttles the service.
	var limit, high int64
	for _, e := range s["Environment"] {
		if v, ok := strings.CutPrefix(e, "GOMEMLIMIT="); ok {
			fmt.Sscanf(v, "%dMiB", &limit)
		}
	}
	if len(s["MemoryHigh"]) > 0 {
		fmt.Sscanf(s["MemoryHigh"][0], "%dM", &high)
	}
	if limit <= 0 || high <= 0 || limit >= high || limit < high/2 {
		t.Errorf("Environment GOMEMLIMIT=%dMiB against MemoryHigh=%dM: want a soft limit in MiB between half of MemoryHigh and MemoryHigh", limit, high)
	}
	u := unit(t)["Unit"]
	if len(u["StartLimitIntervalSec"]) == 0 || len(u["StartLimitBurst"]) == 0 {
		t.Error("Restart=always without StartLimitIntervalSec/StartLimitBurst")
	}
}

// TestUnitTimeouts: systemd waits longer than forest-cloud's own bounded
// shutdown (consumer.shutdown_timeout of the shipped cloud.yaml) before it
// SIGKILLs it, and the watchdog interval leaves room for the keep-alives
// forest-cloud sends every WatchdogSec/2.
func TestUnitTimeouts(t *testing.T) {
	s := unit(t)["Service"]
	stop, err := time.ParseDuration(s["TimeoutStopSec"][0])
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	t.Setenv("FOREST_BUCKET", "b")
	t.Setenv("AMQP_PASSWORD", "p")
	cfg, err := cloud.LoadConfig(filepath.Join(repoRoot(t), "cloud/cmd/forest-cloud/cloud.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if stop < cfg.Consumer.ShutdownTimeout+10*time.Second {
		t.Errorf("TimeoutStopSec %s leaves less than 10s beyond consumer.shutdown_timeout %s", stop, cfg.Consumer.ShutdownTimeout)
	}
	if wd, err := time.ParseDuration(s["WatchdogSec"][0]); err != nil || wd < 10*time.Second {
		t.Errorf("WatchdogSec %v %v: want at least 10s", wd, err)
	}
}

// TestUnitVerify runs systemd-analyze verify in a temporary root holding the
// distribution's units, the unit and a stand-in /usr/bin/forest-cloud.
func TestUnitVerify(t *testing.T) {
	sa := need(t, "systemd-analyze")
	root := t.TempDir()
	sys := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(sys, "sysinit.target")); err != nil {
		sys = "/lib/systemd/system"
	}
	for _, d := range []string{"usr/bin", "usr/lib/systemd", "etc/systemd/system"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	if out, err := exec.Command("cp", "-a", sys, filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy units: %v: %s", err, out)
	}
	must(t, os.WriteFile(filepath.Join(root, "usr/bin/forest-cloud"), []byte("#!/bin/sh\n"), 0o755))
	b, err := os.ReadFile("forest-cloud.service")
	must(t, err)
	unitPath := filepath.Join(root, "etc/systemd/system/forest-cloud.service")
	must(t, os.WriteFile(unitPath, b, 0o644))
	out, err := exec.Command(sa, "verify", "--root="+root, unitPath).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

var exposure = regexp.MustCompile(`Overall exposure level for forest-cloud\.service: ([0-9.]+) (\S+)`)

// TestUnitSecurityScore requires systemd-analyze security to rate the unit
// 2.5 or lower ("OK") and README.md to quote the score.
func TestUnitSecurityScore(t *testing.T) {
	sa := need(t, "systemd-analyze")
	out, err := exec.Command(sa, "security", "--offline=yes", "--no-pager", "./forest-cloud.service").CombinedOutput()
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
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	must(t, err)
	if quote := "exposure level " + string(m[1]) + " " + string(m[2]); !bytes.Contains(readme, []byte(quote)) {
		t.Errorf("README.md does not record the measured score %q", quote)
	}
}

// build runs package.sh for arch into a temporary directory.
func build(t *testing.T, arch string) string {
	t.Helper()
	need(t, "dpkg-deb")
	dist := t.TempDir()
	cmd := exec.Command("bash", "cloud/packaging/package.sh", arch)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "DIST="+dist)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("package.sh %s: %v\n%s", arch, err, stderr.Bytes())
	}
	deb := strings.TrimSpace(string(out))
	if filepath.Dir(deb) != dist || !strings.HasSuffix(deb, "_"+arch+".deb") || !strings.HasPrefix(filepath.Base(deb), "forest-cloud_") {
		t.Fatalf("package.sh printed %q, want a forest-cloud .deb in %s", deb, dist)
	}
	return deb
}

// checkDeb checks a package's metadata and contents and returns the
// directory it was extracted into.
func checkDeb(t *testing.T, deb, arch string) string {
	t.Helper()
	info := run(t, nil, "dpkg-deb", "--info", deb)
	for _, want := range []string{" Package: forest-cloud\n", " Architecture: " + arch + "\n", " Recommends: systemd\n",
		"conffiles", "postinst", "prerm", "postrm"} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}
	contents := run(t, nil, "dpkg-deb", "--contents", deb)
	for path, mode := range map[string]string{
		"./usr/bin/forest-cloud":                        "-rwxr-xr-x root/root",
		"./usr/lib/systemd/system/forest-cloud.service": "-rw-r--r-- root/root",
		"./etc/forest-cloud/cloud.yaml":                 "-rw-r--r-- root/root",
		"./usr/share/doc/forest-cloud/copyright":        "-rw-r--r-- root/root",
	} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(mode) + `\s.*\s` + regexp.QuoteMeta(path) + `$`).MatchString(contents) {
			t.Errorf("dpkg-deb --contents: no %s %s in\n%s", mode, path, contents)
		}
	}
	if strings.Contains(contents, " ./var/") || strings.Contains(contents, "/home/") {
		t.Errorf("package ships files outside its paths:\n%s", contents)
	}
	ex := t.TempDir()
	run(t, nil, "dpkg-deb", "-x", deb, ex)
	for file, want := range map[string]string{
		"usr/lib/systemd/system/forest-cloud.service": "forest-cloud.service",
		"etc/forest-cloud/cloud.yaml":                 filepath.Join(repoRoot(t), "cloud/cmd/forest-cloud/cloud.yaml"),
	} {
		a, err1 := os.ReadFile(filepath.Join(ex, file))
		b, err2 := os.ReadFile(want)
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("packaged %s differs from %s (%v %v)", file, want, err1, err2)
		}
	}
	return ex
}

// TestPackage builds the amd64 package, installs it into a throwaway root
// with dpkg --root (maintainer scripts run chrootless with DPKG_ROOT), runs
// the installed binary's config check on the installed config, then
// removes and purges it.
func TestPackage(t *testing.T) {
	if arch, err := exec.Command("dpkg", "--print-architecture").Output(); err != nil || strings.TrimSpace(string(arch)) != "amd64" {
		t.Skip("the install check runs the amd64 package on an amd64 host")
	}
	need(t, "dpkg")
	need(t, "useradd")
	if os.Geteuid() != 0 {
		missing(t, "the install check needs root (dpkg --root and the maintainer scripts chown files)")
	}
	deb := build(t, "amd64")
	checkDeb(t, deb, "amd64")
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "etc", "usr/lib/systemd"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	for name, body := range map[string]string{
		"var/lib/dpkg/status": "", "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n", "etc/shadow": "root:*:19000:0:99999:7:::\n",
		"etc/group": "root:x:0:\n", "etc/gshadow": "root:*::\n",
	} {
		must(t, os.WriteFile(filepath.Join(root, name), []byte(body), 0o644))
	}
	dpkg := func(args ...string) {
		t.Helper()
		run(t, nil, "dpkg", append([]string{"--root=" + root, "--force-script-chrootless", "--force-depends", "--log=/dev/null"}, args...)...)
	}
	dpkg("-i", deb)
	passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	pm := regexp.MustCompile(`(?m)^forest-cloud:x:([0-9]+):([0-9]+):[^:]*:/nonexistent:/usr/sbin/nologin$`).FindSubmatch(passwd)
	if pm == nil {
		t.Fatalf("no system user forest-cloud (nologin):\n%s", passwd)
	}
	gid, _ := strconv.Atoi(string(pm[2]))
	for path, want := range map[string]struct {
		mode     os.FileMode
		uid, gid int
	}{
		"usr/bin/forest-cloud":                        {0o755, 0, 0},
		"usr/lib/systemd/system/forest-cloud.service": {0o644, 0, 0},
		"etc/forest-cloud/cloud.yaml":                 {0o640, 0, gid},
		"etc/forest-cloud/environment":                {0o600, 0, 0},
	} {
		fi, err := os.Stat(filepath.Join(root, path))
		if err != nil {
			t.Errorf("installed root lacks /%s: %v", path, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != want.mode || int(st.Uid) != want.uid || int(st.Gid) != want.gid {
			t.Errorf("/%s: mode %v owner %d:%d, want %v %d:%d", path, fi.Mode(), st.Uid, st.Gid, want.mode, want.uid, want.gid)
		}
	}
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants/forest-cloud.service")
	if _, err := exec.LookPath("systemctl"); err == nil {
		if target, err := os.Readlink(wants); err != nil || !strings.HasSuffix(target, "/systemd/system/forest-cloud.service") {
			t.Errorf("unit not enabled: %v %q", err, target)
		}
	}
	// The installed binary checks the installed config: refused while the
	// environment lacks a ${VAR} without default (as ExecStartPre would),
	// accepted once it is set.
	bin := filepath.Join(root, "usr/bin/forest-cloud")
	conf := filepath.Join(root, "etc/forest-cloud/cloud.yaml")
	cmd := exec.Command(bin, "config", "check", conf)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "FOREST_BUCKET") {
		t.Errorf("config check without FOREST_BUCKET: %v %s", err, out)
	}
	runEnv := []string{"PATH=/usr/bin:/bin", "FOREST_BUCKET=frames", "AMQP_PASSWORD=x"}
	if out := run(t, runEnv, bin, "config", "check", conf); !strings.Contains(out, ": ok") {
		t.Errorf("config check: %s", out)
	}
	if out := run(t, nil, bin, "version"); !strings.HasPrefix(out, "forest-cloud ") || strings.Contains(out, " dev") {
		t.Errorf("version: %q", out)
	}
	dpkg("-r", "forest-cloud")
	for _, gone := range []string{"usr/bin/forest-cloud", "usr/lib/systemd/system/forest-cloud.service", strings.TrimPrefix(wants, root+"/")} {
		if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
			t.Errorf("remove left /%s", gone)
		}
	}
	if _, err := os.Stat(conf); err != nil {
		t.Error("remove deleted the config")
	}
	dpkg("-P", "forest-cloud")
	if _, err := os.Lstat(filepath.Join(root, "etc/forest-cloud")); err == nil {
		t.Error("purge left /etc/forest-cloud")
	}
}

// TestPackageArm64 cross-builds the arm64 package and checks its metadata,
// contents and an AArch64 binary.
func TestPackageArm64(t *testing.T) {
	need(t, "readelf")
	deb := build(t, "arm64")
	ex := checkDeb(t, deb, "arm64")
	if h := run(t, nil, "readelf", "-h", filepath.Join(ex, "usr/bin/forest-cloud")); !strings.Contains(h, "AArch64") {
		t.Errorf("forest-cloud is not an AArch64 ELF file:\n%s", h)
	}
}

func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	if env != nil {
		cmd.Env = env
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
