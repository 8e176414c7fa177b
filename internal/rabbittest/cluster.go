package rabbittest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Cluster is a RabbitMQ cluster of nodes started by the harness, all on
// 127.0.0.1: each node has its own name (forest-<amqp port>@localhost),
// AMQP port, distribution port and data directory; the nodes find each other
// through one private epmd and share a private Erlang cookie. Every node
// may be stopped, killed and started again on its own (Broker's Kill,
// Stop, Start), with its data.
type Cluster struct {
	// Nodes are the cluster's nodes; Nodes[0] formed it.
	Nodes []*Broker

	epmd *exec.Cmd
}

// StartCluster starts a cluster of n nodes for this test and stops it on
// cleanup. Queues declared afterwards get members on every node (a quorum
// queue's initial group is the cluster as it is at declaration).
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if os.Getenv("FOREST_AMQP_URL") != "" && os.Getenv("CI") == "" {
		t.Skip("FOREST_AMQP_URL is set: this test needs brokers it can kill")
	}
	c, err := retryPortClash(func() (*Cluster, error) { return startCluster(n) })
	if err != nil {
		Unavailable(t, "rabbitmq cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, b := range c.Nodes {
				t.Logf("node %s:\n%s", b.node, b.LogTail(40))
			}
		}
		c.kill()
	})
	return c
}

// LaunchCluster starts a cluster outside a test, for tools such as the
// demo. The caller must Close it.
func LaunchCluster(n int) (*Cluster, error) {
	return retryPortClash(func() (*Cluster, error) { return startCluster(n) })
}

func startCluster(n int) (*Cluster, error) {
	if n < 1 {
		return nil, errors.New("a cluster needs at least one node")
	}
	key := make([]byte, 16)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	cookie := "FOREST" + strings.ToUpper(hex.EncodeToString(key))
	c := &Cluster{}
	epmd, port, err := startEpmd()
	if err != nil {
		return nil, err
	}
	c.epmd = epmd
	for i := range n {
		peer := ""
		if i > 0 {
			peer = c.Nodes[0].node
		}
		b, err := newNode(port, cookie, peer)
		if err != nil {
			c.kill()
			return nil, err
		}
		c.Nodes = append(c.Nodes, b)
	}
	// The first node forms the cluster; the others boot together and
	// join it.
	if err := c.Nodes[0].boot(); err != nil {
		c.kill()
		return nil, fmt.Errorf("node 1: %w", err)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Go(func() {
			if err := c.Nodes[i].boot(); err != nil {
				errs[i] = fmt.Errorf("node %d: %w", i+1, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.kill()
		return nil, err
	}
	if err := c.awaitRunning(n, 60*time.Second); err != nil {
		c.kill()
		return nil, err
	}
	return c, nil
}

// awaitRunning waits until every node reports n running cluster members.
func (c *Cluster) awaitRunning(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, b := range c.Nodes {
		for {
			running, err := b.runningNodes()
			if err == nil && len(running) == n {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("node %s sees running nodes %v (err %v), want %d", b.node, running, err, n)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	return nil
}

// runningNodes asks the node which cluster members are running.
func (b *Broker) runningNodes() ([]string, error) {
	out, err := b.ctl(20*time.Second, "cluster_status", "--formatter", "json")
	if err != nil {
		return nil, err
	}
	var st struct {
		Running []string `json:"running_nodes"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("cluster_status: %w: %s", err, lastLines([]byte(out), 5))
	}
	return st.Running, nil
}

// Name is the node's Erlang node name (forest-<port>@localhost).
func (b *Broker) Name() string { return b.node }

// Running reports whether the harness has the node running.
func (b *Broker) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cmd != nil
}

// URLs returns an AMQP URL of every node for the admin user and vhost
// (for "/", the default vhost), in node order.
func (c *Cluster) URLs(vhost string) []string {
	return c.URLsFor(AdminUser, AdminPassword, vhost)
}

// URLsFor returns an AMQP URL of every node for a user and vhost.
func (c *Cluster) URLsFor(user, password, vhost string) []string {
	var urls []string
	for _, b := range c.Nodes {
		urls = append(urls, b.URLFor(user, password, vhost))
	}
	return urls
}

// Node returns the node with the given Erlang name, or nil.
func (c *Cluster) Node(name string) *Broker {
	for _, b := range c.Nodes {
		if b.node == name {
			return b
		}
	}
	return nil
}

// CtlErr runs rabbitmqctl on the first running node that answers. Cluster
// commands (users, vhosts, permissions, policies, queues) act on the whole
// cluster whichever node runs them.
func (c *Cluster) CtlErr(args ...string) (string, error) {
	var errs []error
	for _, b := range c.Nodes {
		if !b.Running() {
			continue
		}
		out, err := b.ctl(60*time.Second, args...)
		if err == nil {
			return out, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", b.node, err))
	}
	if len(errs) == 0 {
		return "", errors.New("no node of the cluster is running")
	}
	return "", errors.Join(errs...)
}

// Ctl is CtlErr that fails the test on error.
func (c *Cluster) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.CtlErr(args...)
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// QueueMembers returns the node leading a quorum queue in vhost and the
// nodes holding a member of it.
func (c *Cluster) QueueMembers(vhost, queue string) (leader *Broker, members []*Broker, err error) {
	out, err := c.CtlErr("list_queues", "-p", vhost, "name", "leader", "members", "--formatter", "json")
	if err != nil {
		return nil, nil, err
	}
	var qs []struct {
		Name    string   `json:"name"`
		Leader  string   `json:"leader"`
		Members nodeList `json:"members"`
	}
	if err := json.Unmarshal([]byte(out), &qs); err != nil {
		return nil, nil, fmt.Errorf("list_queues: %w: %s", err, lastLines([]byte(out), 5))
	}
	for _, q := range qs {
		if q.Name != queue {
			continue
		}
		for _, m := range q.Members {
			if b := c.Node(m); b != nil {
				members = append(members, b)
			}
		}
		leader = c.Node(q.Leader)
		if leader == nil {
			return nil, members, fmt.Errorf("queue %s has no leader on a known node (leader %q)", queue, q.Leader)
		}
		return leader, members, nil
	}
	return nil, nil, fmt.Errorf("queue %s not found in vhost %s", queue, vhost)
}

// Leader returns the node leading a quorum queue, failing the test if
// there is none.
func (c *Cluster) Leader(t testing.TB, vhost, queue string) *Broker {
	t.Helper()
	l, _, err := c.QueueMembers(vhost, queue)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// nodeList is a list of node names in rabbitmqctl's JSON output: for a
// quorum queue a list, for a classic queue (which has no members) the
// empty string.
type nodeList []string

func (l *nodeList) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		if s != "" {
			*l = nodeList{s}
		} else {
			*l = nil
		}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(l))
}

// AwaitMembersOnline waits until every node of the cluster runs and holds
// an online member of the quorum queue, so that the next node may be
// killed without losing the queue's majority.
func (c *Cluster) AwaitMembersOnline(vhost, queue string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := c.CtlErr("list_queues", "-p", vhost, "name", "online", "--formatter", "json")
		var qs []struct {
			Name   string   `json:"name"`
			Online nodeList `json:"online"`
		}
		if err == nil {
			err = json.Unmarshal([]byte(out), &qs)
		}
		if err == nil {
			err = fmt.Errorf("queue %s not found", queue)
			for _, q := range qs {
				if q.Name != queue {
					continue
				}
				err = nil
				for _, b := range c.Nodes {
					if !slices.Contains(q.Online, b.node) {
						err = fmt.Errorf("queue %s: member on %s not online (online: %v)", queue, b.node, q.Online)
					}
				}
			}
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// Close stops every node gracefully and removes their data.
func (c *Cluster) Close() error {
	var errs []error
	// In reverse, so that the first node, which formed the cluster, stops
	// last and can be the first to start (unused here, but the habit is
	// RabbitMQ's advice).
	for _, b := range slices.Backward(c.Nodes) {
		errs = append(errs, b.stopNode(syscall.SIGTERM), os.RemoveAll(b.dir))
	}
	c.stopEpmd()
	return errors.Join(errs...)
}

// kill kills every node and removes their data.
func (c *Cluster) kill() {
	for _, b := range c.Nodes {
		_ = b.stopNode(syscall.SIGKILL)
		_ = os.RemoveAll(b.dir)
	}
	c.stopEpmd()
}

func (c *Cluster) stopEpmd() {
	if c.epmd != nil && c.epmd.Process != nil {
		_ = syscall.Kill(-c.epmd.Process.Pid, syscall.SIGKILL)
		_ = c.epmd.Wait()
		c.epmd = nil
	}
}

// Listeners returns the address of every TCP socket the cluster's
// processes (the nodes' VMs and the epmd) listen on, as host:port, so a
// test can check that none is reachable from outside the machine.
func (c *Cluster) Listeners() ([]string, error) {
	var pids []int
	if c.epmd != nil && c.epmd.Process != nil {
		pids = append(pids, c.epmd.Process.Pid)
	}
	for _, b := range c.Nodes {
		b.mu.Lock()
		if b.cmd != nil {
			pids = append(pids, b.cmd.Process.Pid)
		}
		b.mu.Unlock()
	}
	inodes := map[string]bool{}
	for _, pid := range pids {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			return nil, err
		}
		for _, fd := range fds {
			l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if err == nil && strings.HasPrefix(l, "socket:[") {
				inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
			}
		}
	}
	var addrs []string
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		raw, err := os.ReadFile(table)
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(raw), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			addrs = append(addrs, procAddr(f[1]))
		}
	}
	return addrs, nil
}

// procAddr turns /proc/net/tcp's hex "0100007F:1F90" into "127.0.0.1:8080".
func procAddr(s string) string {
	host, port, _ := strings.Cut(s, ":")
	b, err := hex.DecodeString(host)
	if err != nil {
		return s
	}
	// The kernel prints each 32-bit word of the address in host (little
	// endian) order.
	for i := 0; i+4 <= len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	p, _ := strconv.ParseUint(port, 16, 16)
	return net.JoinHostPort(net.IP(b).String(), strconv.Itoa(int(p)))
}

// LogTail returns the last n lines of the node's log (warnings and errors)
// and of its start-up output, for a test to show when it fails.
func (b *Broker) LogTail(n int) string {
	var out []string
	logs, _ := filepath.Glob(filepath.Join(b.dir, "log", "*.log"))
	for _, p := range append(logs, filepath.Join(b.dir, "server.out")) {
		raw, err := os.ReadFile(p)
		if err != nil || len(raw) == 0 {
			continue
		}
		out = append(out, "--- "+filepath.Base(p)+"\n"+lastLines(raw, n))
	}
	return strings.Join(out, "\n")
}
