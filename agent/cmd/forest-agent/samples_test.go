package main

import (
	"encoding/json"
	"image"
	_ "image/png"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/forestwatch/forest/agent"
	"github.com/forestwatch/forest/spool"
)

// TestMakeRun runs `make run`'s script, .ci/run-sample.sh, twice on a copy
// of the files it uses and a freshly built binary, as `make run` does
// after `make build`: each aerial sample is segmented by the aerial model
// and each satellite sample by the satellite model, every sample has an
// overlay of its size, and a second run does the same again, the samples
// left in place.
func TestMakeRun(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"canopy-aerial-v1.onnx", "forest-unet-v1.onnx"} {
		if _, err := os.Stat(filepath.Join(root, "segment", "models", m)); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("shipped model missing: %v", err)
			}
			t.Skipf("shipped model missing: %v", err)
		}
	}
	tree := makeRunTree(t, root)
	samples := map[string][]string{}
	for _, set := range []string{"aerial", "satellite"} {
		m, _ := filepath.Glob(filepath.Join(tree, "agent", "testdata", "frames", set, "*"))
		if len(m) == 0 {
			t.Fatalf("no %s samples", set)
		}
		for _, f := range m {
			samples[set] = append(samples[set], filepath.Base(f))
		}
	}
	wantModel := map[string]string{"aerial": "canopy-aerial/", "satellite": "forest-unet/"}

	for run := 1; run <= 2; run++ {
		cmd := exec.Command("bash", filepath.Join(tree, ".ci", "run-sample.sh"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("run %d: %v\n%s", run, err, out)
		}
		for _, set := range []string{"aerial", "satellite"} {
			dir := filepath.Join(tree, ".cache", "run", set)
			if !strings.Contains(string(out), "model:    "+wantModel[set]) || !strings.Contains(string(out), "\n  "+filepath.Join(dir, "overlays")+"\n") {
				t.Fatalf("run %d: the output does not name the %s model or overlays:\n%s", run, set, out)
			}
			frames := spooled(t, filepath.Join(dir, "spool"))
			var names []string
			for name := range frames {
				names = append(names, name)
			}
			sort.Strings(names)
			if strings.Join(names, " ") != strings.Join(samples[set], " ") {
				t.Fatalf("run %d: spooled %v, want the %s samples %v once each", run, names, set, samples[set])
			}
			cov := map[string]float64{}
			for _, name := range names {
				m := frames[name]
				if !strings.HasPrefix(m.Model, wantModel[set]) {
					t.Errorf("run %d: %s segmented by %q, want %s*", run, name, m.Model, wantModel[set])
				}
				if !strings.Contains(string(out), "\n"+name+" ") {
					t.Errorf("run %d: no line for %s in the output", run, name)
				}
				checkOverlay(t, filepath.Join(dir, "overlays"), name, m)
				if _, err := os.Stat(filepath.Join(tree, "agent", "testdata", "frames", set, name)); err != nil {
					t.Errorf("run %d consumed the sample: %v", run, err)
				}
				cov[name] = m.Coverage
			}
			t.Logf("run %d, %s: %v", run, set, cov)
			if set == "aerial" {
				// Plausible figures, not recorded ones: four crowns in a
				// 1024² field, and an OAM tile of forest patches on bare
				// ground (the satellite model marks about 1 % of it).
				if c := cov["neon_BLAN_3_751000_4330000_crop.jpg"]; c < 0.005 || c > 0.10 {
					t.Errorf("run %d: aerial model marks %.1f %% of the BLAN frame, want 0.5-10 %%", run, c*100)
				}
				if c := cov["oam_tcd_0003.jpg"]; c < 0.05 || c > 0.95 {
					t.Errorf("run %d: aerial model marks %.1f %% of OAM 0003, want 5-95 %%", run, c*100)
				}
			} else {
				lo, hi := 0, 0
				for _, c := range cov {
					if c < 0.5 {
						lo++
					} else {
						hi++
					}
				}
				if lo == 0 || hi == 0 {
					t.Errorf("run %d: satellite coverages %v, want both mostly forest and mostly cleared tiles", run, cov)
				}
			}
		}
	}
}

// makeRunTree lays out in a temporary directory what .ci/run-sample.sh
// uses: the script, the two configs, the samples and bin/forest-agent,
// built from this package. The binary finds the shipped models and ONNX
// Runtime as in a checkout (go.mod beside segment/models and .cache/), so
// `make run`'s output stays out of the real .cache/run.
func makeRunTree(t *testing.T, root string) string {
	t.Helper()
	tree := t.TempDir()
	if r, err := filepath.EvalSymlinks(tree); err == nil {
		tree = r // the script prints $PWD
	}
	build := exec.Command("go", "build", "-o", filepath.Join(tree, "bin", "forest-agent"), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	files := []string{".ci/run-sample.sh", "agent/testdata/run.yaml", "agent/testdata/run-satellite.yaml"}
	for _, set := range []string{"aerial", "satellite"} {
		m, _ := filepath.Glob(filepath.Join(root, "agent", "testdata", "frames", set, "*"))
		for _, f := range m {
			rel, _ := filepath.Rel(root, f)
			files = append(files, rel)
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err == nil {
			err = os.MkdirAll(filepath.Dir(filepath.Join(tree, f)), 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(tree, f), b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "go.mod"), []byte("module maketree\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"segment/models", ".cache/onnxruntime"} {
		if _, err := os.Stat(filepath.Join(root, d)); err != nil {
			continue // ONNX Runtime may come from ONNXRUNTIME_LIB instead
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tree, d)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(root, d), filepath.Join(tree, d)); err != nil {
			t.Fatal(err)
		}
	}
	return tree
}

// spooled returns the metadata of every frame in the spool at dir, by file
// name.
func spooled(t *testing.T, dir string) map[string]agent.Meta {
	t.Helper()
	q, err := spool.Open(dir, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	recs, err := q.Next(1000)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]agent.Meta{}
	for _, r := range recs {
		var m agent.Meta
		if err := json.Unmarshal(r.Meta, &m); err != nil {
			t.Fatalf("record %d: %v", r.ID, err)
		}
		name := strings.TrimPrefix(m.Source, "dir:")
		if _, dup := out[name]; dup {
			t.Fatalf("%s spooled twice", name)
		}
		out[name] = m
	}
	return out
}

// checkOverlay checks that dir holds one overlay PNG of the frame, of its
// size.
func checkOverlay(t *testing.T, dir, name string, m agent.Meta) {
	t.Helper()
	base := strings.TrimSuffix(name, filepath.Ext(name))
	ovl, _ := filepath.Glob(filepath.Join(dir, "*-"+base+".png"))
	if len(ovl) != 1 {
		t.Errorf("overlays of %s: %v, want one", name, ovl)
		return
	}
	f, err := os.Open(ovl[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, _, err := image.DecodeConfig(f)
	if err != nil || c.Width != m.Width || c.Height != m.Height {
		t.Errorf("overlay %s: %dx%d (%v), want %dx%d", ovl[0], c.Width, c.Height, err, m.Width, m.Height)
	}
}
