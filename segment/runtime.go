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
// explicit if non-empty; the ONNXRUNTIME_LIB environment variable; the copy `make deps`
// installs at .cache/onnxruntime/linux-<x64|arm64>/libonnxruntime.so.1 in the working
// directory or any parent up to the one holding go.mod; the copy the .deb installs at
// <executable dir>/../lib/forest-agent/libonnxruntime.so.1; else "libonnxruntime.so.1",
// which the dynamic loader looks up in the system's library path.
func LibraryPath(explicit string) string {
	wd, _ := os.Getwd()
	exe, _ := os.Executable()
	return libraryPath(explicit, os.Getenv(EnvLibraryPath), wd, exe, archName())
}

func libraryPath(explicit, env, wd, exe, arch string) string {
	if explicit != "" {
		return explicit
	}
	if env != "" {
		return env
	}
	if wd != "" {
		rel := filepath.Join(".cache", "onnxruntime", "linux-"+arch, "libonnxruntime.so.1")
		for dir := wd; ; {
			if p := filepath.Join(dir, rel); fileExists(p) {
				return p
			}
			if fileExists(filepath.Join(dir, "go.mod")) {
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	if exe != "" {
		p := filepath.Clean(filepath.Join(filepath.Dir(exe), "..", "lib", "forest-agent", "libonnxruntime.so.1"))
		if fileExists(p) {
			return p
		}
	}
	return "libonnxruntime.so.1"
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
