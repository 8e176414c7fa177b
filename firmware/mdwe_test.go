package firmware

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// mdweEnv, when set, makes the test binary a wrapper: TestMain turns on the
// kernel's memory-deny-write-execute policy for the process and execs its
// arguments, which inherit the policy.
const mdweEnv = "FOREST_FIRMWARE_MDWE"

const probeArg = "-mdwe-probe"

// mdweExec is TestMain's wrapper mode. With probeArg it only reports whether
// a writable and executable mapping is refused (exit 0) or granted (exit 3).
// Otherwise it sets PR_SET_MDWE (Linux 6.3+; systemd 253+ implements
// MemoryDenyWriteExecute= with it, older systemd with an equivalent seccomp
// filter) and execs os.Args[1:].
func mdweExec() {
	if os.Args[1] == probeArg {
		_, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE|syscall.PROT_EXEC, syscall.MAP_PRIVATE|syscall.MAP_ANON)
		if errors.Is(err, syscall.EACCES) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "W+X mapping not refused (err=%v)\n", err)
		os.Exit(3)
	}
	const prSetMDWE, mdweRefuseExecGain = 65, 1
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetMDWE, mdweRefuseExecGain, 0, 0, 0, 0); e != 0 {
		fmt.Fprintf(os.Stderr, "prctl(PR_SET_MDWE): %v\n", e)
		os.Exit(125)
	}
	path, err := exec.LookPath(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(126)
	}
	err = syscall.Exec(path, os.Args[1:], os.Environ())
	fmt.Fprintf(os.Stderr, "exec %s: %v\n", path, err)
	os.Exit(127)
}

// underMDWE runs argv with memory-deny-write-execute in force.
func underMDWE(argv ...string) *exec.Cmd {
	self, _ := os.Executable()
	cmd := exec.Command(self, argv...)
	cmd.Env = append(os.Environ(), mdweEnv+"=1")
	return cmd
}

// TestMDWEHarness proves the harness: without the policy a W+X mapping is
// granted, with it (set before an execve) it is refused.
func TestMDWEHarness(t *testing.T) {
	self, _ := os.Executable()
	plain := exec.Command(self, probeArg)
	plain.Env = append(os.Environ(), mdweEnv+"=1")
	if err := plain.Run(); err == nil {
		t.Fatal("W+X mapping refused without the policy; the probe cannot tell")
	}
	requireMDWE(t)
}

// requireMDWE skips the test, also in CI, when the kernel cannot apply the
// policy (PR_SET_MDWE needs Linux 6.3; Debian 12's stock kernel is 6.1): no
// package can install it, and systemd 252 enforces MemoryDenyWriteExecute=
// with a seccomp filter there instead. It fails if the policy is applied
// and a W+X mapping is still granted.
func requireMDWE(t *testing.T) {
	t.Helper()
	self, _ := os.Executable()
	out, err := underMDWE(self, probeArg).CombinedOutput()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) && ee.ExitCode() == 125 {
		t.Skipf("kernel lacks PR_SET_MDWE (Linux 6.3+), so this cannot be checked here: %s", out)
	}
	if err != nil {
		t.Fatalf("W+X mapping granted under the policy: %v: %s", err, out)
	}
}

// TestMemoryDenyWriteExecute runs `forest-agent segment` (Go runtime, cgo and
// ONNX Runtime's CPU provider) under memory-deny-write-execute and requires
// the same output as without it, which is what the unit's
// MemoryDenyWriteExecute=yes relies on.
func TestMemoryDenyWriteExecute(t *testing.T) {
	requireMDWE(t)
	bin := agentBinary(t)
	frames := sampleFrames(t)
	lib := ortLibrary(t, "x64")
	args := append([]string{"segment", "--json", "--model", defaultModel(t)}, frames...)
	plain := exec.Command(bin, args...)
	plain.Env = append(os.Environ(), "ONNXRUNTIME_LIB="+lib)
	want := coverages(t, plain)
	mdwe := underMDWE(append([]string{bin}, args...)...)
	mdwe.Env = append(mdwe.Env, "ONNXRUNTIME_LIB="+lib)
	got := coverages(t, mdwe)
	if len(got) != len(frames) {
		t.Fatalf("segmented %d of %d frames under MDWE", len(got), len(frames))
	}
	for f, c := range want {
		if got[f] != c {
			t.Errorf("%s: coverage %v under MDWE, %v without", filepath.Base(f), got[f], c)
		}
	}
	for _, f := range []string{bin, lib} {
		out, err := exec.Command("readelf", "-dW", f).Output()
		if err == nil && bytes.Contains(out, []byte("TEXTREL")) {
			t.Errorf("%s has text relocations (would need W+X under the seccomp flavour of MemoryDenyWriteExecute)", filepath.Base(f))
		}
	}
}
