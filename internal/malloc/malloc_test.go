package malloc

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// TestOneArena: this test binary imports the package, so glibc has one
// arena however many threads malloc at once. The control, the same load in
// a child process with MALLOC_ARENA_MAX=64 in its environment (which the
// package leaves to glibc), ends with more, so the count can tell the two
// apart.
func TestOneArena(t *testing.T) {
	if os.Getenv("FOREST_MALLOC_CONTROL") == "" && os.Getenv("MALLOC_ARENA_MAX") != "" {
		t.Skip("MALLOC_ARENA_MAX is set: glibc's own setting applies")
	}
	churnThreads(8)
	n := arenas()
	if os.Getenv("FOREST_MALLOC_CONTROL") != "" {
		if n < 2 {
			t.Fatalf("%d arena with MALLOC_ARENA_MAX=64 after 8 threads malloc'd", n)
		}
		return
	}
	if n != 1 {
		t.Fatalf("%d arenas after 8 threads malloc'd, want 1", n)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestOneArena$", "-test.count=1")
	cmd.Env = append(os.Environ(), "FOREST_MALLOC_CONTROL=1", "MALLOC_ARENA_MAX=64")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("control with MALLOC_ARENA_MAX=64: %v\n%s", err, out)
	}
}

// churnThreads mallocs from n new OS threads that are all alive at once,
// then frees (a locked goroutine that ends takes its thread with it, so each
// call starts new ones; glibc gives a new thread an arena of its own while
// the limit allows).
func churnThreads(n int) {
	var held, done sync.WaitGroup
	held.Add(n)
	done.Add(n)
	for range n {
		go func() {
			defer done.Done()
			runtime.LockOSThread()
			p := cMalloc()
			held.Done()
			held.Wait()
			cFree(p)
		}()
	}
	done.Wait()
}
