package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// seqBlock is how many sequence numbers are reserved per state-file write.
const seqBlock = 64

// state persists the device's frame sequence counter and the capture
// journal in Config.Device.StateDir.
//
// Sequence numbers: the file "seq" holds a high-water mark H; every number
// below H may have been used. On open the counter starts at H, and before a
// number ≥ H is handed out H is advanced by seqBlock and written (temp file,
// fsync, rename, directory fsync). So numbers are unique and increasing per
// device across restarts and crashes; a crash leaves a gap, never a repeat.
//
// Journal: the file "journal" records the source key and sequence number of
// the frame being spooled, written before the spool Put, and its spool id,
// written after Put returned. The crash states of a dir-source file:
//
//   - before the journal write: nothing spooled; the file is taken again
//     under a fresh sequence number;
//   - between journal write and Put's return: the frame may or may not be
//     in the spool; the file is taken again under the journaled sequence
//     number, so at worst the spool holds two copies with one frame id
//     (<device>-<seq>), which the cloud stores as one object;
//   - between Put's return and the spool-id write (microseconds): as above;
//   - after the spool-id write, before the file was moved or deleted: the
//     restarted agent finds the key with its spool id in the journal and
//     only moves or deletes the file: it is not spooled again.
type state struct {
	dir string

	mu       sync.Mutex
	next     uint64
	reserved uint64
	journal  journalEntry
}

type journalEntry struct {
	Key string `json:"key"`
	Seq uint64 `json:"seq"`
	// SpoolID is set once the spool Put of the frame returned.
	SpoolID uint64 `json:"spool_id,omitempty"`
}

func openState(dir string) (*state, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open state: %w", err)
	}
	s := &state{dir: dir}
	b, err := os.ReadFile(filepath.Join(dir, "seq"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("open state: %w", err)
	default:
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("open state: seq file %s: %w", filepath.Join(dir, "seq"), err)
		}
		s.next, s.reserved = v, v
	}
	if b, err := os.ReadFile(filepath.Join(dir, "journal")); err == nil {
		// A damaged journal only loses the duplicate suppression for one
		// frame; it is not worth refusing to start.
		_ = json.Unmarshal(b, &s.journal)
	}
	return s, nil
}

// spooledAlready reports whether the frame with this key was spooled
// (its Put returned) by an earlier run that then crashed before the source
// disposed of it, and under which sequence number and spool id.
func (s *state) spooledAlready(key string) (seq, id uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if key == "" || key != s.journal.Key || s.journal.SpoolID == 0 {
		return 0, 0, false
	}
	return s.journal.Seq, s.journal.SpoolID, true
}

// spooled records in the journal that the frame with this key is in the
// spool under id.
func (s *state) spooled(key string, id uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if key == "" || key != s.journal.Key {
		return nil
	}
	j := s.journal
	j.SpoolID = id
	b, _ := json.Marshal(j)
	if err := writeFileSync(filepath.Join(s.dir, "journal"), b); err != nil {
		return fmt.Errorf("write capture journal: %w", err)
	}
	s.journal = j
	return nil
}

// seqFor returns the sequence number for a frame. A non-empty key that the
// journal holds gets its journaled number again; otherwise a fresh number
// is allocated and, for a non-empty key, journaled before seqFor returns.
func (s *state) seqFor(key string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if key != "" && key == s.journal.Key {
		return s.journal.Seq, nil
	}
	if s.next >= s.reserved {
		r := s.next + seqBlock
		if err := writeFileSync(filepath.Join(s.dir, "seq"), []byte(strconv.FormatUint(r, 10)+"\n")); err != nil {
			return 0, fmt.Errorf("reserve sequence numbers: %w", err)
		}
		s.reserved = r
	}
	seq := s.next
	s.next++
	if key != "" {
		j := journalEntry{Key: key, Seq: seq}
		b, _ := json.Marshal(j)
		if err := writeFileSync(filepath.Join(s.dir, "journal"), b); err != nil {
			return 0, fmt.Errorf("write capture journal: %w", err)
		}
		s.journal = j
	}
	return seq, nil
}

// writeFileSync replaces path atomically and durably.
func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
