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

	"github.com/forestwatch/forest/spool"
)

// migrateState moves what versions before the spool owned frame numbering
// kept in the state directory into the spool, then removes those files:
//
//   - "seq" held a high-water mark H: every sequence number below H may have
//     been used in a frame id. Spool ids, which are now the sequence
//     numbers, continue above H.
//   - "journal" held the source key of the last frame taken and, once its
//     Put had returned, its spool id: that key counts as stored under that
//     id, so the file is not spooled again. A journal without a spool id
//     (a crash during that frame's Put) is dropped: the file is spooled
//     again under a new id, as a second copy of that frame at worst.
//
// A crash before the files are removed repeats the migration, which gives
// the same result.
func migrateState(dir string, q *spool.Queue) error {
	seqPath, journalPath := filepath.Join(dir, "seq"), filepath.Join(dir, "journal")
	b, err := os.ReadFile(seqPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("migrate state: %w", err)
	}
	floor, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return fmt.Errorf("migrate state: %s: %w", seqPath, err)
	}
	keys := map[string]uint64{}
	var j struct {
		Key     string `json:"key"`
		SpoolID uint64 `json:"spool_id"`
	}
	if b, err := os.ReadFile(journalPath); err == nil && json.Unmarshal(b, &j) == nil && j.Key != "" && j.SpoolID != 0 {
		keys[j.Key] = j.SpoolID
	}
	if err := q.Import(floor, keys); err != nil {
		return fmt.Errorf("migrate state: %w", err)
	}
	for _, p := range []string{journalPath, journalPath + ".tmp", seqPath + ".tmp", seqPath} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("migrate state: %w", err)
		}
	}
	return nil
}
