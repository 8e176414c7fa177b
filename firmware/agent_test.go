package firmware

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// repoRoot is the module root, the parent of firmware/.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// agentBinary builds agent/cmd/forest-agent for the host into a temporary
// directory.
func agentBinary(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	if m, _ := filepath.Glob(filepath.Join(root, "agent/cmd/forest-agent/*.go")); len(m) == 0 {
		missing(t, "agent/cmd/forest-agent does not exist yet")
	}
	bin := filepath.Join(t.TempDir(), "forest-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./agent/cmd/forest-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build forest-agent: %v\n%s", err, out)
	}
	return bin
}

// sampleFrames are the 512×512 frames in testdata/frames.
func sampleFrames(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob("testdata/frames/*.jpg")
	if err != nil || len(m) == 0 {
		t.Fatalf("no sample frames in testdata/frames (%v)", err)
	}
	for i := range m {
		m[i], _ = filepath.Abs(m[i])
	}
	return m
}

// defaultModel is the model the package's config uses (firmware/agent.yaml).
func defaultModel(t *testing.T) string {
	t.Helper()
	p := filepath.Join(repoRoot(t), "segment/models/canopy-aerial-v1.onnx")
	if _, err := os.Stat(p); err != nil {
		missing(t, "default model: %v", err)
	}
	return p
}

// ortLibrary is the pinned ONNX Runtime for arch (x64 or arm64).
func ortLibrary(t *testing.T, arch string) string {
	t.Helper()
	p := filepath.Join(repoRoot(t), ".cache/onnxruntime/linux-"+arch+"/libonnxruntime.so.1")
	if _, err := os.Stat(p); err != nil {
		missing(t, "ONNX Runtime library %s missing (run `make deps`)", p)
	}
	return p
}

// coverages runs `forest-agent segment --json ...` and returns each file's
// coverage fraction.
func coverages(t *testing.T, cmd *exec.Cmd) map[string]float64 {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if cmd.Dir == "" {
		cmd.Dir = t.TempDir() // away from the checkout's .cache
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s%s", cmd.Args, err, out, stderr.Bytes())
	}
	cov := map[string]float64{}
	for _, ln := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		var r struct {
			File     string   `json:"file"`
			Coverage *float64 `json:"coverage"`
		}
		if err := json.Unmarshal(ln, &r); err != nil || r.Coverage == nil {
			t.Fatalf("segment output line %q: %v", ln, err)
		}
		cov[r.File] = *r.Coverage
	}
	return cov
}
