package e2e

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs the program behind `make demo` as a user would: it prints
// the broker, the S3 server, the fleet page and both status pages, S3 keys
// of both devices appear, the fleet page shows both devices with their
// latest frames, and Ctrl-C (SIGINT to its process group) stops it with exit
// status 0 and nothing left behind: none of the addresses it printed still
// listens, and no process runs from its work directory.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; not in -short")
	}
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "demo")
	build := exec.Command("go", "build", "-o", bin, "./agent/e2e/demo")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build demo: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-every", "1s")
	cmd.Dir = root
	// A terminal's job; killed with the test process, as the harness's
	// other children are.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		done <- cmd.Wait()
	}()
	defer func() {
		if t.Failed() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			t.Logf("demo stderr:\n%s", stderr.Bytes())
		}
	}()

	addrRe := regexp.MustCompile(`(?:amqp|http)://(127\.0\.0\.1:\d+)`)
	var addrs []string
	var work string
	keys := map[string]bool{}
	pages := 0
	fleet := ""
	deadline := time.After(4 * time.Minute)
	for !(pages == 2 && keys["demo-mast-a"] && keys["demo-mast-b"]) {
		select {
		case ln, ok := <-lines:
			if !ok {
				t.Fatalf("demo exited early: %v", <-done)
			}
			if strings.Contains(ln, "s3://forest-demo/") {
				for _, d := range []string{"demo-mast-a", "demo-mast-b"} {
					keys[d] = keys[d] || strings.Contains(ln, "/"+d+"/")
				}
				continue
			}
			for _, f := range []string{"broker ", "s3 ", "cloud ", "agent "} {
				if strings.HasPrefix(ln, f) {
					if m := addrRe.FindStringSubmatch(ln); m != nil {
						addrs = append(addrs, m[1])
					}
				}
			}
			if strings.Contains(ln, "status page http://") {
				pages++
			}
			if u, ok := strings.CutPrefix(ln, "fleet     "); ok {
				fleet, _, _ = strings.Cut(u, " ")
			}
			if _, after, ok := strings.Cut(ln, "logs: "); ok {
				work = filepath.Dir(strings.TrimSpace(after))
			}
		case <-deadline:
			t.Fatalf("no status pages and keys of both devices within 4 minutes: pages %d, keys %v", pages, keys)
		}
	}
	if len(addrs) != 5 || work == "" {
		t.Fatalf("demo printed addresses %v and work directory %q, want broker, s3, cloud and two agents", addrs, work)
	}
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, time.Second); err != nil {
			t.Errorf("%s printed but not listening: %v", a, err)
		} else {
			c.Close()
		}
	}
	if fleet == "" {
		t.Fatal("demo printed no fleet page")
	}
	waitFor(t, time.Minute, func() bool {
		resp, err := http.Get(fleet)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		page := string(b)
		return resp.StatusCode == 200 && strings.Count(page, `<img class="thumb"`) == 2 &&
			strings.Contains(page, `id="dev-demo-mast-a" class="device"`) && strings.Contains(page, `id="dev-demo-mast-b" class="device"`)
	})

	// Ctrl-C.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	go func() {
		for range lines {
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo after Ctrl-C: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("demo still running 90 s after Ctrl-C")
	}
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still listening after the demo stopped", a)
		}
	}
	if left := processesUnder(work); len(left) > 0 {
		t.Errorf("processes left running from %s: %v", work, left)
	}
	if _, err := os.Stat(work); err == nil {
		t.Errorf("work directory %s left behind", work)
	}
}

// processesUnder lists the command lines of running processes that mention
// dir.
func processesUnder(dir string) []string {
	var out []string
	pids, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		out = append(out, string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
	}
	return out
}
