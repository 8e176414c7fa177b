package firmware

import (
	"os"
	"os/exec"
	"testing"
)

// TestQemuArm64 runs qemu-check.sh (arm64 package under qemu-user-static vs
// amd64: same coverage within 0.5 percentage points, arm64 ONNX Runtime
// loaded). It builds both packages and emulates a whole model run, so it
// takes minutes: it runs only with FOREST_QEMU_CHECK=1 (`make
// package-check` runs the script directly).
func TestQemuArm64(t *testing.T) {
	if os.Getenv("FOREST_QEMU_CHECK") == "" {
		t.Skip("set FOREST_QEMU_CHECK=1 to run the arm64 emulation check (slow)")
	}
	cmd := exec.Command("bash", "firmware/qemu-check.sh")
	cmd.Dir = repoRoot(t)
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("qemu-check.sh: %v", err)
	}
}
