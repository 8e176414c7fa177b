package agent

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forestwatch/forest/agent/status"
)

// keeper bounds what the agent keeps on the device besides the spool: the
// captures the dir source moved to done/, the refused ones in failed/ (with
// their reason files), and the mask overlays. Each set of directories has a
// byte budget and an age limit, enforced oldest file first by prune. When
// the spool needs room for its free-disk reserve it calls reclaim first, so
// no unsent frame is evicted while one of these files could go instead.
// Safe for concurrent use.
type keeper struct {
	sets  []keepSet
	spool string // the spool's directory: reclaim frees only its file system
	m     *status.Metrics
	log   *slog.Logger
	now   func() time.Time

	mu    sync.Mutex // serialises prune and reclaim
	bytes atomic.Int64
}

// keepSet is a group of directories with one budget; 0 turns a bound off.
type keepSet struct {
	dirs     []string
	maxBytes int64
	maxAge   time.Duration
}

type keptFile struct {
	path  string
	size  int64
	mtime time.Time
}

// newKeeper builds the keeper of cfg.
func newKeeper(cfg *Config, m *status.Metrics, log *slog.Logger) *keeper {
	k := &keeper{spool: cfg.Spool.Dir, m: m, log: log, now: time.Now}
	if d := cfg.Source.Dir; cfg.Source.Type == "dir" {
		set := keepSet{dirs: []string{filepath.Join(d.Path, "failed")}, maxBytes: d.KeepBytes, maxAge: d.KeepAge.D()}
		if d.After == "move" {
			done := d.DoneDir
			if done == "" {
				done = filepath.Join(d.Path, "done")
			}
			set.dirs = append(set.dirs, done)
		}
		k.sets = append(k.sets, set)
	}
	if cfg.Segment.OverlayDir != "" {
		k.sets = append(k.sets, keepSet{dirs: []string{cfg.Segment.OverlayDir}, maxBytes: cfg.Segment.OverlayKeepBytes})
	}
	return k
}

// files lists the regular files of set's directories that pass use (all
// when nil), oldest first, and their total size.
func (set keepSet) files(use func(dir string) bool) ([]keptFile, int64) {
	var out []keptFile
	var total int64
	for _, dir := range set.dirs {
		if use != nil && !use(dir) {
			continue
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue // not made yet
		}
		for _, e := range ents {
			if !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				continue
			}
			out = append(out, keptFile{path: filepath.Join(dir, e.Name()), size: fi.Size(), mtime: fi.ModTime()})
			total += fi.Size()
		}
	}
	slices.SortFunc(out, func(a, b keptFile) int { return a.mtime.Compare(b.mtime) })
	return out, total
}

// prune removes files over each set's age limit, then the oldest until the
// set is within its byte budget, and returns the bytes removed.
func (k *keeper) prune() int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	var freed, kept int64
	now := k.now()
	for _, set := range k.sets {
		files, total := set.files(nil)
		for _, f := range files {
			reason := ""
			switch {
			case set.maxAge > 0 && now.Sub(f.mtime) > set.maxAge:
				reason = "age"
			case set.maxBytes > 0 && total > set.maxBytes:
				reason = "bytes"
			default:
				continue
			}
			if k.remove(f, reason) {
				total -= f.size
				freed += f.size
			}
		}
		kept += total
	}
	k.bytes.Store(kept)
	return freed
}

// reclaim removes the oldest files of every set on the spool's file system
// until need bytes are freed, and returns the bytes freed. It is the
// spool's Options.Reclaim.
func (k *keeper) reclaim(need int64) int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	var all []keptFile
	onSpoolFS := func(dir string) bool { return sameFS(dir, k.spool) }
	for _, set := range k.sets {
		files, _ := set.files(onSpoolFS)
		all = append(all, files...)
	}
	slices.SortFunc(all, func(a, b keptFile) int { return a.mtime.Compare(b.mtime) })
	var freed int64
	for _, f := range all {
		if freed >= need {
			break
		}
		if k.remove(f, "disk") {
			freed += f.size
		}
	}
	if freed > 0 {
		k.log.Warn("disk short: removed kept files before the spool evicts any frame", "freed_bytes", freed, "needed_bytes", need)
		k.bytes.Add(-freed)
	}
	return freed
}

func (k *keeper) remove(f keptFile, reason string) bool {
	err := os.Remove(f.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		k.log.Warn("remove kept file", "file", f.path, "err", err)
		return false
	}
	k.m.KeptRemoved.WithLabelValues(reason).Inc()
	return true
}

// sameFS reports whether a and b (or, for a path not made yet, its
// nearest existing parent) are on one file system.
func sameFS(a, b string) bool {
	da, oka := device(a)
	db, okb := device(b)
	return oka && okb && da == db
}

func device(p string) (uint64, bool) {
	for {
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil {
			return st.Dev, true
		}
		parent := filepath.Dir(p)
		if parent == p {
			return 0, false
		}
		p = parent
	}
}
