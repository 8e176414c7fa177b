// Package e2e runs the whole chain with the real binaries: forest-agent
// processes feeding a real RabbitMQ, forest-cloud storing into a real S3
// server. The end-to-end tests and `make demo` use it.
//
// A Stack owns every process it starts; Close stops them all. Nothing in
// this package is safe for concurrent use unless its comment says so.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/forestwatch/forest/internal/faultproxy"
	"github.com/forestwatch/forest/internal/freeport"
	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/internal/s3test"
)

// Passwords of the stack's broker users. They are test secrets; the tests
// check that none of them appears in a log.
const (
	cloudUser     = "forest-cloud"
	cloudPassword = "cloud-Secret-4c1d"
	devicePrefix  = "device-Secret-"
)

// Root returns the module root (the directory holding go.mod).
func Root() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the forest module")
	}
	return filepath.Dir(mod), nil
}

// Build compiles forest-agent and forest-cloud into dir.
func Build(dir string) error {
	root, err := Root()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./agent/cmd/forest-agent", "./cloud/cmd/forest-cloud")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
}

// Proc is one child process of the stack, restartable, with its output
// appended to a log file that outlives restarts.
type Proc struct {
	Name string
	Args []string
	Env  []string
	Log  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	starts int
	exits  int
}

// Start starts the process (again).
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s already running", p.Name)
	}
	f, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== %s start #%d %s\n", p.Name, p.starts+1, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.Args[0], p.Args[1:]...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.starts++
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
	return nil
}

// Kill sends SIGKILL and waits for the process to die.
func (p *Proc) Kill() { p.signal(syscall.SIGKILL, 0) }

// Stop sends SIGTERM and waits up to timeout, then kills.
func (p *Proc) Stop(timeout time.Duration) { p.signal(syscall.SIGTERM, timeout) }

func (p *Proc) signal(sig syscall.Signal, timeout time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	if sig != syscall.SIGKILL {
		select {
		case <-p.done:
		case <-time.After(timeout):
			_ = p.cmd.Process.Kill()
		}
	}
	<-p.done
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) // any child of its own
	p.cmd = nil
}

// Running reports whether the process is alive, and its pid.
func (p *Proc) Running() (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0, false
	}
	select {
	case <-p.done:
		return p.cmd.Process.Pid, false
	default:
		return p.cmd.Process.Pid, true
	}
}

// Supervise restarts the process whenever it exits on its own (not through
// Kill or Stop), checking every interval until ctx ends, as systemd's
// Restart=always does for the services' units. A start error is reported
// to onErr.
func (p *Proc) Supervise(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		exited := false
		if p.cmd != nil {
			select {
			case <-p.done:
				p.cmd, exited = nil, true
				p.exits++
			default:
			}
		}
		p.mu.Unlock()
		if exited {
			if err := p.Start(); err != nil {
				onErr(err)
			}
		}
	}
}

// Exits is how many times Supervise found the process exited on its own.
func (p *Proc) Exits() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exits
}

// Starts is how many times the process was started.
func (p *Proc) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// Agent is one forest-agent of the stack.
type Agent struct {
	*Proc
	Device   string
	Password string
	Incoming string
	Spool    string
	HTTP     string
	Config   string
	// Proxies sit between the agent and the broker, one per broker node
	// (the agent's uplink.urls), for link faults.
	Proxies []*faultproxy.Proxy
}

// Cut drops the agent's links to every node.
func (a *Agent) Cut() {
	for _, p := range a.Proxies {
		p.Cut()
	}
}

// Stall stalls (or releases) the agent's links to every node.
func (a *Agent) Stall(on bool) {
	for _, p := range a.Proxies {
		p.Stall(on)
	}
}

// HalfOpen half-opens the agent's links to every node.
func (a *Agent) HalfOpen() {
	for _, p := range a.Proxies {
		p.HalfOpen()
	}
}

// Refuse makes every node refuse (or accept again) the agent's
// connections.
func (a *Agent) Refuse(on bool) {
	for _, p := range a.Proxies {
		p.Refuse(on)
	}
}

// NodeOf returns the index of the broker node that the proxy at addr
// (host:port, as the agent logs its uplink URL) leads to, or -1.
func (a *Agent) NodeOf(addr string) int {
	for i, p := range a.Proxies {
		if p.Addr() == addr {
			return i
		}
	}
	return -1
}

// Cloud is the stack's forest-cloud.
type Cloud struct {
	*Proc
	HTTP   string
	Config string
}

// Stack is a broker (one node, or a cluster), an S3 server, one
// forest-cloud and some agents.
type Stack struct {
	Dir  string
	Bin  string
	Root string
	// Broker is a single broker node, or Cluster a cluster of them (one
	// of the two): forest-cloud and the agents are given every node.
	Broker  *rabbittest.Broker
	Cluster *rabbittest.Cluster
	S3      *s3test.Server
	Bucket  string
	Cloud   *Cloud
	Agents  []*Agent

	lastKilled string // the node a fault test killed last
}

// Nodes returns the stack's broker nodes.
func (s *Stack) Nodes() []*rabbittest.Broker {
	if s.Cluster != nil {
		return s.Cluster.Nodes
	}
	return []*rabbittest.Broker{s.Broker}
}

// Ctl runs rabbitmqctl on a running node of the stack's broker.
func (s *Stack) Ctl(args ...string) (string, error) {
	if s.Cluster != nil {
		return s.Cluster.CtlErr(args...)
	}
	return s.Broker.CtlErr(args...)
}

// AgentOptions tune one agent of the stack.
type AgentOptions struct {
	Device string
	// SpoolMaxBytes bounds the agent's spool; 0 takes 64 MiB.
	// SpoolMinFreeBytes is its free-disk reserve (0: none).
	SpoolMaxBytes, SpoolMinFreeBytes int64
	// Model is the segmentation model; "" takes the shipped satellite
	// model. Tiling is segment.tiling ("" takes resize) and Encode is
	// encode.mode ("" takes keep).
	Model, Tiling, Encode string
	// StatusInterval is the agent's uplink.status_interval ("" takes 10s).
	StatusInterval string
	// Extra is appended to the agent's YAML config.
	Extra string
}

// Setup creates users for the devices on the broker, writes the configs and
// creates (but does not start) the processes. The broker, S3 server and
// bucket must already exist.
func (s *Stack) Setup(agents []AgentOptions, cloudExtra string) error {
	ctl := func(args ...string) error {
		_, err := s.Ctl(args...)
		return err
	}
	if err := ctl("add_user", cloudUser, cloudPassword); err != nil {
		return err
	}
	if err := ctl("set_permissions", "-p", "/", cloudUser, ".*", ".*", ".*"); err != nil {
		return err
	}
	ports, err := freeport.Ports(len(agents) + 1)
	if err != nil {
		return err
	}
	s.Cloud = &Cloud{HTTP: fmt.Sprintf("127.0.0.1:%d", ports[0]), Config: filepath.Join(s.Dir, "cloud.yaml")}
	var urls []string
	for _, b := range s.Nodes() {
		urls = append(urls, fmt.Sprintf("'amqp://127.0.0.1:%d/'", b.Port))
	}
	cloudYAML := fmt.Sprintf(`amqp:
  urls: [%s]
  user: %s
  password_env: FOREST_CLOUD_AMQP_PASSWORD
  reconnect_max: 2s
s3:
  bucket: %s
  endpoint: %s
  region: %s
  path_style: true
  access_key_id: ${FOREST_S3_ACCESS_KEY}
  secret_access_key: ${FOREST_S3_SECRET_KEY}
  retry_max: 2s
  retry_max_elapsed: 10s
http:
  listen: %s
log:
  level: info
  format: json
%s`, strings.Join(urls, ", "), cloudUser, s.Bucket, s.S3.Endpoint, s.S3.Region, s.Cloud.HTTP, cloudExtra)
	if err := os.WriteFile(s.Cloud.Config, []byte(cloudYAML), 0o600); err != nil {
		return err
	}
	s.Cloud.Proc = &Proc{
		Name: "forest-cloud",
		Args: []string{filepath.Join(s.Bin, "forest-cloud"), "run", "--config", s.Cloud.Config},
		Env: []string{
			"FOREST_CLOUD_AMQP_PASSWORD=" + cloudPassword,
			"FOREST_S3_ACCESS_KEY=" + s.S3.AccessKey,
			"FOREST_S3_SECRET_KEY=" + s.S3.SecretKey,
		},
		Log: filepath.Join(s.Dir, "cloud.log"),
	}
	for i, o := range agents {
		a, err := s.newAgent(o, ports[i+1])
		if err != nil {
			return err
		}
		s.Agents = append(s.Agents, a)
	}
	return nil
}

func (s *Stack) newAgent(o AgentOptions, httpPort int) (*Agent, error) {
	dir := filepath.Join(s.Dir, o.Device)
	a := &Agent{
		Device:   o.Device,
		Password: devicePrefix + o.Device,
		Incoming: filepath.Join(dir, "incoming"),
		Spool:    filepath.Join(dir, "spool"),
		HTTP:     fmt.Sprintf("127.0.0.1:%d", httpPort),
		Config:   filepath.Join(dir, "agent.yaml"),
	}
	if err := os.MkdirAll(a.Incoming, 0o755); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"add_user", o.Device, a.Password},
		// A device may only write, and only to its own routing keys: its
		// frames and its status reports.
		{"set_permissions", "-p", "/", o.Device, "^$", "^forest\\.frames$", "^$"},
		{"set_topic_permissions", "-p", "/", o.Device, "forest.frames", "^(frames|status)\\." + o.Device + "$", "^$"},
	} {
		if _, err := s.Ctl(args...); err != nil {
			return nil, err
		}
	}
	var urls []string
	for _, b := range s.Nodes() {
		p, err := faultproxy.Listen(fmt.Sprintf("127.0.0.1:%d", b.Port))
		if err != nil {
			return nil, err
		}
		a.Proxies = append(a.Proxies, p)
		urls = append(urls, fmt.Sprintf("'amqp://%s/'", p.Addr()))
	}
	maxBytes := o.SpoolMaxBytes
	if maxBytes == 0 {
		maxBytes = 64 << 20
	}
	model, tiling, encode := o.Model, o.Tiling, o.Encode
	if model == "" {
		model = filepath.Join(s.Root, "segment", "models", "forest-unet-v1.onnx")
	}
	if tiling == "" {
		tiling = "resize"
	}
	if encode == "" {
		encode = "keep"
	}
	statusInterval := o.StatusInterval
	if statusInterval == "" {
		statusInterval = "10s"
	}
	yaml := fmt.Sprintf(`device:
  id: %s
  state_dir: %s
source:
  type: dir
  dir:
    path: %s
    settle: 100ms
    after: move
segment:
  model: %s
  tiling: %s
  threads: 1
encode:
  mode: %s
spool:
  dir: %s
  max_bytes: %d
  min_free_bytes: %d
uplink:
  urls: [%s]
  user: %s
  password_env: FOREST_AGENT_PASSWORD
  window: 16
  batch: 16
  confirm_timeout: 10s
  dial_timeout: 5s
  heartbeat: 2s
  backoff_max: 2s
  status_interval: %s
http:
  listen: %s
  refresh: 1s
log:
  level: info
  format: json
shutdown_timeout: 10s
%s`, o.Device, filepath.Join(dir, "state"), a.Incoming, model, tiling, encode,
		a.Spool, maxBytes, o.SpoolMinFreeBytes, strings.Join(urls, ", "), o.Device, statusInterval, a.HTTP, o.Extra)
	if err := os.WriteFile(a.Config, []byte(yaml), 0o600); err != nil {
		return nil, err
	}
	a.Proc = &Proc{
		Name: "forest-agent " + o.Device,
		Args: []string{filepath.Join(s.Bin, "forest-agent"), "run", "--config", a.Config},
		Env:  []string{"FOREST_AGENT_PASSWORD=" + a.Password},
		Log:  filepath.Join(dir, "agent.log"),
	}
	return a, nil
}

// Secrets returns every password of the stack, for log checks.
func (s *Stack) Secrets() []string {
	out := []string{cloudPassword, s.S3.SecretKey, rabbittest.AdminPassword}
	for _, a := range s.Agents {
		out = append(out, a.Password)
	}
	return out
}

// Close stops every process and proxy of the stack.
func (s *Stack) Close() {
	for _, a := range s.Agents {
		a.Stop(15 * time.Second)
		for _, p := range a.Proxies {
			p.Close()
		}
	}
	if s.Cloud != nil && s.Cloud.Proc != nil {
		s.Cloud.Stop(15 * time.Second)
	}
}

// WaitHTTP polls url until it answers 200 or the timeout passes.
func WaitHTTP(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(b))
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s: %s", url, timeout, last)
}

// Metric scrapes a Prometheus text endpoint and sums the samples of name
// whose labels contain every given label pair ("reason=\"max_bytes\"").
func Metric(ctx context.Context, addr, name string, labels ...string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var sum float64
	found := false
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("metric %s%v not found at %s", name, labels, addr)
	}
	return sum, nil
}
