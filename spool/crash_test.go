package spool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The crash test re-executes the test binary as a child that writes and
// acknowledges records as fast as it can and reports on stdout every Put
// and Ack that returned nil. The parent SIGKILLs it at a random moment,
// reopens the spool and checks the durability contract.

const (
	crashChildEnv    = "SPOOL_CRASH_CHILD"
	crashMaxBytesEnv = "SPOOL_CRASH_MAX_BYTES" // bounded mode: evictions race with kills
)

// crashPayload derives a record's content from its tag so that the parent
// can verify every byte without having seen it.
func crashPayload(tag string) *Record {
	h := fnv.New64a()
	h.Write([]byte(tag))
	s := h.Sum64()
	img := make([]byte, 1+int(s%30000))
	for i := range img {
		img[i] = byte(s>>(i%8*8)) ^ byte(i)
	}
	return &Record{Priority: int(s % 3), Image: img, Mask: []byte(tag), Meta: []byte(`{"tag":"` + tag + `"}`)}
}

func crashChild(dir string) {
	maxBytes, _ := strconv.ParseInt(os.Getenv(crashMaxBytesEnv), 10, 64)
	q, err := Open(dir, Options{CompactFreeBytes: 64 << 10, MaxBytes: maxBytes})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	var outMu sync.Mutex
	emit := func(s string) {
		outMu.Lock()
		defer outMu.Unlock()
		if _, err := os.Stdout.WriteString(s); err != nil {
			os.Exit(3)
		}
	}
	emit("R\n")
	pid := os.Getpid()
	var seq atomic.Int64
	for range 3 {
		go func() {
			for {
				tag := fmt.Sprintf("%d-%d", pid, seq.Add(1))
				id, err := q.Put(context.Background(), crashPayload(tag))
				if errors.Is(err, ErrFull) {
					continue // the new record is the least valuable
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, "child put:", err)
					os.Exit(4)
				}
				emit(fmt.Sprintf("P %d %s\n", id, tag))
			}
		}()
	}
	rng := rand.New(rand.NewPCG(uint64(pid), uint64(time.Now().UnixNano())))
	for {
		if err := q.Wait(context.Background()); err != nil {
			os.Exit(5)
		}
		if maxBytes > 0 {
			time.Sleep(time.Duration(rng.IntN(8)) * time.Millisecond) // a slow uplink
		}
		rs, err := q.Next(1 + rng.IntN(16))
		if err != nil {
			fmt.Fprintln(os.Stderr, "child next:", err)
			os.Exit(6)
		}
		ids := recordIDs(rs)
		if rng.IntN(10) == 0 {
			q.Release(ids...)
			continue
		}
		var nb strings.Builder
		nb.WriteString("N")
		for _, id := range ids {
			fmt.Fprintf(&nb, " %d", id)
		}
		nb.WriteString("\n")
		emit(nb.String()) // an Ack is about to start: these may vanish
		if err := q.Ack(ids...); err != nil {
			fmt.Fprintln(os.Stderr, "child ack:", err)
			os.Exit(7)
		}
		var b strings.Builder
		b.WriteString("A")
		for _, id := range ids {
			fmt.Fprintf(&b, " %d", id)
		}
		fmt.Fprintf(&b, "\nC %d\n", q.Stats().Compactions)
		emit(b.String())
	}
}

func TestCrashKill(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	kills := 50
	if s := os.Getenv("SPOOL_CRASH_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	t.Run("unbounded", func(t *testing.T) { crashKills(t, kills, 0) })
	// MaxBytes of about 25 records with a slow drain: Puts evict.
	t.Run("bounded", func(t *testing.T) { crashKills(t, kills/2, 400<<10) })
}

func crashKills(t *testing.T, kills int, maxBytes int64) {
	dir := t.TempDir()
	gone := map[uint64]bool{}    // acknowledged Puts found missing: must be counted evictions
	putOK := map[uint64]string{} // id -> tag of every Put that returned nil
	acked := map[uint64]bool{}   // ids of every Ack that returned nil
	var lastID uint64
	var totalPuts, totalAcks, compactions int
	start := time.Now()
	for i := range kills {
		early := i%5 == 4
		d := time.Duration(rand.IntN(250)) * time.Millisecond
		if early {
			d = time.Duration(rand.IntN(40)) * time.Millisecond
		}
		lines := runAndKill(t, dir, maxBytes, early, d)
		acking := map[uint64]bool{} // ids of the Ack that started but did not report
		runCompactions := 0
		for _, l := range lines {
			f := strings.Fields(l)
			switch f[0] {
			case "P":
				id, _ := strconv.ParseUint(f[1], 10, 64)
				if id <= lastID {
					t.Fatalf("kill %d: new id %d not above last id %d of previous run", i, id, lastID)
				}
				if _, dup := putOK[id]; dup {
					t.Fatalf("kill %d: id %d returned twice", i, id)
				}
				putOK[id] = f[2]
				totalPuts++
			case "C":
				n, _ := strconv.Atoi(f[1])
				runCompactions = max(runCompactions, n)
			case "N":
				clear(acking)
				for _, s := range f[1:] {
					id, _ := strconv.ParseUint(s, 10, 64)
					acking[id] = true
				}
			case "A":
				clear(acking)
				for _, s := range f[1:] {
					id, _ := strconv.ParseUint(s, 10, 64)
					acked[id] = true
					totalAcks++
				}
			}
		}
		compactions += runCompactions
		lastID = verifyCrashState(t, i, dir, maxBytes, putOK, acked, acking, gone)
	}
	t.Logf("%d kills in %v: %d acknowledged puts, %d acknowledged acks, %d evicted, %d compactions, last id %d",
		kills, time.Since(start).Round(time.Millisecond), totalPuts, totalAcks, len(gone), compactions, lastID)
}

// runAndKill starts a child on dir, lets it run for d after it is ready
// (early: after it started), SIGKILLs it and returns the complete lines it
// wrote.
func runAndKill(t *testing.T, dir string, maxBytes int64, early bool, d time.Duration) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("%s=%d", crashMaxBytesEnv, maxBytes))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	var lines []string
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		r := bufio.NewReader(out)
		first := true
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return // a partial last line is an unreported operation
			}
			if first {
				close(ready)
				first = false
				continue
			}
			lines = append(lines, strings.TrimSuffix(l, "\n"))
		}
	}()
	if early {
		// Kill at any point from process start, also inside Open (its
		// checks, repairs, expiry and directory syncs).
		time.Sleep(d)
	} else {
		select {
		case <-ready:
		case <-readDone:
			_ = cmd.Wait()
			t.Fatalf("child exited before ready: %s", stderr.String())
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-readDone
			_ = cmd.Wait()
			t.Fatalf("child not ready: %s", stderr.String())
		}
		time.Sleep(d)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-readDone
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL: %v: %s", err, stderr.String())
	}
	return lines
}

// verifyCrashState reopens the spool after a kill and checks: every
// acknowledged Put not acknowledged by Ack is present with intact content
// (bounded: or counted as evicted), nothing acknowledged by Ack is present,
// no tag is stored twice, the remaining ids have no gap (unbounded), and
// Stats agree with the content and the bound.
func verifyCrashState(t *testing.T, kill int, dir string, maxBytes int64, putOK map[uint64]string, acked, acking, gone map[uint64]bool) uint64 {
	t.Helper()
	q, err := Open(dir, Options{CompactFreeBytes: -1})
	if err != nil {
		t.Fatalf("kill %d: reopen: %v", kill, err)
	}
	defer func() {
		if err := q.Close(); err != nil {
			t.Fatalf("kill %d: close: %v", kill, err)
		}
	}()
	st := q.Stats()
	rs, err := q.Next(st.Frames + 1)
	if err != nil {
		t.Fatalf("kill %d: Next: %v", kill, err)
	}
	if st2 := q.Stats(); st2.QuarantinedTotal != 0 || st2.Quarantined != 0 || st.CorruptRenames != 0 {
		t.Fatalf("kill %d: damage after a clean kill: %+v", kill, st2)
	}
	if len(rs) != st.Frames {
		t.Fatalf("kill %d: Stats.Frames %d, Next returned %d", kill, st.Frames, len(rs))
	}
	var bytes int64
	tags := map[string]uint64{}
	ids := make([]uint64, 0, len(rs))
	for _, r := range rs {
		tag := string(r.Mask)
		if prev, dup := tags[tag]; dup {
			t.Fatalf("kill %d: tag %s stored twice (ids %d, %d)", kill, tag, prev, r.ID)
		}
		tags[tag] = r.ID
		want := crashPayload(tag)
		if !bytesEqual(r.Image, want.Image) || string(r.Meta) != string(want.Meta) || r.Priority != want.Priority {
			t.Fatalf("kill %d: record %d content damaged", kill, r.ID)
		}
		if acked[r.ID] {
			t.Fatalf("kill %d: acknowledged record %d is back", kill, r.ID)
		}
		if ptag, ok := putOK[r.ID]; ok && ptag != tag {
			t.Fatalf("kill %d: id %d holds tag %s, Put returned it for %s", kill, r.ID, tag, ptag)
		}
		if r.ID > st.LastID {
			t.Fatalf("kill %d: id %d above LastID %d", kill, r.ID, st.LastID)
		}
		ids = append(ids, r.ID)
		bytes += int64(recHeaderLen+len(r.Image)+len(r.Mask)+len(r.Meta)) + entryOverhead
	}
	if bytes != st.Bytes {
		t.Fatalf("kill %d: Stats.Bytes %d, content %d", kill, st.Bytes, bytes)
	}
	var evicted uint64
	for _, n := range st.Evictions {
		evicted += n
	}
	for id := range putOK {
		if !acked[id] && !acking[id] && !gone[id] && !slices.Contains(ids, id) {
			if _, ok := tags[putOK[id]]; !ok {
				if maxBytes == 0 {
					t.Fatalf("kill %d: acknowledged Put %d (%s) lost", kill, id, putOK[id])
				}
				gone[id] = true
			}
		}
	}
	if uint64(len(gone)) > evicted {
		t.Fatalf("kill %d: %d acknowledged Puts missing, only %d evictions counted", kill, len(gone), evicted)
	}
	if maxBytes > 0 && st.Bytes > maxBytes {
		t.Fatalf("kill %d: %d bytes stored over MaxBytes %d", kill, st.Bytes, maxBytes)
	}
	if maxBytes == 0 && evicted != 0 {
		t.Fatalf("kill %d: %d evictions without bounds", kill, evicted)
	}
	for id := range acking {
		if !slices.Contains(ids, id) {
			acked[id] = true // the interrupted Ack took effect
		}
	}
	for i := 1; i < len(ids) && maxBytes == 0; i++ {
		if ids[i] != ids[i-1]+1 {
			t.Fatalf("kill %d: gap in remaining ids: %d then %d", kill, ids[i-1], ids[i])
		}
	}
	return st.LastID
}

func bytesEqual(a, b []byte) bool { return bytes.Equal(a, b) }
