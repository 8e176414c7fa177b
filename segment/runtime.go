package segment

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// EnvLibraryPath is the environment variable that may name the ONNX Runtime shared library.
const EnvLibraryPath = "ONNXRUNTIME_LIB"

// LibraryPath returns the ONNX Runtime shared library to load. The first of these wins:
// explicit if non-empty; the ONNXRUNTIME_LIB environment variable; the copy the .deb
// installs at <executable dir>/../lib/forest-agent/libonnxruntime.so.1; the copy `make deps`
// installs in a checkout, .cache/onnxruntime/linux-<x64|arm64>/libonnxruntime.so.1, found
// from the executable's directory upwards (bin/forest-agent of a checkout); else
// "libonnxruntime.so.1", which the dynamic loader looks up in the system's library path.
//
// The working directory is never searched: a daemon running as root next to directories
// other users can write must not load a library planted there.
func LibraryPath(explicit string) string {
	exe, _ := os.Executable()
	return libraryPath(explicit, os.Getenv(EnvLibraryPath), exe, archName())
}

func libraryPath(explicit, env, exe, arch string) string {
	if explicit != "" {
		return explicit
	}
	if env != "" {
		return env
	}
	if p := besideExecutable(exe, filepath.Join("lib", "forest-agent", "libonnxruntime.so.1"),
		filepath.Join(".cache", "onnxruntime", "linux-"+arch, "libonnxruntime.so.1")); p != "" {
		return p
	}
	return "libonnxruntime.so.1"
}

// ShippedModel returns the path of a model shipped with forest-agent, by its file name
// (for example "forest-unet-v1.onnx"): in <executable dir>/../share/forest-agent/models/,
// where the .deb installs them, or in segment/models/ of the checkout that holds the
// executable. It returns "" when neither has it. Like LibraryPath, it never searches the
// working directory.
func ShippedModel(name string) string {
	if name == "" || filepath.Base(name) != name {
		return ""
	}
	exe, _ := os.Executable()
	return besideExecutable(exe, filepath.Join("share", "forest-agent", "models", name), filepath.Join("segment", "models", name))
}

// besideExecutable returns the first file that exists of: installed, relative to the
// parent of the executable's directory (the .deb layout: /usr/bin → /usr); inCheckout,
// relative to the checkout that holds the executable (the directory with go.mod at or
// above the executable's). Symbolic links in exe are resolved first.
func besideExecutable(exe, installed, inCheckout string) string {
	if exe == "" {
		return ""
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	dir := filepath.Dir(exe)
	if p := filepath.Join(filepath.Dir(dir), installed); fileExists(p) {
		return p
	}
	for {
		if fileExists(filepath.Join(dir, "go.mod")) {
			if p := filepath.Join(dir, inCheckout); fileExists(p) {
				return p
			}
			return ""
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

func archName() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x64"
	default:
		return runtime.GOARCH
	}
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// The ONNX Runtime environment is process-global in onnxruntime_go. env reference-counts
// this package's users: the first acquire loads the library and creates the environment,
// the last release destroys it. All Models in a process therefore share one library;
// asking for a different one while it is loaded is an error. An environment initialised
// by other code is used as is and never destroyed here.
var env struct {
	mu    sync.Mutex
	refs  int
	path  string
	owned bool
}

func acquireEnv(path string) error {
	env.mu.Lock()
	defer env.mu.Unlock()
	if env.refs > 0 {
		if env.owned && path != env.path {
			return fmt.Errorf("%w: library %q requested but %q is already loaded in this process",
				ErrRuntime, path, env.path)
		}
		env.refs++
		return nil
	}
	if ort.IsInitialized() {
		env.refs, env.path, env.owned = 1, path, false
		return nil
	}
	ort.SetSharedLibraryPath(path)
	if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
		return fmt.Errorf("%w: load %s: %w", ErrRuntime, path, err)
	}
	env.refs, env.path, env.owned = 1, path, true
	return nil
}

func releaseEnv() error {
	env.mu.Lock()
	defer env.mu.Unlock()
	if env.refs <= 0 {
		return nil
	}
	env.refs--
	if env.refs > 0 || !env.owned {
		return nil
	}
	env.path, env.owned = "", false
	if err := ort.DestroyEnvironment(); err != nil {
		return fmt.Errorf("destroy onnx runtime environment: %w", err)
	}
	return nil
}

// RuntimeVersion loads the ONNX Runtime library that LibraryPath(library) selects (or uses
// the one already loaded) and returns its version string, such as "1.24.1", and the path of
// that library.
func RuntimeVersion(library string) (version, path string, err error) {
	path = LibraryPath(library)
	env.mu.Lock()
	if env.refs > 0 {
		path = env.path
	}
	env.mu.Unlock()
	if err := acquireEnv(path); err != nil {
		return "", path, err
	}
	v := ort.GetVersion()
	return v, path, releaseEnv()
}

func sortStrings(s []string) { sort.Strings(s) }
