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
	touch("repo/segment/x.go")
	deb := touch("usr/lib/forest-agent/libonnxruntime.so.1")
	touch("outside/.cache/onnxruntime/linux-arm64/libonnxruntime.so.1") // above go.mod: never used
	wd := filepath.Join(root, "repo", "segment")
	exe := filepath.Join(root, "usr", "bin", "forest-agent")

	for _, c := range []struct {
		name                   string
		explicit, env, wd, exe string
		arch, want             string
	}{
		{"explicit wins", "/opt/ort.so", "/env/ort.so", wd, exe, "arm64", "/opt/ort.so"},
		{"env next", "", "/env/ort.so", wd, exe, "arm64", "/env/ort.so"},
		{"make deps cache walking up to go.mod", "", "", wd, exe, "arm64", cached},
		{"other arch falls to the .deb layout", "", "", wd, exe, "x64", deb},
		{"no go.mod above: stops at /", "", "", filepath.Join(root, "outside", "a"), "", "x64", "libonnxruntime.so.1"},
		{"system library last", "", "", filepath.Join(root, "repo"), filepath.Join(root, "bin", "x"), "x64", "libonnxruntime.so.1"},
	} {
		if got := libraryPath(c.explicit, c.env, c.wd, c.exe, c.arch); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}

	// The real resolution from this package's directory finds `make deps`' copy unless
	// the environment overrides it.
	t.Setenv(EnvLibraryPath, "")
	want, _ := filepath.Abs(filepath.Join("..", ".cache", "onnxruntime", "linux-"+archName(), "libonnxruntime.so.1"))
	if fileExists(want) {
		if got := LibraryPath(""); got != want {
			t.Errorf("LibraryPath(\"\") = %q, want %q", got, want)
		}
	}
	t.Setenv(EnvLibraryPath, "/from/env.so")
	if got := LibraryPath(""); got != "/from/env.so" {
		t.Errorf("with %s set: %q", EnvLibraryPath, got)
	}
}
