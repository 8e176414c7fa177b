package segment

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLibraryPath(t *testing.T) {
	root := t.TempDir()
	touch := func(p string) string {
		t.Helper()
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	touch("repo/go.mod")
	cached := touch("repo/.cache/onnxruntime/linux-arm64/libonnxruntime.so.1")
	repoExe := filepath.Join(root, "repo", "bin", "forest-agent")
	deb := touch("usr/lib/forest-agent/libonnxruntime.so.1")
	debExe := filepath.Join(root, "usr", "bin", "forest-agent")
	// A library planted above a checkout, or anywhere but beside the binary: never used.
	touch("outside/.cache/onnxruntime/linux-x64/libonnxruntime.so.1")
	outsideExe := filepath.Join(root, "outside", "tmp", "forest-agent")

	for _, c := range []struct {
		name               string
		explicit, env, exe string
		arch, want         string
	}{
		{"explicit wins", "/opt/ort.so", "/env/ort.so", debExe, "arm64", "/opt/ort.so"},
		{"env next", "", "/env/ort.so", debExe, "arm64", "/env/ort.so"},
		{"the .deb layout beside the executable", "", "", debExe, "arm64", deb},
		{"a checkout's make deps cache, from bin/", "", "", repoExe, "arm64", cached},
		{"a checkout without this arch's copy", "", "", repoExe, "x64", "libonnxruntime.so.1"},
		{"no go.mod above the executable", "", "", outsideExe, "x64", "libonnxruntime.so.1"},
		{"unknown executable", "", "", "", "x64", "libonnxruntime.so.1"},
	} {
		if got := libraryPath(c.explicit, c.env, c.exe, c.arch); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}

	// The working directory is never searched: run from a directory holding a
	// planted .cache/onnxruntime, a test binary finds only the environment's
	// library or the system's.
	planted := filepath.Join(root, "outside")
	t.Chdir(planted)
	t.Setenv(EnvLibraryPath, "")
	if got := LibraryPath(""); got != "libonnxruntime.so.1" {
		t.Errorf("LibraryPath from a planted working directory = %q, want the system's", got)
	}
	t.Setenv(EnvLibraryPath, "/from/env.so")
	if got := LibraryPath(""); got != "/from/env.so" {
		t.Errorf("with %s set: %q", EnvLibraryPath, got)
	}
}

func TestShippedModel(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"usr/share/forest-agent/models/m.onnx", "repo/go.mod", "repo/segment/models/m.onnx"} {
		p = filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, nil, 0o644)
	}
	for exe, want := range map[string]string{
		"usr/bin/forest-agent":  "usr/share/forest-agent/models/m.onnx",
		"repo/bin/forest-agent": "repo/segment/models/m.onnx",
		"tmp/forest-agent":      "",
	} {
		got := besideExecutable(filepath.Join(root, exe), filepath.Join("share", "forest-agent", "models", "m.onnx"), filepath.Join("segment", "models", "m.onnx"))
		if want != "" {
			want = filepath.Join(root, want)
		}
		if got != want {
			t.Errorf("from %s: %q, want %q", exe, got, want)
		}
	}
}
