package cloud_test

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func manyFrames(t testing.TB, prefix string, n int) []frame {
	t.Helper()
	return moreFrames(t, prefix, nil, n)
}

// moreFrames appends n frames numbered after those in frames.
func moreFrames(t testing.TB, prefix string, frames []frame, n int) []frame {
	t.Helper()
	devs := []string{"dev-a", "dev-b", "dev-c"}
	for i := len(frames); n > 0; i, n = i+1, n-1 {
		frames = append(frames, makeFrame(t, prefix, devs[i%3], i, "forest-admin"))
	}
	return frames
}

// sidecars counts the frames whose sidecar (written last) is stored.
func sidecars(got map[string]int64) int {
	n := 0
	for k := range got {
		if strings.HasSuffix(k, ".json") {
			n++
		}
	}
	return n
}

// TestKill9 kills the consumer process with SIGKILL at random points, six
// times, while it works through a backlog of at least 400 messages. After
// each kill every message is stored or still in the queue; after a final
// run every message is in S3 exactly once with the right checksum and
// nothing is dead-lettered.
func TestKill9(t *testing.T) {
	t.Parallel() // tests with goleak checks run serially, before these
	if testing.Short() {
		t.Skip("-short")
	}
	e := newEnv(t, nil)
	e.declare(t)
	frames := manyFrames(t, e.cfg.S3.Prefix, 1000)
	e.publishFrames(t, frames)
	cfgPath := writeFile(t, "cloud.yaml", e.yaml)
	logPath := filepath.Join(t.TempDir(), "child.log")
	for round := range 6 {
		// Keep a backlog however fast this machine drains it, so that
		// every kill lands while there is work.
		if d := e.queueDepth(t, e.cfg.AMQP.Queue); d < 400 {
			n := len(frames)
			frames = moreFrames(t, e.cfg.S3.Prefix, frames, 600)
			e.publishFrames(t, frames[n:])
		}
		log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+cfgPath)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill it while it works: once it has stored 1 to 100 frames of
		// its own, then after a random further 0-50 ms.
		before := sidecars(e.keys(t))
		target := before + 1 + rand.IntN(100)
		waitFor(t, 30*time.Second, "the child storing frames", func() bool { return sidecars(e.keys(t)) >= target })
		time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
		got, depth := noLoss(t, e, len(frames))
		t.Logf("round %d: killed with %d frames stored (+%d), %d in the queue", round, got, got-before, depth)
		if depth == 0 {
			t.Fatalf("round %d: the queue was empty at the kill; the test needs more messages", round)
		}
	}
	// A SIGTERM stops the consumer cleanly: exit status 0 within the
	// shutdown timeout, and again nothing lost.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+cfgPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Errorf("no exit within 20s of SIGTERM")
		<-done
	}
	noLoss(t, e, len(frames))
	r := e.start(t, nil)
	waitFor(t, 60*time.Second, "backlog cleared", func() bool {
		return sidecars(e.keys(t)) == len(frames) && e.queueDepth(t, e.cfg.AMQP.Queue) == 0 &&
			counter(r.reg, "forest_cloud_inflight_messages") == 0
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.verifyExactlyOnce(t, frames)
	if d := e.queueDepth(t, e.cfg.AMQP.DeadLetterQueue); d != 0 {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("%d dead letters; child log:\n%s", d, b)
	}
}

// TestReplicas runs three consumers on one queue with some messages
// published twice: every frame is stored once, every object written once,
// and the redeliveries are suppressed duplicates.
func TestReplicas(t *testing.T) {
	e := newEnv(t, nil)
	noLeaks(t)
	e.declare(t)
	frames := manyFrames(t, e.cfg.S3.Prefix, 600)
	var rs []*running
	for range 3 {
		rs = append(rs, e.start(t, nil))
	}
	e.publishFrames(t, frames)
	e.publishFrames(t, frames[:60])
	sum := func(name string, labels ...string) float64 {
		var s float64
		for _, r := range rs {
			s += counter(r.reg, name, labels...)
		}
		return s
	}
	waitFor(t, 60*time.Second, "all handled", func() bool { return sum("forest_cloud_messages_total") >= 660 })
	for i, r := range rs {
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
		if n := counter(r.reg, "forest_cloud_messages_total"); n == 0 {
			t.Errorf("replica %d handled nothing", i)
		}
	}
	want := len(expectedKeys(t, e.cfg.S3.Prefix, frames))
	if n := sum("forest_cloud_objects_stored_total"); n != float64(want) {
		t.Errorf("%v objects written, want %d (each exactly once)", n, want)
	}
	if n := sum("forest_cloud_messages_total", "result", "duplicate"); n != 60 {
		t.Errorf("%v duplicate messages, want 60", n)
	}
	if n := sum("forest_cloud_dead_letters_total"); n != 0 {
		t.Errorf("%v dead letters", n)
	}
	e.verifyExactlyOnce(t, frames)
}

// noLoss checks that every one of n frames is stored (its sidecar, written
// last, exists) or still in the queue. The broker returns a closed
// connection's unacknowledged messages to the queue asynchronously, so it
// is allowed a moment.
func noLoss(t *testing.T, e *env, n int) (stored, queued int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		stored, queued = sidecars(e.keys(t)), e.queueDepth(t, e.cfg.AMQP.Queue)
		if stored+queued >= n {
			return stored, queued
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d stored + %d queued < %d: messages lost", stored, queued, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
