// Package rabbittest starts private RabbitMQ brokers for tests.
//
// A broker is a real RabbitMQ node (Debian's rabbitmq-server) whose data,
// logs and config live in a temporary directory, bound to 127.0.0.1 on free
// ports, with its own epmd. Tests either share one broker per test binary
// (Shared, stopped by Main) or start their own (Start) when they need to stop
// and restart it. If FOREST_AMQP_URL is set, Shared attaches to that broker
// instead and tests that need to control the broker are skipped.
//
// When the CI environment variable is set, a broker that cannot be had is a
// test failure; otherwise the test is skipped with the reason.
package rabbittest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/freeport"
)

// Marker is an argument passed to the brokers the harness starts, so that
// a person can find leftovers of a crashed test binary (pgrep -af --
// -forest_harness). .ci/env.sh finds them by their FOREST_RUN variable.
const Marker = "-forest_harness"

// rabbitBin is where Debian installs the broker's scripts.
const rabbitBin = "/usr/lib/rabbitmq/bin"

// Broker is a RabbitMQ node started by the harness, or one attached to
// through FOREST_AMQP_URL (then Stop, Kill and Start are not available).
type Broker struct {
	// URL is an AMQP URL for the default vhost with the admin user.
	URL string
	// Port is the AMQP port on 127.0.0.1.
	Port int

	dir      string
	node     string
	env      []string
	external bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	epmd *exec.Cmd
	done chan struct{}
}

// Admin credentials of every harness broker.
const (
	AdminUser     = "forest-admin"
	AdminPassword = "forest-admin-secret"
)

var (
	sharedMu  sync.Mutex
	shared    *Broker
	sharedErr error
)

// Main runs the tests and then stops the shared broker, if one was started.
// Use it from TestMain: func TestMain(m *testing.M) { rabbittest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

// Unavailable fails the test when CI is set and skips it otherwise, naming
// what is missing and how to get it.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set, so this is a failure; run `make deps`)", msg)
	}
	t.Skipf("%s; skipping (run `make deps`, or set CI=1 to make this a failure)", msg)
}

// Shared returns the broker shared by every test of this test binary,
// starting it on first use. Tests must isolate themselves with Vhost.
func Shared(t testing.TB) *Broker {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		if u := os.Getenv("FOREST_AMQP_URL"); u != "" {
			shared, sharedErr = attach(u)
		} else {
			shared, sharedErr = retryPortClash(start)
		}
	}
	if sharedErr != nil {
		Unavailable(t, "rabbitmq: %v", sharedErr)
	}
	return shared
}

// Start starts a private broker for this test and stops it on cleanup. Use it
// when the test stops, kills or restarts the broker.
func Start(t testing.TB) *Broker {
	t.Helper()
	if os.Getenv("FOREST_AMQP_URL") != "" && os.Getenv("CI") == "" {
		t.Skip("FOREST_AMQP_URL is set: this test needs a broker it can restart")
	}
	b, err := retryPortClash(start)
	if err != nil {
		Unavailable(t, "rabbitmq: %v", err)
	}
	t.Cleanup(func() {
		_ = b.shutdown(syscall.SIGKILL)
		_ = os.RemoveAll(b.dir)
	})
	return b
}

// Launch starts a private broker outside a test, for tools such as the demo.
// The caller must Close it.
func Launch() (*Broker, error) { return retryPortClash(start) }

// retryPortClash runs start again, up to twice, when a node failed because
// one of its ports was taken between freeport's check and the node's bind
// (another test process may have drawn the same port).
func retryPortClash[T any](start func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		v, err := start()
		if err == nil || i == 2 || !strings.Contains(err.Error(), "eaddrinuse") {
			return v, err
		}
	}
}

// Close stops a launched broker and removes its data.
func (b *Broker) Close() error {
	if b.external {
		return nil
	}
	err := b.shutdown(syscall.SIGTERM)
	return errors.Join(err, os.RemoveAll(b.dir))
}

// StopShared stops the shared broker, if one was started; for a TestMain
// that combines several harnesses (Main calls it for you).
func StopShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		_ = shared.Close()
		shared = nil
	}
}

func attach(raw string) (*Broker, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("FOREST_AMQP_URL: %w", err)
	}
	port, _ := strconv.Atoi(u.Port())
	return &Broker{URL: raw, Port: port, external: true}, nil
}

func start() (*Broker, error) {
	epmd, port, err := startEpmd()
	if err != nil {
		return nil, err
	}
	b, err := newNode(port, "", "")
	if err != nil {
		_ = syscall.Kill(-epmd.Process.Pid, syscall.SIGKILL)
		return nil, err
	}
	b.epmd = epmd
	if err := b.boot(); err != nil {
		_ = b.shutdown(syscall.SIGKILL)
		_ = os.RemoveAll(b.dir)
		return nil, err
	}
	return b, nil
}

// newNode prepares (but does not boot) a node whose Erlang distribution
// finds its peers through the epmd on epmdPort. With cookie set, the node
// and the CLI use it instead of ~/.erlang.cookie. With peer set, the node
// joins peer's cluster on its first boot (classic config peer discovery).
func newNode(epmdPort int, cookie, peer string) (*Broker, error) {
	for _, f := range []string{"rabbitmq-server", "rabbitmqctl"} {
		if _, err := os.Stat(filepath.Join(rabbitBin, f)); err != nil {
			return nil, fmt.Errorf("%s not found (apt-get install rabbitmq-server)", filepath.Join(rabbitBin, f))
		}
	}
	dir, err := os.MkdirTemp("", "forest-rabbit-")
	if err != nil {
		return nil, err
	}
	ports, err := freeport.Ports(2)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	b := &Broker{
		Port: ports[0],
		dir:  dir,
		node: fmt.Sprintf("forest-%d@localhost", ports[0]),
	}
	b.URL = b.URLFor(AdminUser, AdminPassword, "/")
	conf := fmt.Sprintf(`listeners.tcp.1 = 127.0.0.1:%d
loopback_users = none
default_user = %s
default_pass = %s
log.console = false
log.file.level = warning
vm_memory_high_watermark.relative = 0.6
disk_free_limit.absolute = 50MB
`, b.Port, AdminUser, AdminPassword)
	if peer != "" {
		// The recommended setting for a cluster of three: a node that
		// loses sight of the majority pauses instead of diverging.
		conf += fmt.Sprintf(`cluster_partition_handling = pause_minority
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = %s
`, peer)
	}
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(conf), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[].\n"), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	// Erlang distribution on loopback only, and never an epmd of Erlang's
	// own starting: the harness runs its own and kills it after.
	loopback := "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
	vmArgs := ""
	if cookie != "" {
		loopback += " -setcookie " + cookie
		// A cluster's nodes share the machine's cores with each other:
		// their schedulers must not busy-wait for work.
		vmArgs = " +sbwt none +sbwtdcpu none +sbwtdio none"
	}
	b.env = append(os.Environ(),
		"RABBITMQ_NODENAME="+b.node,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(b.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(ports[1]),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "rabbit.pid"),
		// ALLOW_INPUT makes the script exec the VM instead of waiting for
		// it in a shell, so the VM is the harness's child and dies with
		// it (Pdeathsig); -noinput keeps it from reading stdin all the same.
		"RABBITMQ_ALLOW_INPUT=true",
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+loopback+vmArgs+" -noinput "+Marker+" "+dir,
		"RABBITMQ_CTL_ERL_ARGS="+loopback,
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_EPMD_PORT="+strconv.Itoa(epmdPort),
	)
	return b, nil
}

// startEpmd starts a private epmd on 127.0.0.1 and returns it with its
// port.
func startEpmd() (*exec.Cmd, int, error) {
	path, err := findEpmd()
	if err != nil {
		return nil, 0, err
	}
	ports, err := freeport.Ports(1)
	if err != nil {
		return nil, 0, err
	}
	cmd := exec.Command(path, "-port", strconv.Itoa(ports[0]), "-address", "127.0.0.1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, 0, fmt.Errorf("start epmd: %w", err)
	}
	return cmd, ports[0], nil
}

func findEpmd() (string, error) {
	if p, err := exec.LookPath("epmd"); err == nil {
		return p, nil
	}
	m, _ := filepath.Glob("/usr/lib/erlang/erts-*/bin/epmd")
	if len(m) == 0 {
		return "", errors.New("epmd not found (apt-get install rabbitmq-server)")
	}
	return m[len(m)-1], nil
}

// boot starts the node and waits until it accepts AMQP connections.
func (b *Broker) boot() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	log, err := os.OpenFile(filepath.Join(b.dir, "server.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(filepath.Join(rabbitBin, "rabbitmq-server"))
	cmd.Env = b.env
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start rabbitmq-server: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.cmd, b.done = cmd, done

	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case <-done:
			out, _ := os.ReadFile(filepath.Join(b.dir, "server.out"))
			return fmt.Errorf("rabbitmq-server exited during start-up: %s", lastLines(out, 15))
		default:
		}
		if _, err := b.ctl(10*time.Second, "await_startup"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("rabbitmq-server did not start within 90s")
		}
		time.Sleep(300 * time.Millisecond)
	}
	// await_startup returns once the boot steps ran; the listener follows.
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", b.Port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("rabbitmq-server started but its AMQP port does not accept connections")
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// shutdown stops the node with sig (SIGTERM: graceful; SIGKILL: crash) and
// then its epmd.
func (b *Broker) shutdown(sig syscall.Signal) error {
	err := b.stopNode(sig)
	if b.epmd != nil && b.epmd.Process != nil {
		_ = syscall.Kill(-b.epmd.Process.Pid, syscall.SIGKILL)
		_ = b.epmd.Wait()
		b.epmd = nil
	}
	return err
}

func (b *Broker) stopNode(sig syscall.Signal) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return nil
	}
	_ = syscall.Kill(-b.cmd.Process.Pid, sig)
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		<-b.done
	}
	// The VM may outlive the wrapper script by a moment.
	for i := 0; i < 100 && syscall.Kill(-b.cmd.Process.Pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
	b.cmd = nil
	return nil
}

func (b *Broker) needOwn(t testing.TB) {
	t.Helper()
	if b.external {
		t.Skip("broker attached through FOREST_AMQP_URL cannot be stopped by the test")
	}
}

// Stop stops the broker gracefully; its data stay for Start.
func (b *Broker) Stop(t testing.TB) {
	t.Helper()
	b.needOwn(t)
	if err := b.stopNode(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

// Kill stops the broker with SIGKILL; its data stay for Start.
func (b *Broker) Kill(t testing.TB) {
	t.Helper()
	b.needOwn(t)
	if err := b.stopNode(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// Start starts a stopped broker again on the same port with the same data.
func (b *Broker) Start(t testing.TB) {
	t.Helper()
	b.needOwn(t)
	if err := b.boot(); err != nil {
		t.Fatal(err)
	}
}

// Restart stops the broker gracefully and starts it again.
func (b *Broker) Restart(t testing.TB) {
	t.Helper()
	b.Stop(t)
	b.Start(t)
}

// Ctl runs rabbitmqctl against this broker and returns its output.
func (b *Broker) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	b.needOwn(t)
	out, err := b.ctl(60*time.Second, args...)
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// CtlErr is Ctl that returns the error instead of failing the test, for use
// outside the test goroutine.
func (b *Broker) CtlErr(args ...string) (string, error) {
	if b.external {
		return "", errors.New("external broker")
	}
	return b.ctl(60*time.Second, args...)
}

func (b *Broker) ctl(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	full := append([]string{"-n", b.node, "-q", "--timeout", strconv.Itoa(int(timeout.Seconds()))}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(rabbitBin, "rabbitmqctl"), full...)
	cmd.Env = b.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%w: %s", err, lastLines(out.Bytes(), 10))
	}
	return out.String(), nil
}

var vhostSeq struct {
	sync.Mutex
	n int
}

// Vhost creates a fresh virtual host that the admin user may use, deletes it
// on cleanup, and returns its AMQP URL. Tests on a shared broker use it to
// stay out of each other's way.
func (b *Broker) Vhost(t testing.TB) string {
	t.Helper()
	if b.external {
		return b.URL
	}
	vhostSeq.Lock()
	vhostSeq.n++
	name := fmt.Sprintf("%s-%d-%d", sanitize(t.Name()), os.Getpid(), vhostSeq.n)
	vhostSeq.Unlock()
	b.Ctl(t, "add_vhost", name)
	b.Ctl(t, "set_permissions", "-p", name, AdminUser, ".*", ".*", ".*")
	t.Cleanup(func() { _, _ = b.ctl(60*time.Second, "delete_vhost", name) })
	return b.URLFor(AdminUser, AdminPassword, name)
}

// URLFor returns the AMQP URL of this broker for a user and vhost.
func (b *Broker) URLFor(user, password, vhost string) string {
	u := url.URL{
		Scheme: "amqp",
		User:   url.UserPassword(user, password),
		Host:   fmt.Sprintf("127.0.0.1:%d", b.Port),
		Path:   "/" + vhost,
	}
	if vhost == "/" {
		u.Path = "/"
		return u.String()
	}
	u.RawPath = "/" + url.PathEscape(vhost)
	return u.String()
}

// AddUser creates a user with the given permissions (configure, write, read
// regular expressions) on vhost, deleted on cleanup.
func (b *Broker) AddUser(t testing.TB, user, password, vhost, configure, write, read string) {
	t.Helper()
	b.Ctl(t, "add_user", user, password)
	b.Ctl(t, "set_permissions", "-p", vhost, user, configure, write, read)
	t.Cleanup(func() { _, _ = b.ctl(60*time.Second, "delete_user", user) })
}

// Dir is the broker's temporary directory (config, logs, data).
func (b *Broker) Dir() string { return b.dir }

func sanitize(s string) string {
	var sb strings.Builder
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			sb.WriteRune(r)
		} else {
			sb.WriteByte('-')
		}
	}
	if sb.Len() > 60 {
		return sb.String()[:60]
	}
	return sb.String()
}
