package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forestwatch/forest/internal/rabbittest"
	"github.com/forestwatch/forest/internal/s3test"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	rabbittest.StopShared()
	s3test.StopShared()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds forest-agent and forest-cloud once per test binary.
func binaries(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "forest-e2e-bin-")
		if binErr == nil {
			binErr = Build(binDir)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// newStack starts a private broker and S3 server (the tests restart them),
// forest-cloud and the agents, and waits until they are up.
func newStack(t *testing.T, agents []AgentOptions, cloudExtra string) *Stack {
	t.Helper()
	return startStack(t, 1, agents, cloudExtra)
}

// newClusterStack is newStack on a RabbitMQ cluster of n nodes: forest-cloud
// and every agent are given the address of each node.
func newClusterStack(t *testing.T, n int, agents []AgentOptions, cloudExtra string) *Stack {
	t.Helper()
	return startStack(t, n, agents, cloudExtra)
}

func startStack(t *testing.T, nodes int, agents []AgentOptions, cloudExtra string) *Stack {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; not in -short")
	}
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "segment", "models", "forest-unet-v1.onnx")); err != nil {
		t.Fatalf("default model missing: %v", err)
	}
	bin := binaries(t)
	s := &Stack{Dir: t.TempDir(), Bin: bin, Root: root}
	if nodes == 1 {
		s.Broker = rabbittest.Start(t)
	} else {
		s.Cluster = rabbittest.StartCluster(t, nodes)
	}
	s.S3 = s3test.Start(t)
	s.Bucket = s.S3.Bucket(t)
	if err := s.Setup(agents, cloudExtra); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			dumpLogs(t, s)
		}
	})
	if err := s.Cloud.Start(); err != nil {
		t.Fatal(err)
	}
	if err := WaitHTTP("http://"+s.Cloud.HTTP+"/readyz", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, a := range s.Agents {
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range s.Agents {
		if err := WaitHTTP("http://"+a.HTTP+"/healthz", 60*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func dumpLogs(t *testing.T, s *Stack) {
	logs := []string{s.Cloud.Log}
	for _, a := range s.Agents {
		logs = append(logs, a.Log)
	}
	for _, p := range logs {
		b, _ := os.ReadFile(p)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("--- last lines of %s\n%s", p, strings.Join(lines, "\n"))
	}
}

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil && v > 0 {
		return v
	}
	return def
}

// reportTally appends a run's tally to the file FOREST_E2E_TALLY names, so
// that `make test` can print it although go test shows no log of a passing
// package.
func reportTally(t *testing.T, tally string) {
	path := os.Getenv("FOREST_E2E_TALLY")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		_, err = fmt.Fprintln(f, tally)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Errorf("FOREST_E2E_TALLY: %v", err)
	}
}

// queueDepths returns messages per queue on the stack's broker.
func queueDepths(t *testing.T, s *Stack) map[string]int {
	t.Helper()
	out, err := s.Ctl("list_queues", "name", "messages", "--no-table-headers")
	if err != nil {
		t.Fatal(err)
	}
	d := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			n, _ := strconv.Atoi(f[1])
			d[f[0]] = n
		}
	}
	return d
}

type event struct {
	at   time.Duration
	name string
	do   func()
}

// TestChainUnderFaults is the product's promise, counted: while two agents
// capture a stream of frames, agents are killed, links cut and stalled,
// nodes of the 3-node RabbitMQ cluster killed with SIGKILL (the frames
// queue's leader among them) and restarted, the consumer killed, S3 stopped
// and a spool pushed against its byte limit; afterwards every frame not
// evicted by a counted policy is in S3 exactly once, intact.
//
// FOREST_E2E_FRAMES sets the number of frames (default 500) and
// FOREST_E2E_SECONDS the capture period (default 200); `make soak` raises
// both and the schedule of faults repeats over the period.
func TestChainUnderFaults(t *testing.T) {
	total := envInt("FOREST_E2E_FRAMES", 500)
	period := time.Duration(envInt("FOREST_E2E_SECONDS", 200)) * time.Second
	s := newClusterStack(t, 3, []AgentOptions{
		{Device: "mast-a"},
		// mast-b's spool holds about 20 frames (~12 KB each); its link is
		// cut for 40 s while it captures about 50.
		{Device: "mast-b", SpoolMaxBytes: 256 << 10},
	}, "")
	frames, err := LoadFrames(s.Root, 256)
	if err != nil {
		t.Fatal(err)
	}

	// The feeder drops frames into the agents' directories at a steady rate.
	type fedFrame struct{ device, name string }
	var fedMu sync.Mutex
	fed := map[string]fedFrame{} // image SHA-256 -> frame
	feedErr := make(chan error, 1)
	go func() {
		every := period / time.Duration(total)
		start := time.Now()
		for i := range total {
			a := s.Agents[i%len(s.Agents)]
			b, err := frames.Frame(i)
			if err != nil {
				feedErr <- err
				return
			}
			name := fmt.Sprintf("frame-%06d.jpg", i)
			sha, err := Drop(a.Incoming, name, b)
			if err != nil {
				feedErr <- err
				return
			}
			fedMu.Lock()
			fed[sha] = fedFrame{a.Device, name}
			fedMu.Unlock()
			time.Sleep(time.Until(start.Add(time.Duration(i+1) * every)))
		}
		feedErr <- nil
	}()

	bAgent := s.Agents[1]
	var counts = map[string]int{}
	victims := map[string]int{} // nodes killed: "leader" or "other"
	// The consumer's counter of suppressed duplicates, summed over its
	// lives: scraped before each kill and at the end.
	var dupsSuppressed float64
	scrapeDups := func() {
		if v, err := Metric(context.Background(), s.Cloud.HTTP, "forest_cloud_duplicates_suppressed_total"); err == nil {
			dupsSuppressed += v
		}
	}
	// A kill counts only if it hit a running process.
	killed := map[string]int{}
	kill := func(p *Proc, what string) {
		if _, alive := p.Running(); alive {
			killed[what]++
		} else {
			t.Logf("%s was not running when it was to be killed", p.Name)
		}
		p.Kill()
	}
	restartAgent := func(ag *Agent) func() {
		return func() {
			kill(ag.Proc, "agent")
			time.Sleep(time.Second)
			if err := ag.Start(); err != nil {
				t.Error(err)
			}
		}
	}
	var events []event
	// One cycle of faults per 200 s; a soak repeats it.
	for c := time.Duration(0); c < period; c += 200 * time.Second {
		for i := range 10 {
			ag := s.Agents[i%2]
			events = append(events, event{c + time.Duration(10+20*i)*time.Second, "agent kill -9 " + ag.Device, restartAgent(ag)})
			px := s.Agents[(i+1)%2]
			switch i % 3 {
			case 0:
				events = append(events, event{c + time.Duration(15+20*i)*time.Second, "link cut", px.Cut})
			case 1:
				events = append(events, event{c + time.Duration(15+20*i)*time.Second, "link stall", func() { px.Stall(true) }})
				events = append(events, event{c + time.Duration(20+20*i)*time.Second, "", func() { px.Stall(false) }})
			case 2:
				events = append(events, event{c + time.Duration(15+20*i)*time.Second, "link half-open", px.HalfOpen})
			}
		}
		// A node killed, down for 10 s, restarted; the next kill is of
		// another node, once the first is back in the queue.
		for _, at := range []time.Duration{60, 140} {
			events = append(events, event{c + at*time.Second, "broker node kill -9", func() { killNode(t, s, victims) }})
		}
		for _, at := range []time.Duration{45, 105, 165} {
			events = append(events, event{c + at*time.Second, "consumer kill -9", func() {
				scrapeDups()
				kill(s.Cloud.Proc, "consumer")
				time.Sleep(2 * time.Second)
				if err := s.Cloud.Start(); err != nil {
					t.Error(err)
				}
			}})
		}
		events = append(events,
			event{c + 80*time.Second, "s3 stopped 30s", func() { s.S3.Stop(t) }},
			event{c + 110*time.Second, "", func() { s.S3.Start(t) }},
			event{c + 120*time.Second, "spool pressure (mast-b offline 40s)", func() { bAgent.Refuse(true); bAgent.Cut() }},
			event{c + 160*time.Second, "", func() { bAgent.Refuse(false) }},
		)
	}
	sort.SliceStable(events, func(i, j int) bool { return events[i].at < events[j].at })
	// forest-cloud exits when its start-up check fails (S3 or the broker
	// down); its unit restarts it, and so does this.
	superviseCtx, stopSupervising := context.WithCancel(context.Background())
	defer stopSupervising()
	supervised := make(chan struct{})
	go func() {
		defer close(supervised)
		s.Cloud.Supervise(superviseCtx, time.Second, func(err error) { t.Error(err) })
	}()
	start := time.Now()
	for _, e := range events {
		time.Sleep(time.Until(start.Add(e.at)))
		if e.name != "" {
			t.Logf("%6.1fs %s", time.Since(start).Seconds(), e.name)
			counts[strings.Fields(e.name)[0]+" "+strings.Fields(e.name)[1]]++
		}
		e.do()
	}
	if err := <-feedErr; err != nil {
		t.Fatal(err)
	}
	t.Logf("faults injected: %v; processes killed while running: %v", counts, killed)
	cycles := int((period + 200*time.Second - 1) / (200 * time.Second))
	if killed["agent"] < 10*cycles || killed["consumer"] < 3*cycles {
		t.Errorf("kills that hit a running process: %v, want at least %d agent and %d consumer", killed, 10*cycles, 3*cycles)
	}

	// Drain: the spools and the queue empty, S3 catches up.
	drained := waitDrained(t, s, 5*time.Minute)
	// Evictions as each agent reports them on /metrics (the spool keeps
	// the counts across restarts), compared below with the spool's own.
	evictedMetric := map[string]float64{}
	for _, ag := range s.Agents {
		v, err := Metric(context.Background(), ag.HTTP, "forest_agent_frames_evicted_total")
		if err != nil {
			t.Errorf("%s: %v", ag.Device, err)
		}
		evictedMetric[ag.Device] = v
		ag.Stop(20 * time.Second)
	}
	stopSupervising()
	<-supervised
	scrapeDups()
	s.Cloud.Stop(20 * time.Second)
	if !drained {
		t.Error("the chain did not drain within 5 minutes")
	}

	// Tally.
	ctx := context.Background()
	stored, err := StoredFrames(ctx, s.S3.Client(), s.Bucket, "frames/")
	if err != nil {
		t.Fatal(err)
	}
	bySHA := map[string][]Stored{}
	for _, st := range stored {
		for _, p := range st.Problems {
			t.Errorf("%s: %s", st.Sidecar, p)
		}
		bySHA[st.ImageSHA256] = append(bySHA[st.ImageSHA256], st)
	}
	missing := map[string]int{}
	dups := 0
	for sha, f := range fed {
		switch n := len(bySHA[sha]); {
		case n == 0:
			missing[f.device]++
		case n > 1:
			dups++
			t.Errorf("frame %s of %s stored %d times: %v", f.name, f.device, n, bySHA[sha])
		case bySHA[sha][0].Device != f.device:
			t.Errorf("frame %s captured by %s stored as device %s", f.name, f.device, bySHA[sha][0].Device)
		case bySHA[sha][0].Source != "dir:"+f.name:
			t.Errorf("frame %s of %s stored with source %q", f.name, f.device, bySHA[sha][0].Source)
		}
	}
	for sha, sts := range bySHA {
		if _, ok := fed[sha]; !ok {
			t.Errorf("stored frame %s is not one that was captured", sts[0].FrameID)
		}
	}
	evicted := map[string]map[string]uint64{}
	for _, ag := range s.Agents {
		evicted[ag.Device] = spoolEvictions(t, s, ag)
		var n uint64
		for _, v := range evicted[ag.Device] {
			n += v
		}
		if float64(n) != evictedMetric[ag.Device] {
			t.Errorf("%s: the spool counts %d evictions, the agent's metrics %v", ag.Device, n, evictedMetric[ag.Device])
		}
		if int(n) != missing[ag.Device] {
			t.Errorf("%s: %d frames missing from S3 but %d evicted (%v): unexplained difference",
				ag.Device, missing[ag.Device], n, evicted[ag.Device])
		}
		left := leftovers(t, ag)
		if len(left) > 0 {
			t.Errorf("%s: files not spooled: %v", ag.Device, left)
		}
	}
	if evicted["mast-b"]["max_bytes"] == 0 {
		t.Error("the spool byte limit was never reached: the pressure phase proved nothing")
	}
	q := queueDepths(t, s)
	if q["forest.cloud.frames"] != 0 || q["forest.cloud.frames.dlq"] != 0 {
		t.Errorf("queues not empty: %v", q)
	}
	if victims["leader"] < 1 {
		t.Errorf("nodes killed %v: the frames queue's leader was never among them", victims)
	}
	tally := fmt.Sprintf("TALLY %s: captured=%d stored=%d missing=%v evicted=%v duplicates_stored=%d duplicates_suppressed>=%.0f dead_lettered=%d faults=%v nodes_killed=%v killed_while_running=%v agent_starts=[%d %d] consumer_starts=%d consumer_exits_on_its_own=%d elapsed=%s",
		t.Name(), len(fed), len(stored), missing, evicted, dups, dupsSuppressed, q["forest.cloud.frames.dlq"],
		counts, victims, killed, s.Agents[0].Starts(), s.Agents[1].Starts(), s.Cloud.Starts(), s.Cloud.Exits(), time.Since(start).Round(time.Second))
	t.Log(tally)
	reportTally(t, tally)
	checkNoSecrets(t, s)
}

// killNode kills a node of the stack's cluster with SIGKILL, leaves it
// down for 10 s, starts it again and waits until the frames queue has a
// member online on every node, so that the next kill cannot take the
// queue's majority. It kills the frames queue's leader, unless the last
// node killed leads it again; then another node. victims counts "leader"
// and "other".
func killNode(t *testing.T, s *Stack, victims map[string]int) {
	t.Helper()
	const queue = "forest.cloud.frames"
	leader, _, err := s.Cluster.QueueMembers("/", queue)
	if err != nil {
		t.Errorf("find the leader of %s: %v", queue, err)
		return
	}
	victim, kind := leader, "leader"
	if leader.Name() == s.lastKilled {
		for _, b := range s.Cluster.Nodes {
			if b != leader {
				victim, kind = b, "other"
				break
			}
		}
	}
	s.lastKilled = victim.Name()
	victims[kind]++
	t.Logf("killing node %s (%s of %s)", victim.Name(), kind, queue)
	victim.Kill(t)
	time.Sleep(10 * time.Second)
	victim.Start(t)
	if err := s.Cluster.AwaitMembersOnline("/", queue, 2*time.Minute); err != nil {
		t.Errorf("after restarting %s: %v", victim.Name(), err)
	}
}

// TestChainHappyPath sends a few frames through the whole chain with no
// fault: the quick check that the parts fit together.
func TestChainHappyPath(t *testing.T) {
	s := newStack(t, []AgentOptions{{Device: "mast-a"}}, "")
	frames, err := LoadFrames(s.Root, 256)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for i := range 20 {
		b, err := frames.Frame(i)
		if err != nil {
			t.Fatal(err)
		}
		sha, err := Drop(s.Agents[0].Incoming, fmt.Sprintf("f%03d.jpg", i), b)
		if err != nil {
			t.Fatal(err)
		}
		want[sha] = true
	}
	if !waitDrained(t, s, 2*time.Minute) {
		t.Fatal("not drained")
	}
	stored, err := StoredFrames(context.Background(), s.S3.Client(), s.Bucket, "frames/")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range stored {
		if len(st.Problems) > 0 || !want[st.ImageSHA256] {
			t.Errorf("%s: %v (captured: %v)", st.Sidecar, st.Problems, want[st.ImageSHA256])
		}
		delete(want, st.ImageSHA256)
	}
	if len(want) > 0 {
		t.Errorf("%d frames not stored", len(want))
	}
}

// waitDrained waits until both spools are empty, the queue is empty and the
// number of stored frames stops changing.
func waitDrained(t *testing.T, s *Stack, timeout time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	ctx := context.Background()
	for time.Now().Before(deadline) {
		time.Sleep(2 * time.Second)
		empty := true
		for _, a := range s.Agents {
			n, err := Metric(ctx, a.HTTP, "forest_agent_spool_frames")
			if err != nil || n != 0 {
				empty = false
			}
			pending, _ := os.ReadDir(a.Incoming)
			for _, e := range pending {
				if !e.IsDir() {
					empty = false
				}
			}
		}
		if !empty {
			continue
		}
		if q := queueDepths(t, s); q["forest.cloud.frames"] != 0 {
			continue
		}
		if n, err := Metric(ctx, s.Cloud.HTTP, "forest_cloud_inflight_messages"); err != nil || n != 0 {
			continue
		}
		return true
	}
	return false
}

// spoolEvictions reads the evictions recorded in an agent's stopped spool.
func spoolEvictions(t *testing.T, s *Stack, a *Agent) map[string]uint64 {
	t.Helper()
	out, err := exec.Command(filepath.Join(s.Bin, "forest-agent"), "spool", "stats", "--json", a.Spool).Output()
	if err != nil {
		t.Fatalf("spool stats %s: %v", a.Device, err)
	}
	var st struct {
		Frames    int               `json:"frames"`
		Evictions map[string]uint64 `json:"evictions"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("spool stats %s: %v: %s", a.Device, err, out)
	}
	if st.Frames != 0 {
		t.Errorf("%s: %d frames left in the spool", a.Device, st.Frames)
	}
	if st.Evictions == nil {
		st.Evictions = map[string]uint64{}
	}
	return st.Evictions
}

// leftovers lists files still in the agent's incoming or failed folders.
func leftovers(t *testing.T, a *Agent) []string {
	t.Helper()
	var left []string
	for _, d := range []string{a.Incoming, filepath.Join(a.Incoming, "failed")} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if !e.IsDir() {
				left = append(left, filepath.Join(filepath.Base(d), e.Name()))
			}
		}
	}
	return left
}

// checkNoSecrets fails if a password of the stack appears in a log.
func checkNoSecrets(t *testing.T, s *Stack) {
	t.Helper()
	logs := []string{s.Cloud.Log}
	for _, a := range s.Agents {
		logs = append(logs, a.Log)
	}
	for _, p := range logs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range s.Secrets() {
			if strings.Contains(string(b), secret) {
				t.Errorf("%s contains a secret", filepath.Base(p))
			}
		}
	}
}
