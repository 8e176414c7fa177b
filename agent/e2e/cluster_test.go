package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/rabbittest"
)

// logLine is what the tests read from the JSON logs of the stack's
// processes.
type logLine struct {
	Time   time.Time `json:"time"`
	Msg    string    `json:"msg"`
	URL    string    `json:"url"`
	Waited float64   `json:"waited_seconds"`
	N      int       `json:"n"`
}

// readLog parses a process's JSON log (lines that are not JSON, such as
// the stack's start markers, are skipped).
func readLog(t *testing.T, path string) []logLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []logLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && !l.Time.IsZero() {
			out = append(out, l)
		}
	}
	return out
}

// connectedAt returns which node (index into the stack's nodes) a process
// was connected to at time at, from its "connected" log lines; -1 if none.
// node maps a logged URL's host:port to a node.
func connectedAt(lines []logLine, msg string, at time.Time, node func(hostport string) int) int {
	n := -1
	for _, l := range lines {
		if l.Time.After(at) {
			break
		}
		if l.Msg == msg {
			if u, err := url.Parse(l.URL); err == nil {
				n = node(u.Host)
			}
		}
	}
	return n
}

// TestClusterFailover: two agents send a steady stream of frames (two a
// second each) through a 3-node RabbitMQ cluster to forest-cloud, and the
// frames queue's leader is killed with SIGKILL, left down for 10 s and
// restarted; once its member is back in the queue the node that leads it
// now is killed and restarted the same way. Every frame is stored exactly
// once, and the queues end empty. The test reports, for each kill, the
// longest time a publisher waited for the broker: the agents' drain logs
// every wait of a second or more and every wait that ends failed attempts
// (from the first attempt to the confirms; forest_agent_publish_wait_seconds).
func TestClusterFailover(t *testing.T) {
	s := newClusterStack(t, 3, []AgentOptions{{Device: "mast-a"}, {Device: "mast-b"}}, "")
	frames, err := LoadFrames(s.Root, 256)
	if err != nil {
		t.Fatal(err)
	}
	// The feeder: two frames a second per agent until stopped.
	type fedFrame struct{ device, name string }
	var fedMu sync.Mutex
	fed := map[string]fedFrame{}
	stopFeed := make(chan struct{})
	feedDone := make(chan error, 1)
	go func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopFeed:
				feedDone <- nil
				return
			case <-tick.C:
			}
			a := s.Agents[i%2]
			b, err := frames.Frame(i)
			if err != nil {
				feedDone <- err
				return
			}
			name := fmt.Sprintf("frame-%06d.jpg", i)
			sha, err := Drop(a.Incoming, name, b)
			if err != nil {
				feedDone <- err
				return
			}
			fedMu.Lock()
			fed[sha] = fedFrame{a.Device, name}
			fedMu.Unlock()
		}
	}()

	const queue = "forest.cloud.frames"
	type kill struct {
		node     *rabbittest.Broker
		at, back time.Time
	}
	var kills []kill
	killRestart := func(victim *rabbittest.Broker) {
		k := kill{node: victim, at: time.Now()}
		t.Logf("killing %s, which leads %s", victim.Name(), queue)
		victim.Kill(t)
		time.Sleep(10 * time.Second)
		victim.Start(t)
		if err := s.Cluster.AwaitMembersOnline("/", queue, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		k.back = time.Now()
		kills = append(kills, k)
		t.Logf("%s back in %s after %s", victim.Name(), queue, k.back.Sub(k.at).Round(time.Millisecond))
	}
	time.Sleep(15 * time.Second)
	first := s.Cluster.Leader(t, "/", queue)
	killRestart(first)
	time.Sleep(10 * time.Second)
	second := s.Cluster.Leader(t, "/", queue)
	if second == first {
		t.Fatalf("%s leads %s again after its restart", first.Name(), queue)
	}
	killRestart(second)
	time.Sleep(10 * time.Second)
	close(stopFeed)
	if err := <-feedDone; err != nil {
		t.Fatal(err)
	}
	if !waitDrained(t, s, 3*time.Minute) {
		t.Fatal("the chain did not drain within 3 minutes")
	}
	for _, a := range s.Agents {
		a.Stop(20 * time.Second)
	}
	s.Cloud.Stop(20 * time.Second)

	// Every frame stored once.
	stored, err := StoredFrames(context.Background(), s.S3.Client(), s.Bucket, "frames/")
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, st := range stored {
		for _, p := range st.Problems {
			t.Errorf("%s: %s", st.Sidecar, p)
		}
		count[st.ImageSHA256]++
	}
	for sha, f := range fed {
		if n := count[sha]; n != 1 {
			t.Errorf("frame %s of %s stored %d times", f.name, f.device, n)
		}
	}
	if len(stored) != len(fed) {
		t.Errorf("%d frames stored, %d captured", len(stored), len(fed))
	}
	if q := queueDepths(t, s); q[queue] != 0 || q["forest.cloud.frames.dlq"] != 0 {
		t.Errorf("queues not empty: %v", q)
	}

	// Who was on the killed nodes, and how long the publishers waited.
	nodeOfPort := func(hostport string) int {
		for i, b := range s.Cluster.Nodes {
			if strings.HasSuffix(hostport, fmt.Sprintf(":%d", b.Port)) {
				return i
			}
		}
		return -1
	}
	cloudLog := readLog(t, s.Cloud.Log)
	agentLogs := make([][]logLine, len(s.Agents))
	for i, a := range s.Agents {
		agentLogs[i] = readLog(t, a.Log)
	}
	var report []string
	longest := 0.0
	for i, k := range kills {
		until := time.Now()
		if i+1 < len(kills) {
			until = kills[i+1].at
		}
		var on []string
		victim := -1
		for j, b := range s.Cluster.Nodes {
			if b == k.node {
				victim = j
			}
		}
		if connectedAt(cloudLog, "connected to the broker", k.at, nodeOfPort) == victim {
			on = append(on, "forest-cloud")
		}
		waited := 0.0
		for j, a := range s.Agents {
			if connectedAt(agentLogs[j], "connected", k.at, a.NodeOf) == victim {
				on = append(on, a.Device)
			}
			for _, l := range agentLogs[j] {
				if l.Msg == "frames waited for the broker" && l.Time.After(k.at) && l.Time.Before(until) {
					waited = max(waited, l.Waited)
				}
			}
		}
		longest = max(longest, waited)
		w := fmt.Sprintf("%.2fs", waited)
		if waited == 0 {
			w = "under 1s" // the drain logs waits from a second on
		}
		report = append(report, fmt.Sprintf("kill %d (%s, queue leader; connected to it: %v): longest publisher wait %s",
			i+1, k.node.Name(), on, w))
	}
	sort.Strings(report)
	line := fmt.Sprintf("FAILOVER %s: captured=%d stored=%d nodes_killed=%d longest_publisher_wait=%.2fs; %s",
		t.Name(), len(fed), len(stored), len(kills), longest, strings.Join(report, "; "))
	t.Log(line)
	reportTally(t, line)
}
