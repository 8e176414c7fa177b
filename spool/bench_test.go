package spool

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Benchmarks for 200 KB records. Each pair runs the spool and raw bbolt
// (default options, one Update per record, which fsyncs) in the same run so
// that ratios compare like with like. Run with -count 3 or more and compare
// medians (BENCHMARKS.md).

const benchRecordSize = 200 << 10

func benchRecord(i int) *Record {
	img := make([]byte, benchRecordSize-64)
	for j := 0; j < len(img); j += 4096 {
		img[j] = byte(i + j)
	}
	return &Record{Image: img, Mask: make([]byte, 32), Meta: []byte(`{"image_name":"bench"}`)}
}

func benchValue() []byte {
	v := make([]byte, benchRecordSize)
	for j := 0; j < len(v); j += 4096 {
		v[j] = byte(j)
	}
	return v
}

func openBench(b *testing.B) *Queue {
	b.Helper()
	q, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = q.Close() })
	return q
}

func openRaw(b *testing.B) *bolt.DB {
	b.Helper()
	db, err := bolt.Open(filepath.Join(b.TempDir(), "raw.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	return db
}

func rawPut(db *bolt.DB, seq *atomic.Uint64, v []byte) error {
	return db.Update(func(tx *bolt.Tx) error {
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], seq.Add(1))
		return tx.Bucket([]byte("b")).Put(k[:], v)
	})
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
}

// BenchmarkPut is sequential durable Put: one producer.
func BenchmarkPut(b *testing.B) {
	b.Run("spool", func(b *testing.B) {
		q := openBench(b)
		r := benchRecord(1)
		b.SetBytes(benchRecordSize)
		b.ResetTimer()
		for range b.N {
			if _, err := q.Put(context.Background(), r); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b)
	})
	b.Run("raw-bbolt", func(b *testing.B) {
		db := openRaw(b)
		v := benchValue()
		var seq atomic.Uint64
		b.SetBytes(benchRecordSize)
		b.ResetTimer()
		for range b.N {
			if err := rawPut(db, &seq, v); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b)
	})
}

// BenchmarkAltBlobFiles measures the design alternative the spool does not
// use: each 200 KB blob written as its own file beside a bbolt index
// (temp file, fsync, rename, fsync dir, then one index Update with fsync),
// the durable sequence that layout needs per Put.
func BenchmarkAltBlobFiles(b *testing.B) {
	dir := b.TempDir()
	db := openRaw(b)
	v := benchValue()
	var seq atomic.Uint64
	b.SetBytes(benchRecordSize)
	b.ResetTimer()
	for range b.N {
		id := seq.Add(1)
		name := filepath.Join(dir, strconv.FormatUint(id, 10))
		f, err := os.Create(name + ".tmp")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Write(v); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(name+".tmp", name); err != nil {
			b.Fatal(err)
		}
		if err := syncDir(dir); err != nil {
			b.Fatal(err)
		}
		if err := rawPut(db, &seq, v[:32]); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b)
}

// BenchmarkPutConcurrent4 is durable Put from 4 concurrent producers.
func BenchmarkPutConcurrent4(b *testing.B) {
	const producers = 4
	run := func(b *testing.B, put func() error) {
		b.SetBytes(benchRecordSize)
		b.ResetTimer()
		var wg sync.WaitGroup
		var left atomic.Int64
		left.Store(int64(b.N))
		for range producers {
			wg.Go(func() {
				for left.Add(-1) >= 0 {
					if err := put(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		reportRate(b)
	}
	b.Run("spool", func(b *testing.B) {
		q := openBench(b)
		recs := make(chan *Record, producers)
		for i := range producers {
			recs <- benchRecord(i)
		}
		run(b, func() error {
			r := <-recs
			defer func() { recs <- r }()
			_, err := q.Put(context.Background(), r)
			return err
		})
		b.ReportMetric(float64(b.N)/float64(q.Stats().PutCommits), "puts/commit")
	})
	b.Run("raw-bbolt", func(b *testing.B) {
		db := openRaw(b)
		v := benchValue()
		var seq atomic.Uint64
		run(b, func() error { return rawPut(db, &seq, v) })
	})
}

// BenchmarkPutRatio interleaves rounds of spool Puts and raw bbolt Updates
// (alternating which goes first) on the same disk and reports both rates
// and their ratio, so that slow drifts in disk latency (other processes)
// hit both sides alike.
func BenchmarkPutRatio(b *testing.B) {
	for _, producers := range []int{1, 4} {
		b.Run(fmt.Sprintf("producers=%d", producers), func(b *testing.B) {
			const round = 16
			q := openBench(b)
			db := openRaw(b)
			v := benchValue()
			var seq atomic.Uint64
			recs := make(chan *Record, producers)
			for i := range producers {
				recs <- benchRecord(i)
			}
			spoolPut := func() error {
				r := <-recs
				defer func() { recs <- r }()
				_, err := q.Put(context.Background(), r)
				return err
			}
			rawOne := func() error { return rawPut(db, &seq, v) }
			runRound := func(put func() error) time.Duration {
				start := time.Now()
				var wg sync.WaitGroup
				var left atomic.Int64
				left.Store(round)
				for range producers {
					wg.Go(func() {
						for left.Add(-1) >= 0 {
							if err := put(); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				return time.Since(start)
			}
			var tSpool, tRaw time.Duration
			for i := range b.N {
				if i%2 == 0 {
					tSpool += runRound(spoolPut)
					tRaw += runRound(rawOne)
				} else {
					tRaw += runRound(rawOne)
					tSpool += runRound(spoolPut)
				}
			}
			n := float64(b.N * round)
			b.ReportMetric(n/tSpool.Seconds(), "spool-puts/s")
			b.ReportMetric(n/tRaw.Seconds(), "raw-puts/s")
			b.ReportMetric(tRaw.Seconds()/tSpool.Seconds(), "x-raw")
		})
	}
}

// BenchmarkAck64 times Ack of batches of 64 records handed out by Next
// (untimed); the raw comparison deletes 64 keys in one Update. The spool's
// figure includes the online compactions that acknowledging a whole backlog
// triggers.
func BenchmarkAck64(b *testing.B) {
	const batch = 64
	b.Run("spool", func(b *testing.B) {
		q := openBench(b)
		r := benchRecord(1)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			var wg sync.WaitGroup
			for range batch {
				wg.Go(func() {
					rr := *r
					if _, err := q.Put(context.Background(), &rr); err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
			rs, err := q.Next(batch)
			if err != nil || len(rs) != batch {
				b.Fatalf("Next: %d, %v", len(rs), err)
			}
			b.StartTimer()
			if err := q.Ack(recordIDs(rs)...); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("raw-bbolt", func(b *testing.B) {
		db := openRaw(b)
		v := benchValue()
		var seq atomic.Uint64
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			first := seq.Load() + 1
			err := db.Update(func(tx *bolt.Tx) error {
				for range batch {
					var k [8]byte
					binary.BigEndian.PutUint64(k[:], seq.Add(1))
					if err := tx.Bucket([]byte("b")).Put(k[:], v); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			err = db.Update(func(tx *bolt.Tx) error {
				for id := first; id < first+batch; id++ {
					var k [8]byte
					binary.BigEndian.PutUint64(k[:], id)
					if err := tx.Bucket([]byte("b")).Delete(k[:]); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
	})
}

// BenchmarkMemory10k spools 10,000 records of 200 KB (about 2 GB) and
// reports the growth of the process's resident set (VmRSS) from the open,
// empty spool to 10,000 spooled frames; then the time to reopen that spool
// and the RSS growth after reopening (file pages bbolt's check touched).
//
// One measurement per call whatever b.N is (it writes 2 GB and takes
// 30–50 s), so that `make bench` with -benchtime Nx stays bounded; ns/op is
// meaningless here, the metrics are the result.
func BenchmarkMemory10k(b *testing.B) {
	const frames = 10_000
	for range 1 {
		dir := b.TempDir()
		q, err := Open(dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		debug.FreeOSMemory()
		before := rssBytes(b)
		beforeAnon := rssAnonBytes(b)
		var wg sync.WaitGroup
		var left atomic.Int64
		left.Store(frames)
		for i := range 8 {
			wg.Go(func() {
				r := benchRecord(i)
				for left.Add(-1) >= 0 {
					rr := *r
					if _, err := q.Put(context.Background(), &rr); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if st := q.Stats(); st.Frames != frames {
			b.Fatalf("frames %d", st.Frames)
		}
		runtime.GC()
		after := rssBytes(b)
		b.ReportMetric(float64(after-before)/(1<<20), "rss-growth-MB")
		b.ReportMetric(float64(after)/(1<<20), "rss-MB")
		b.ReportMetric(float64(rssAnonBytes(b)-beforeAnon)/(1<<20), "anon-growth-MB")
		if err := q.Close(); err != nil {
			b.Fatal(err)
		}
		// Reopening a full spool: preflight walk, bbolt check, index load.
		start := time.Now()
		q, err = Open(dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "reopen-ms")
		if st := q.Stats(); st.Frames != frames {
			b.Fatalf("frames after reopen %d", st.Frames)
		}
		runtime.GC()
		b.ReportMetric(float64(rssBytes(b)-before)/(1<<20), "rss-growth-after-reopen-MB")
		// Drain it once, as the uplink would after an outage.
		for {
			rs, err := q.Next(64)
			if err != nil {
				b.Fatal(err)
			}
			if len(rs) == 0 {
				break
			}
			if err := q.Ack(recordIDs(rs)...); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		b.ReportMetric(float64(rssBytes(b)-before)/(1<<20), "rss-growth-after-drain-MB")
		if err := q.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func rssBytes(b *testing.B) int64 { return procStatus(b, "VmRSS:") }

func rssAnonBytes(b *testing.B) int64 { return procStatus(b, "RssAnon:") }

func procStatus(b *testing.B, key string) int64 {
	b.Helper()
	s, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Skip("no /proc/self/status:", err)
	}
	for l := range strings.SplitSeq(string(s), "\n") {
		if f, ok := strings.CutPrefix(l, key); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(f), " kB"), 10, 64)
			if err != nil {
				b.Fatal(fmt.Errorf("parse VmRSS %q: %w", f, err))
			}
			return kb << 10
		}
	}
	b.Fatal(key, " not found")
	return 0
}
