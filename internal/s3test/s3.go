// Package s3test starts a private S3 server for tests, or attaches to the
// one named by FOREST_S3_ENDPOINT. Two implementations are supported, both
// built by `make deps` into .cache/bin: versitygw (the default) and MinIO,
// chosen by FOREST_S3_SERVER (versitygw or minio) or by StartKind, so that
// the S3 behaviour forest-cloud relies on is proven on more than one
// server.
//
// The server listens on 127.0.0.1 on a free port with its data in a
// temporary directory and known test credentials. Tests share one server per
// test binary (Shared, stopped by Main) and isolate themselves with Bucket;
// tests that stop and start the server use Start. When the CI environment
// variable is set, a server that cannot be had is a test failure; otherwise
// the test is skipped with the reason.
package s3test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/forestwatch/forest/internal/freeport"
)

// Test credentials of every harness server (or FOREST_S3_ACCESS_KEY and
// FOREST_S3_SECRET_KEY for an attached one).
const (
	AccessKey = "forest-test-access"
	SecretKey = "forest-test-secret-key"
	Region    = "us-east-1"
)

// Kind names an S3 server implementation.
type Kind string

// The implementations the harness can start.
const (
	VersityGW Kind = "versitygw"
	MinIO     Kind = "minio"
)

// DefaultKind is the implementation Shared and Start use:
// $FOREST_S3_SERVER, or versitygw.
func DefaultKind() Kind {
	if k := Kind(os.Getenv("FOREST_S3_SERVER")); k != "" {
		return k
	}
	return VersityGW
}

// Server is an S3 server for tests.
type Server struct {
	// Kind is the implementation ("" for an attached server).
	Kind Kind
	// Endpoint is the server's base URL, e.g. http://127.0.0.1:41234.
	Endpoint  string
	AccessKey string
	SecretKey string
	Region    string

	addr     string
	console  string
	dir      string
	bin      string
	external bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	sharedMu  sync.Mutex
	shared    *Server
	sharedErr error
)

// Main runs the tests and then stops the shared server, if one was started.
func Main(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

// StopShared stops the shared server, if one was started; for a TestMain
// that combines several harnesses (Main calls it for you).
func StopShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		_ = shared.Close()
		shared = nil
	}
}

// Launch starts a private server outside a test, for tools such as the demo.
// The caller must Close it.
func Launch() (*Server, error) { return start(DefaultKind()) }

// Close stops a launched server and removes its data.
func (s *Server) Close() error {
	if s.external {
		return nil
	}
	s.stop()
	return os.RemoveAll(s.dir)
}

// Unavailable fails the test when CI is set and skips it otherwise.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set, so this is a failure; run `make deps`)", msg)
	}
	t.Skipf("%s; skipping (run `make deps`, or set CI=1 to make this a failure)", msg)
}

// Shared returns the server shared by every test of this test binary.
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		if ep := os.Getenv("FOREST_S3_ENDPOINT"); ep != "" {
			shared = &Server{
				Endpoint:  ep,
				AccessKey: envOr("FOREST_S3_ACCESS_KEY", AccessKey),
				SecretKey: envOr("FOREST_S3_SECRET_KEY", SecretKey),
				Region:    envOr("FOREST_S3_REGION", Region),
				external:  true,
			}
		} else {
			shared, sharedErr = start(DefaultKind())
		}
	}
	if sharedErr != nil {
		Unavailable(t, "s3 server: %v", sharedErr)
	}
	return shared
}

// Start starts a private server of the default kind for this test, stopped
// on cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartKind(t, DefaultKind())
}

// StartKind starts a private server of kind k for this test, stopped on
// cleanup.
func StartKind(t testing.TB, k Kind) *Server {
	t.Helper()
	s, err := start(k)
	if err != nil {
		Unavailable(t, "s3 server: %v", err)
	}
	t.Cleanup(func() {
		s.stop()
		_ = os.RemoveAll(s.dir)
	})
	return s
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Binary finds versitygw: $FOREST_VERSITYGW, .cache/bin/versitygw above the
// working directory, or $PATH.
func Binary() (string, error) { return BinaryOf(VersityGW) }

// BinaryOf finds the server of kind k: $FOREST_VERSITYGW or $FOREST_MINIO,
// .cache/bin/<kind> above the working directory, or $PATH.
func BinaryOf(k Kind) (string, error) {
	env := map[Kind]string{VersityGW: "FOREST_VERSITYGW", MinIO: "FOREST_MINIO"}[k]
	if env == "" {
		return "", fmt.Errorf("unknown S3 server kind %q (FOREST_S3_SERVER: versitygw or minio)", k)
	}
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	name := string(k)
	if dir, err := os.Getwd(); err == nil {
		for {
			p := filepath.Join(dir, ".cache", "bin", name)
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in $%s, .cache/bin or $PATH (run `make deps`)", name, env)
}

func start(k Kind) (*Server, error) {
	s, err := newServer(k)
	if err != nil {
		return nil, err
	}
	if err := s.boot(); err != nil {
		return nil, err
	}
	return s, nil
}

// newServer prepares a server: its binary, directory and free ports.
func newServer(k Kind) (*Server, error) {
	bin, err := BinaryOf(k)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "forest-s3-")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, err
	}
	// The S3 port, and MinIO's console port.
	ports, err := freeport.Ports(2)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, p := range ports {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	addr := addrs[0]
	s := &Server{
		Kind:      k,
		console:   addrs[1],
		Endpoint:  "http://" + addr,
		AccessKey: AccessKey,
		SecretKey: SecretKey,
		Region:    Region,
		addr:      addr,
		dir:       dir,
		bin:       bin,
	}
	return s, nil
}

func (s *Server) boot() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	log, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	var cmd *exec.Cmd
	switch s.Kind {
	case MinIO:
		cmd = exec.Command(s.bin, "server", "--quiet", "--address", s.addr, "--console-address", s.console,
			filepath.Join(s.dir, "data"))
		cmd.Env = append(serverEnv(), "MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
			"MINIO_REGION="+s.Region, "MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME="+s.dir)
	default:
		cmd = exec.Command(s.bin,
			"--port", s.addr, "--access", s.AccessKey, "--secret", s.SecretKey,
			"--region", s.Region, "--keep-alive", "--quiet",
			"posix", filepath.Join(s.dir, "data"))
		cmd.Env = serverEnv()
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.Kind, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			out, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
			return fmt.Errorf("%s exited during start-up: %s", s.Kind, strings.TrimSpace(string(out)))
		default:
		}
		if s.ready() {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s did not become ready within 30s", s.Kind)
}

// ready reports whether the server answers: versitygw once it listens,
// MinIO once its cluster health endpoint says it has write quorum (it
// listens, and even reports ready, before its object layer serves).
func (s *Server) ready() bool {
	c, err := net.DialTimeout("tcp", s.addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	if s.Kind != MinIO {
		return true
	}
	hc := http.Client{Timeout: time.Second}
	resp, err := hc.Get(s.Endpoint + "/minio/health/cluster")
	if err != nil {
		return false
	}
	resp.Body.Close()
	hc.CloseIdleConnections()
	return resp.StatusCode == http.StatusOK
}

// serverEnv is the test's environment without systemd's notify and
// watchdog variables, which a test may set for the service it runs.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "NOTIFY_SOCKET" && k != "WATCHDOG_USEC" && k != "WATCHDOG_PID" {
			env = append(env, kv)
		}
	}
	return env
}

func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

// Stop stops the server (kill -9); its data stay for Start.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.external {
		t.Skip("S3 server attached through FOREST_S3_ENDPOINT cannot be stopped by the test")
	}
	s.stop()
}

// Pause stops the server with SIGSTOP: it keeps its port and its
// connections but answers nothing, as a hung server does. Resume undoes it.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGSTOP)
}

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGCONT)
}

func (s *Server) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if s.external {
		t.Skip("S3 server attached through FOREST_S3_ENDPOINT cannot be paused by the test")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		t.Fatal("s3test: server not running")
	}
	if err := syscall.Kill(-s.cmd.Process.Pid, sig); err != nil {
		t.Fatalf("s3test: signal %v: %v", sig, err)
	}
	// kill returns before the kernel has stopped every thread: wait until
	// each is stopped (or running again), so that the server answers
	// nothing (or everything) from here on.
	want := sig == syscall.SIGSTOP
	deadline := time.Now().Add(10 * time.Second)
	for stopped(s.cmd.Process.Pid) != want {
		if time.Now().After(deadline) {
			t.Fatalf("s3test: %s not %s within 10s of %v", s.Kind, map[bool]string{true: "stopped", false: "running"}[want], sig)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stopped reports whether every thread of process pid is stopped (state T
// in /proc/pid/task/*/stat).
func stopped(pid int) bool {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			return false
		}
		// pid (comm) state ...: the state follows the last ')'.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// Start starts a stopped server again on the same address with the same data.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if err := s.boot(); err != nil {
		t.Fatal(err)
	}
}

// Client returns an S3 client for this server (path-style, static
// credentials).
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(s.Endpoint),
		Region:       s.Region,
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	})
}

var bucketSeq struct {
	sync.Mutex
	n int
}

// Bucket creates a fresh bucket for this test and returns its name. The
// bucket is left in place on cleanup (the server's data directory is removed
// with the server).
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	bucketSeq.Lock()
	bucketSeq.n++
	name := fmt.Sprintf("forest-test-%d-%d", os.Getpid(), bucketSeq.n)
	bucketSeq.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	return name
}

// Dir is the server's temporary directory.
func (s *Server) Dir() string { return s.dir }
