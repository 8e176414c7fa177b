package firmware

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// debPackage returns the .deb of arch (amd64 or arm64) to test: for amd64
// $FOREST_DEB if set, else one built now by `bash firmware/package.sh ARCH`
// into a temporary directory.
func debPackage(t *testing.T, arch string) string {
	t.Helper()
	if p := os.Getenv("FOREST_DEB"); p != "" && arch == "amd64" {
		return p
	}
	need(t, "dpkg-deb")
	if m, _ := filepath.Glob(filepath.Join(repoRoot(t), "agent/cmd/forest-agent/*.go")); len(m) == 0 {
		missing(t, "agent/cmd/forest-agent does not exist yet")
	}
	ortLibrary(t, ortArch[arch])
	dist := t.TempDir()
	cmd := exec.Command("bash", "firmware/package.sh", arch)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "DIST="+dist)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("package.sh %s: %v\n%s", arch, err, stderr.Bytes())
	}
	deb := strings.TrimSpace(string(out))
	if filepath.Dir(deb) != dist || !strings.HasSuffix(deb, "_"+arch+".deb") {
		t.Fatalf("package.sh printed %q, want a .deb in %s", deb, dist)
	}
	return deb
}

// ortArch names the ONNX Runtime build of a Debian architecture.
var ortArch = map[string]string{"amd64": "x64", "arm64": "arm64"}

var debVersion = regexp.MustCompile(`(?m)^ Version: ([0-9][A-Za-z0-9.+~]*)$`)

// TestPackage builds the amd64 package, checks its metadata and contents,
// installs it into a throwaway root with dpkg --root (maintainer scripts run
// chrootless with DPKG_ROOT set), runs the installed agent, upgrades over a
// modified conffile, removes and purges it.
func TestPackage(t *testing.T) {
	if arch, err := exec.Command("dpkg", "--print-architecture").Output(); err != nil || strings.TrimSpace(string(arch)) != "amd64" {
		t.Skip("the install check runs the amd64 package on an amd64 host")
	}
	need(t, "dpkg")
	need(t, "useradd")
	if os.Geteuid() != 0 {
		missing(t, "the install check needs root (dpkg --root and the maintainer scripts chown files)")
	}
	deb := debPackage(t, "amd64")
	version, _ := checkDeb(t, deb, "amd64")

	// A throwaway root: an empty dpkg database, passwd and group files with
	// root and video, and /usr/lib/systemd so that postinst enables the unit
	// offline (systemctl --root) as in an image build.
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "etc", "usr/lib/systemd"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	for name, body := range map[string]string{
		"var/lib/dpkg/status": "",
		"etc/passwd":          "root:x:0:0:root:/root:/bin/bash\n",
		"etc/shadow":          "root:*:19000:0:99999:7:::\n",
		"etc/group":           "root:x:0:\nvideo:x:44:\n",
		"etc/gshadow":         "root:*::\nvideo:*::\n",
	} {
		must(t, os.WriteFile(filepath.Join(root, name), []byte(body), 0o644))
	}
	dpkg := func(args ...string) string {
		t.Helper()
		return run(t, "", "dpkg", append([]string{"--root=" + root, "--force-script-chrootless",
			"--force-depends", "--log=/dev/null"}, args...)...)
	}
	dpkg("-i", deb)

	uid, gid := checkUser(t, root)
	for path, want := range map[string]struct {
		mode     os.FileMode
		uid, gid int
	}{
		"usr/bin/forest-agent":                                {0o755, 0, 0},
		"usr/lib/forest-agent/libonnxruntime.so.1":            {0o644, 0, 0},
		"usr/share/forest-agent/models/forest-unet-v1.onnx":   {0o644, 0, 0},
		"usr/share/forest-agent/models/canopy-aerial-v1.onnx": {0o644, 0, 0},
		"usr/share/doc/forest-agent/CANOPY_AERIAL.md":         {0o644, 0, 0},
		"usr/lib/systemd/system/forest-agent.service":         {0o644, 0, 0},
		"etc/forest-agent/agent.yaml":                         {0o640, 0, gid},
		"etc/forest-agent/environment":                        {0o600, 0, 0},
		"var/lib/forest-agent":                                {os.ModeDir | 0o750, uid, gid},
	} {
		fi, err := os.Stat(filepath.Join(root, path))
		if err != nil {
			t.Errorf("installed root lacks /%s: %v", path, err)
			continue
		}
		st := statOwner(fi)
		if fi.Mode()&(os.ModeDir|os.ModePerm) != want.mode || st[0] != want.uid || st[1] != want.gid {
			t.Errorf("/%s: mode %v owner %d:%d, want %v %d:%d", path, fi.Mode(), st[0], st[1], want.mode, want.uid, want.gid)
		}
	}
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants/forest-agent.service")
	if _, err := exec.LookPath("systemctl"); err == nil {
		if target, err := os.Readlink(wants); err != nil || !strings.HasSuffix(target, "/systemd/system/forest-agent.service") {
			t.Errorf("unit not enabled: %v %q", err, target)
		}
	}
	env, _ := os.ReadFile(filepath.Join(root, "etc/forest-agent/environment"))
	if !bytes.Contains(env, []byte("\n#FOREST_DEVICE_ID=\n")) {
		t.Errorf("environment file in an image build should leave the device id to the device:\n%s", env)
	}

	// The installed layout works on its own: the agent finds the library
	// next to it (no ONNXRUNTIME_LIB, run outside the checkout) and
	// segments a frame with the installed model.
	bin := filepath.Join(root, "usr/bin/forest-agent")
	ver := runEnv(t, root, []string{"ONNXRUNTIME_LIB="}, bin, "version")
	if !strings.Contains(ver, filepath.Join(root, "usr/lib/forest-agent/libonnxruntime.so.1")) || !strings.Contains(ver, "1.24.1") {
		t.Errorf("installed agent does not use the installed ONNX Runtime 1.24.1:\n%s", ver)
	}
	if version != "" && !strings.HasPrefix(ver, "forest-agent "+version+"\n") {
		t.Errorf("forest-agent version does not print the package version %s:\n%s", version, ver)
	}
	seg := runEnv(t, root, []string{"ONNXRUNTIME_LIB="}, bin, "segment", "--json", "--model",
		filepath.Join(root, "usr/share/forest-agent/models/forest-unet-v1.onnx"), sampleFrames(t)[0])
	if !strings.Contains(seg, `"coverage":`) {
		t.Errorf("installed agent did not segment: %s", seg)
	}
	// The default model (a bare name, canopy-aerial-v1.onnx) is found among
	// the installed models.
	coverage := regexp.MustCompile(`"coverage":[0-9.e-]+`)
	def := runEnv(t, root, []string{"ONNXRUNTIME_LIB="}, bin, "segment", "--json", sampleFrames(t)[0])
	canopy := runEnv(t, root, []string{"ONNXRUNTIME_LIB="}, bin, "segment", "--json", "--model",
		filepath.Join(root, "usr/share/forest-agent/models/canopy-aerial-v1.onnx"), sampleFrames(t)[0])
	if c := coverage.FindString(def); c == "" || c != coverage.FindString(canopy) {
		t.Errorf("installed agent's default model is not the installed canopy-aerial-v1.onnx:\n%s\n%s", def, canopy)
	}
	runEnv(t, root, []string{"FOREST_DEVICE_ID=pi-1"}, bin, "config", "check", filepath.Join(root, "etc/forest-agent/agent.yaml"))

	// Upgrade to a newer version whose default config changed, over an
	// unmodified conffile: dpkg replaces it (root:root 0644) and postinst
	// restricts it again.
	conf := filepath.Join(root, "etc/forest-agent/agent.yaml")
	newer := rebuilt(t, deb, version+"+t1", "# changed default\n")
	dpkg("-i", newer)
	if fi, err := os.Stat(conf); err != nil || fi.Mode().Perm() != 0o640 || statOwner(fi) != [2]int{0, gid} {
		t.Errorf("after an upgrade that replaced agent.yaml: %v %v, want 0640 root:forest-agent", fi.Mode(), err)
	}
	if b, _ := os.ReadFile(conf); !bytes.HasSuffix(b, []byte("# changed default\n")) {
		t.Error("upgrade did not install the new default agent.yaml over the unmodified one")
	}

	// Upgrade (same version again) over a locally edited conffile: the edit
	// survives, the user is not duplicated.
	orig, err := os.ReadFile(conf)
	must(t, err)
	edited := append(orig, "# edited on the device\n"...)
	must(t, os.WriteFile(conf, edited, 0o640))
	dpkg("-i", newer)
	if b, _ := os.ReadFile(conf); !bytes.Equal(b, edited) {
		t.Error("upgrade replaced the locally edited agent.yaml")
	}
	if u2, _ := checkUser(t, root); u2 != uid {
		t.Errorf("upgrade changed the uid %d -> %d", uid, u2)
	}

	// Remove keeps config and spool, disables the unit.
	must(t, os.WriteFile(filepath.Join(root, "var/lib/forest-agent/frame"), []byte("x"), 0o600))
	dpkg("-r", "forest-agent")
	for _, gone := range []string{"usr/bin/forest-agent", "usr/lib/forest-agent", "usr/lib/systemd/system/forest-agent.service", strings.TrimPrefix(wants, root+"/")} {
		if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
			t.Errorf("remove left /%s", gone)
		}
	}
	for _, kept := range []string{"etc/forest-agent/agent.yaml", "var/lib/forest-agent/frame"} {
		if _, err := os.Stat(filepath.Join(root, kept)); err != nil {
			t.Errorf("remove deleted /%s", kept)
		}
	}
	// Purge deletes config and spool and keeps the user.
	dpkg("-P", "forest-agent")
	for _, gone := range []string{"etc/forest-agent", "var/lib/forest-agent"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
			t.Errorf("purge left /%s", gone)
		}
	}
	checkUser(t, root)
}

// rebuilt returns a copy of deb with the given version and text appended to
// its agent.yaml.
func rebuilt(t *testing.T, deb, version, conf string) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	run(t, "", "dpkg-deb", "--raw-extract", deb, tree)
	f, err := os.OpenFile(filepath.Join(tree, "etc/forest-agent/agent.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteString(conf)
	must(t, errors.Join(err, f.Close()))
	control := filepath.Join(tree, "DEBIAN/control")
	b, err := os.ReadFile(control)
	must(t, err)
	b = regexp.MustCompile(`(?m)^Version: .*$`).ReplaceAll(b, []byte("Version: "+version))
	must(t, os.WriteFile(control, b, 0o644))
	out := filepath.Join(dir, "forest-agent_"+version+"_amd64.deb")
	run(t, "", "dpkg-deb", "--build", "--root-owner-group", tree, out)
	return out
}

// checkUser requires the system user and group forest-agent, in group
// video, and returns their ids.
func checkUser(t *testing.T, root string) (uid, gid int) {
	t.Helper()
	passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	group, _ := os.ReadFile(filepath.Join(root, "etc/group"))
	pm := regexp.MustCompile(`(?m)^forest-agent:x:([0-9]+):([0-9]+):[^:]*:/var/lib/forest-agent:/usr/sbin/nologin$`).FindAllSubmatch(passwd, -1)
	if len(pm) != 1 {
		t.Fatalf("want one system user forest-agent (home /var/lib/forest-agent, nologin):\n%s", passwd)
	}
	uid, gid = atoi(pm[0][1]), atoi(pm[0][2])
	if uid == 0 || uid >= 1000 {
		t.Errorf("forest-agent uid %d is not a system uid", uid)
	}
	if !regexp.MustCompile(`(?m)^forest-agent:x:` + string(pm[0][2]) + `:$`).Match(group) {
		t.Errorf("no group forest-agent with gid %d:\n%s", gid, group)
	}
	if !regexp.MustCompile(`(?m)^video:x:44:(.*,)?forest-agent(,.*)?$`).Match(group) {
		t.Errorf("forest-agent not in group video:\n%s", group)
	}
	return uid, gid
}

// statOwner returns a file's uid and gid.
func statOwner(fi os.FileInfo) [2]int {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return [2]int{-1, -1}
	}
	return [2]int{int(st.Uid), int(st.Gid)}
}

func atoi(b []byte) int {
	n := 0
	for _, c := range b {
		n = n*10 + int(c-'0')
	}
	return n
}

func assertSameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err1 := os.ReadFile(a)
	y, err2 := os.ReadFile(b)
	if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
		t.Errorf("%s differs from %s (%v %v)", a, b, err1, err2)
	}
}

// run runs a command in dir and returns its stdout, failing the test on error.
func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	return runEnv(t, dir, nil, name, args...)
}

func runEnv(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// checkDeb checks a package's metadata (dpkg-deb --info, --control) and
// contents (--contents, and the extracted library, unit and config against
// the pinned and committed files), and returns its version and the
// directory it was extracted into.
func checkDeb(t *testing.T, deb, arch string) (version, extracted string) {
	t.Helper()

	info := run(t, "", "dpkg-deb", "--info", deb)
	for _, want := range []string{
		" Package: forest-agent\n", " Architecture: " + arch + "\n", " Depends: libc6 (>= 2.", "libstdc++6",
		" Recommends: systemd, libwebp-dev\n", "conffiles", "postinst", "prerm", "postrm",
	} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}
	m := debVersion.FindStringSubmatch(info)
	if m == nil || !strings.Contains(filepath.Base(deb), "_"+m[1]+"_") {
		t.Errorf("version %v does not match the file name %s", m, filepath.Base(deb))
	}
	if cf := run(t, "", "dpkg-deb", "--field", deb, "Version"); strings.TrimSpace(cf) == "" {
		t.Error("no Version field")
	}
	ctl := t.TempDir()
	run(t, "", "dpkg-deb", "--control", deb, ctl)
	if b, _ := os.ReadFile(filepath.Join(ctl, "conffiles")); string(b) != "/etc/forest-agent/agent.yaml\n" {
		t.Errorf("conffiles = %q", b)
	}

	contents := run(t, "", "dpkg-deb", "--contents", deb)
	for path, mode := range map[string]string{
		"./usr/bin/forest-agent":                                "-rwxr-xr-x root/root",
		"./usr/lib/forest-agent/libonnxruntime.so.1":            "-rw-r--r-- root/root",
		"./usr/share/forest-agent/models/forest-unet-v1.onnx":   "-rw-r--r-- root/root",
		"./usr/share/forest-agent/models/canopy-aerial-v1.onnx": "-rw-r--r-- root/root",
		"./usr/lib/systemd/system/forest-agent.service":         "-rw-r--r-- root/root",
		"./etc/forest-agent/agent.yaml":                         "-rw-r--r-- root/root",
		"./usr/share/doc/forest-agent/copyright":                "-rw-r--r-- root/root",
		"./":                                                    "drwxr-xr-x root/root",
	} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(mode) + `\s.*\s` + regexp.QuoteMeta(path) + `$`).MatchString(contents) {
			t.Errorf("dpkg-deb --contents: no %s %s in\n%s", mode, path, contents)
		}
	}
	if strings.Contains(contents, " ./var/") || strings.Contains(contents, "/home/") {
		t.Errorf("package ships files outside its paths:\n%s", contents)
	}
	// The packaged library is the pinned one.
	ex := t.TempDir()
	run(t, "", "dpkg-deb", "-x", deb, ex)
	assertSameFile(t, filepath.Join(ex, "usr/lib/forest-agent/libonnxruntime.so.1"), ortLibrary(t, ortArch[arch]))
	assertSameFile(t, filepath.Join(ex, "usr/lib/systemd/system/forest-agent.service"), "forest-agent.service")
	assertSameFile(t, filepath.Join(ex, "etc/forest-agent/agent.yaml"), "agent.yaml")
	if m == nil {
		return "", ex
	}
	return m[1], ex
}

// TestPackageArm64 cross-builds the arm64 package and checks it as
// TestPackage checks the amd64 one, short of installing it: metadata,
// contents, the pinned arm64 ONNX Runtime, and an AArch64 binary.
// (qemu-check.sh runs it under emulation.)
func TestPackageArm64(t *testing.T) {
	need(t, "readelf")
	if os.Geteuid() != 0 {
		missing(t, "package.sh installs the arm64 cross compiler with apt-get, which needs root")
	}
	deb := debPackage(t, "arm64")
	_, ex := checkDeb(t, deb, "arm64")
	for _, f := range []string{"usr/bin/forest-agent", "usr/lib/forest-agent/libonnxruntime.so.1"} {
		if h := run(t, "", "readelf", "-h", filepath.Join(ex, f)); !strings.Contains(h, "AArch64") {
			t.Errorf("%s is not an AArch64 ELF file:\n%s", f, h)
		}
	}
}
