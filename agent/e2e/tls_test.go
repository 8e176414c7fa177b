package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/freeport"
	"github.com/forestwatch/forest/internal/rabbittest"
)

// TestAgentTLS runs the real agent against a broker that requires TLS with
// client certificates: with the right CA and its client certificate it
// delivers; with a CA that did not sign the broker's certificate it refuses
// the server, keeps its frames and says why.
func TestAgentTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; not in -short")
	}
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	bin := binaries(t)
	certs := rabbittest.GenerateCerts(t, "mast-tls")
	stranger := rabbittest.GenerateCerts(t, "mast-tls")
	br := rabbittest.StartTLS(t, certs)

	rabbittest.FramesQueue(t, br.URL, "tls-frames", nil)
	ch := rabbittest.Channel(t, br.URL)
	br.AddUser(t, "mast-tls", "tls-Secret-77", "/", "^$", "^forest\\.frames$", "^$")

	frames, err := LoadFrames(root, 128)
	if err != nil {
		t.Fatal(err)
	}
	start := func(name string, c *rabbittest.Certs, n int) *Agent {
		t.Helper()
		dir := filepath.Join(t.TempDir(), name)
		ports, err := freeport.Ports(1)
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
		a := &Agent{Device: "mast-tls", Incoming: filepath.Join(dir, "incoming"), Spool: filepath.Join(dir, "spool"),
			HTTP: addr, Config: filepath.Join(dir, "agent.yaml")}
		if err := os.MkdirAll(a.Incoming, 0o755); err != nil {
			t.Fatal(err)
		}
		cfg := fmt.Sprintf(`device: {id: mast-tls, state_dir: %s}
source: {type: dir, dir: {path: %s, settle: 100ms}}
segment: {model: %s, threads: 1}
spool: {dir: %s, min_free_bytes: 0}
uplink:
  url: amqps://127.0.0.1:%d/
  user: mast-tls
  password_env: FOREST_AGENT_PASSWORD
  tls: {ca_file: %s, cert_file: %s, key_file: %s, server_name: localhost}
  dial_timeout: 5s
  backoff_max: 1s
http: {listen: %s}
log: {level: info, format: json}
`, filepath.Join(dir, "state"), a.Incoming, filepath.Join(root, "segment", "models", "forest-unet-v1.onnx"),
			a.Spool, br.TLSPort, c.CAFile, certs.ClientCert, certs.ClientKey, addr)
		if err := os.WriteFile(a.Config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		a.Proc = &Proc{Name: name, Args: []string{filepath.Join(bin, "forest-agent"), "run", "--config", a.Config},
			Env: []string{"FOREST_AGENT_PASSWORD=tls-Secret-77"}, Log: filepath.Join(dir, "agent.log")}
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Stop(10 * time.Second) })
		if err := WaitHTTP("http://"+a.HTTP+"/healthz", time.Minute); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			b, err := frames.Frame(1000*len(name) + i)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Drop(a.Incoming, fmt.Sprintf("f%d.jpg", i), b); err != nil {
				t.Fatal(err)
			}
		}
		return a
	}
	depth := func() int {
		q, err := ch.QueueDeclarePassive("tls-frames", true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
		if err != nil {
			t.Fatal(err)
		}
		return q.Messages
	}

	good := start("trusted", certs, 3)
	waitFor(t, time.Minute, func() bool { return depth() == 3 })
	good.Stop(10 * time.Second)

	bad := start("untrusted-ca", stranger, 2)
	ctx := context.Background()
	waitFor(t, time.Minute, func() bool {
		n, err := Metric(ctx, bad.HTTP, "forest_agent_spool_frames")
		return err == nil && n == 2
	})
	time.Sleep(5 * time.Second) // several connection attempts
	if up, err := Metric(ctx, bad.HTTP, "forest_agent_link_up"); err != nil || up != 0 {
		t.Errorf("link_up = %v (%v) with an untrusted server certificate", up, err)
	}
	if n := depth(); n != 3 {
		t.Errorf("queue holds %d frames, want the trusted agent's 3 only", n)
	}
	log, _ := os.ReadFile(bad.Log)
	if !strings.Contains(string(log), "certificate") {
		t.Errorf("the agent's log does not say the certificate was refused:\n%s", log)
	}
	if strings.Contains(string(log), "tls-Secret-77") {
		t.Error("the agent logged its password")
	}
}
