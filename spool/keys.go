package spool

import (
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Source keys.
//
// A capture that its source may offer again (a file in a watched directory
// is offered again after a restart until it has been moved away) carries a
// key, Record.Key. Attempt counts, per key, how often processing began. The Put that stores the record also stores, in the same
// transaction, the key with the record's id. So "stored", "id used" and
// "taken from its source" can never disagree after a crash: a Put whose
// key is already stored stores nothing and fails with ErrDuplicate, and a
// source that finds its capture's key with Lookup only has to dispose of it.
//
// Keys outlive their records (an Ack does not remove them): the source may
// still hold the file after its frame was delivered. The spool keeps the
// maxKeys most recently written keys and forgets older ones; a source takes
// one capture at a time, so only its last few keys can ever be offered
// again.

// maxKeys bounds the keys kept; they are counted every pruneEvery writes,
// so up to maxKeys+pruneEvery may be stored at a time.
const (
	maxKeys    = 4096
	pruneEvery = 256
)

var (
	bktKeys     = []byte("keys")
	keyKeyClock = []byte("key_clock")
)

// keyState is the value stored under a source key:
//
//	0 id u64 (0: not stored yet)
//	8 attempts u32
//	12 written u64 (the key clock when it was last written)
const keyStateLen = 20

type keyState struct {
	id       uint64
	attempts uint32
	written  uint64
}

func encodeKeyState(s keyState) []byte {
	b := make([]byte, keyStateLen)
	binary.BigEndian.PutUint64(b[0:], s.id)
	binary.BigEndian.PutUint32(b[8:], s.attempts)
	binary.BigEndian.PutUint64(b[12:], s.written)
	return b
}

func decodeKeyState(b []byte) (keyState, bool) {
	if len(b) != keyStateLen {
		return keyState{}, false
	}
	return keyState{id: binary.BigEndian.Uint64(b[0:]), attempts: binary.BigEndian.Uint32(b[8:]),
		written: binary.BigEndian.Uint64(b[12:])}, true
}

// Lookup returns the id a record with this source key was stored under,
// and whether one was (it may since have been acknowledged or evicted).
func (q *Queue) Lookup(key string) (uint64, bool, error) {
	if key == "" {
		return 0, false, nil
	}
	var st keyState
	err := q.view("lookup", func(tx *bolt.Tx) error {
		if b := tx.Bucket(bktKeys); b != nil {
			st, _ = decodeKeyState(b.Get([]byte(key)))
		}
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("lookup: %w", err)
	}
	return st.id, st.id != 0, nil
}

// Attempt records, durably, that processing the capture with this key
// begins, and returns how many times it began (this one included) and,
// when a record with this key was stored, its id: then nothing is
// recorded. A capture that crashes or hangs its processor is offered again
// after every restart; the count lets the caller give up on it after a few
// attempts instead of restarting forever.
func (q *Queue) Attempt(key string) (attempts int, id uint64, err error) {
	if key == "" {
		return 0, 0, errors.New("attempt: empty key")
	}
	if q.isClosed() {
		return 0, 0, fmt.Errorf("attempt: %w", ErrClosed)
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	var st keyState
	err = q.update("attempt", func(tx *bolt.Tx) error {
		if b := tx.Bucket(bktKeys); b != nil {
			st, _ = decodeKeyState(b.Get([]byte(key)))
		}
		if st.id != 0 {
			return nil
		}
		return writeKey(tx, key, func(s *keyState) { s.attempts++; st = *s })
	})
	if err != nil {
		return 0, 0, fmt.Errorf("attempt: %w", err)
	}
	return int(st.attempts), st.id, nil
}

// ClearAttempts forgets the attempts counted for key: its processing ended
// without a crash, though without storing it (the spool was full, say), and
// it may be offered again.
func (q *Queue) ClearAttempts(key string) error {
	if q.isClosed() {
		return fmt.Errorf("clear attempts: %w", ErrClosed)
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	err := q.update("clear attempts", func(tx *bolt.Tx) error {
		if b := tx.Bucket(bktKeys); b != nil && b.Get([]byte(key)) != nil {
			return writeKey(tx, key, func(s *keyState) { s.attempts = 0 })
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("clear attempts: %w", err)
	}
	return nil
}

// Import takes over state that an earlier version kept outside the spool,
// in one durable transaction: ids handed out from now on are greater than
// floor, and each key in keys counts as stored under its id.
func (q *Queue) Import(floor uint64, keys map[string]uint64) error {
	if q.isClosed() {
		return fmt.Errorf("import: %w", ErrClosed)
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.mu.Lock()
	next := max(q.nextID, floor)
	q.mu.Unlock()
	err := q.update("import", func(tx *bolt.Tx) error {
		for k, id := range keys {
			if err := writeKey(tx, k, func(s *keyState) { s.id = id }); err != nil {
				return err
			}
		}
		return tx.Bucket(bktState).Put(keyNextID, u64Bytes(next))
	})
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	q.mu.Lock()
	q.nextID = next
	q.mu.Unlock()
	return nil
}

// storedKeys returns the ids stored under the keys of batch, for the
// requests that have a key already stored: by an earlier Put, or by an
// earlier request of the same batch (dup[i] is then the index of that
// request). q.wmu must be held, so that the keys do not change.
func (q *Queue) storedKeys(batch []*putReq) (stored map[int]uint64, dup map[int]int, err error) {
	first := map[string]int{}
	err = q.view("keys", func(tx *bolt.Tx) error {
		b := tx.Bucket(bktKeys)
		for i, r := range batch {
			if r.key == "" {
				continue
			}
			if j, ok := first[r.key]; ok {
				if dup == nil {
					dup = map[int]int{}
				}
				dup[i] = j
				continue
			}
			first[r.key] = i
			if b == nil {
				continue
			}
			if st, _ := decodeKeyState(b.Get([]byte(r.key))); st.id != 0 {
				if stored == nil {
					stored = map[int]uint64{}
				}
				stored[i] = st.id
			}
		}
		return nil
	})
	return stored, dup, err
}

// writeKey updates the state of key in tx with fn, stamps it with the key
// clock and forgets the oldest keys beyond maxKeys.
func writeKey(tx *bolt.Tx, key string, fn func(*keyState)) error {
	b, err := tx.CreateBucketIfNotExists(bktKeys)
	if err != nil {
		return err
	}
	st := tx.Bucket(bktState)
	clock := getU64(st.Get(keyKeyClock)) + 1
	if err := st.Put(keyKeyClock, u64Bytes(clock)); err != nil {
		return err
	}
	k := []byte(key)
	s, _ := decodeKeyState(b.Get(k))
	fn(&s)
	s.written = clock
	if err := b.Put(k, encodeKeyState(s)); err != nil {
		return err
	}
	if clock%pruneEvery == 0 && clock > maxKeys && b.Stats().KeyN > maxKeys {
		return pruneKeys(b, clock-maxKeys)
	}
	return nil
}

// pruneKeys forgets the keys last written at or before clock.
func pruneKeys(b *bolt.Bucket, clock uint64) error {
	var old [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if s, ok := decodeKeyState(v); !ok || s.written <= clock {
			old = append(old, append([]byte(nil), k...))
		}
		return nil
	})
	for _, k := range old {
		err = errors.Join(err, b.Delete(k))
	}
	return err
}
