package spool

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"time"
)

// On-disk format, version 1. This package is the only owner of these bytes.
//
// The bbolt file holds these buckets:
//
//	data        key id (8 bytes, big-endian) -> sub-bucket holding one key
//	            0x00 -> record value (header + payload). A sub-bucket per
//	            record keeps large values out of the data bucket's leaves, so
//	            a Put writes its own pages only and never rewrites (or reads)
//	            neighbouring records, as a flat bucket of 200 KB values does.
//	idx         key id -> 32-byte index entry (priority, created, data length)
//	quarantine  key id -> quarantine entry (reason, time, raw bytes)
//	state       "format" -> version byte; "next_id" -> u64;
//	            "evict/<reason>" -> u64 lifetime eviction counter;
//	            "key_clock" -> u64 (see keys)
//	keys        source key -> 20-byte key state (see keys.go); created on
//	            the first keyed Put, absent in files written before keys
//
// Record value (big-endian):
//
//	 0 magic u32 "FWSP"
//	 4 version u8 (1)
//	 5 flags u8 (flagClockUnsynced; readers ignore unknown bits)
//	 6 reserved u16
//	 8 id u64
//	16 priority i64
//	24 created i64 (unix nanoseconds)
//	32 image length u32
//	36 mask length u32
//	40 meta length u32
//	44 payload crc32c u32 (over image|mask|meta)
//	48 header crc32c u32 (over bytes 0..48)
//	52 reserved u32
//	56 image | mask | meta
//
// Index entry:
//
//	 0 version u8 (1)
//	 1 flags u8 (the record's flags)
//	 2 reserved [2]byte
//	 4 data value length u32
//	 8 priority i64
//	16 created i64
//	24 crc32c u32 (over bytes 0..24)
//	28 reserved u32
//
// Quarantine entry:
//
//	 0 version u8 (1)
//	 1 reserved u8
//	 2 reason length u16
//	 4 reserved u32
//	 8 quarantined at i64 (unix nanoseconds)
//	16 reason | raw bytes of the damaged value (may be empty)
const (
	formatVersion  = 1
	recMagic       = 0x46575350 // "FWSP"
	recHeaderLen   = 56
	idxLen         = 32
	quarHeaderLen  = 16
	keyLen         = 8
	entryOverhead  = 2*keyLen + idxLen // bytes per record besides the data value
	maxReasonBytes = 1024
)

var (
	bktData  = []byte("data")
	bktIdx   = []byte("idx")
	bktQuar  = []byte("quarantine")
	bktState = []byte("state")

	valKey    = []byte{0}
	keyFormat = []byte("format")
	keyNextID = []byte("next_id")

	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// flagClockUnsynced marks a record captured while the clock was not known
// to be right (Record.ClockUnsynced).
const flagClockUnsynced = 1

func idKey(id uint64) []byte {
	var k [keyLen]byte
	binary.BigEndian.PutUint64(k[:], id)
	return k[:]
}

func keyID(k []byte) (uint64, bool) {
	if len(k) != keyLen {
		return 0, false
	}
	return binary.BigEndian.Uint64(k), true
}

// encoded is a record value whose id and header checksum are filled in by
// the committer (seal), so that producers can build and checksum the
// payload concurrently.
type encoded struct {
	buf      []byte
	priority int64
	created  int64
	flags    byte
}

func encodeRecord(r *Record, created time.Time) encoded {
	n := recHeaderLen + len(r.Image) + len(r.Mask) + len(r.Meta)
	buf := make([]byte, n)
	h := buf[:recHeaderLen]
	binary.BigEndian.PutUint32(h[0:], recMagic)
	h[4] = formatVersion
	if r.ClockUnsynced {
		h[5] = flagClockUnsynced
	}
	binary.BigEndian.PutUint64(h[16:], uint64(int64(r.Priority)))
	binary.BigEndian.PutUint64(h[24:], uint64(created.UnixNano()))
	binary.BigEndian.PutUint32(h[32:], uint32(len(r.Image)))
	binary.BigEndian.PutUint32(h[36:], uint32(len(r.Mask)))
	binary.BigEndian.PutUint32(h[40:], uint32(len(r.Meta)))
	p := buf[recHeaderLen:]
	copy(p, r.Image)
	copy(p[len(r.Image):], r.Mask)
	copy(p[len(r.Image)+len(r.Mask):], r.Meta)
	binary.BigEndian.PutUint32(h[44:], crc32.Checksum(p, castagnoli))
	return encoded{buf: buf, priority: int64(r.Priority), created: created.UnixNano(), flags: h[5]}
}

// seal writes the id and the header checksum.
func (e encoded) seal(id uint64) {
	binary.BigEndian.PutUint64(e.buf[8:], id)
	binary.BigEndian.PutUint32(e.buf[48:], crc32.Checksum(e.buf[:48], castagnoli))
}

// decodeHeader validates the header of a record value stored under id and
// returns its priority and creation time without touching the payload.
func decodeHeader(id uint64, v []byte) (prio int64, created int64, err error) {
	bad := func(format string, a ...any) error {
		return &CorruptError{Bucket: "data", ID: id, Reason: fmt.Sprintf(format, a...)}
	}
	if len(v) < recHeaderLen {
		return 0, 0, bad("short value (%d bytes)", len(v))
	}
	if m := binary.BigEndian.Uint32(v[0:]); m != recMagic {
		return 0, 0, bad("bad magic %#x", m)
	}
	if got, want := binary.BigEndian.Uint32(v[48:]), crc32.Checksum(v[:48], castagnoli); got != want {
		return 0, 0, bad("header checksum mismatch")
	}
	if ver := v[4]; ver != formatVersion {
		return 0, 0, bad("unsupported record version %d", ver)
	}
	if got := binary.BigEndian.Uint64(v[8:]); got != id {
		return 0, 0, bad("header names id %d", got)
	}
	li := uint64(binary.BigEndian.Uint32(v[32:]))
	lm := uint64(binary.BigEndian.Uint32(v[36:]))
	lt := uint64(binary.BigEndian.Uint32(v[40:]))
	if recHeaderLen+li+lm+lt != uint64(len(v)) {
		return 0, 0, bad("length mismatch: header says %d payload bytes, value has %d", li+lm+lt, len(v)-recHeaderLen)
	}
	return int64(binary.BigEndian.Uint64(v[16:])), int64(binary.BigEndian.Uint64(v[24:])), nil
}

// decodeRecord validates a record value and copies it into a Record that
// owns its memory.
func decodeRecord(id uint64, v []byte) (Record, error) {
	prio, created, err := decodeHeader(id, v)
	if err != nil {
		return Record{}, err
	}
	p := v[recHeaderLen:]
	if got, want := crc32.Checksum(p, castagnoli), binary.BigEndian.Uint32(v[44:]); got != want {
		return Record{}, &CorruptError{Bucket: "data", ID: id, Reason: "payload checksum mismatch"}
	}
	li := int(binary.BigEndian.Uint32(v[32:]))
	lm := int(binary.BigEndian.Uint32(v[36:]))
	own := make([]byte, len(p))
	copy(own, p)
	r := Record{
		ID:            id,
		Priority:      int(prio),
		Created:       time.Unix(0, created),
		ClockUnsynced: v[5]&flagClockUnsynced != 0,
		Image:         own[:li:li],
		Mask:          own[li : li+lm : li+lm],
		Meta:          own[li+lm:],
	}
	if lm == 0 {
		r.Mask = nil
	}
	if len(r.Meta) == 0 {
		r.Meta = nil
	}
	if li == 0 {
		r.Image = nil
	}
	return r, nil
}

// verifyRecord checks a record value fully without copying it.
func verifyRecord(id uint64, v []byte) error {
	if _, _, err := decodeHeader(id, v); err != nil {
		return err
	}
	if crc32.Checksum(v[recHeaderLen:], castagnoli) != binary.BigEndian.Uint32(v[44:]) {
		return &CorruptError{Bucket: "data", ID: id, Reason: "payload checksum mismatch"}
	}
	return nil
}

type idxEntry struct {
	dataLen  uint32
	priority int64
	created  int64
	flags    byte
}

// headerIdx builds the index entry of a record value from its header.
func headerIdx(id uint64, v []byte) (idxEntry, error) {
	prio, created, err := decodeHeader(id, v)
	if err != nil {
		return idxEntry{}, err
	}
	return idxEntry{dataLen: uint32(len(v)), priority: prio, created: created, flags: v[5]}, nil
}

func encodeIdx(e idxEntry) []byte {
	b := make([]byte, idxLen)
	b[0] = formatVersion
	b[1] = e.flags
	binary.BigEndian.PutUint32(b[4:], e.dataLen)
	binary.BigEndian.PutUint64(b[8:], uint64(e.priority))
	binary.BigEndian.PutUint64(b[16:], uint64(e.created))
	binary.BigEndian.PutUint32(b[24:], crc32.Checksum(b[:24], castagnoli))
	return b
}

func decodeIdx(id uint64, b []byte) (idxEntry, error) {
	bad := func(reason string) error { return &CorruptError{Bucket: "idx", ID: id, Reason: reason} }
	if len(b) != idxLen {
		return idxEntry{}, bad(fmt.Sprintf("index entry of %d bytes", len(b)))
	}
	if crc32.Checksum(b[:24], castagnoli) != binary.BigEndian.Uint32(b[24:]) {
		return idxEntry{}, bad("index checksum mismatch")
	}
	if b[0] != formatVersion {
		return idxEntry{}, bad(fmt.Sprintf("unsupported index version %d", b[0]))
	}
	return idxEntry{
		flags:    b[1],
		dataLen:  binary.BigEndian.Uint32(b[4:]),
		priority: int64(binary.BigEndian.Uint64(b[8:])),
		created:  int64(binary.BigEndian.Uint64(b[16:])),
	}, nil
}

func encodeQuarantine(reason string, at time.Time, raw []byte) []byte {
	if len(reason) > maxReasonBytes {
		reason = reason[:maxReasonBytes]
	}
	b := make([]byte, quarHeaderLen+len(reason)+len(raw))
	b[0] = formatVersion
	binary.BigEndian.PutUint16(b[2:], uint16(len(reason)))
	binary.BigEndian.PutUint64(b[8:], uint64(at.UnixNano()))
	copy(b[quarHeaderLen:], reason)
	copy(b[quarHeaderLen+len(reason):], raw)
	return b
}

// QuarantineEntry describes one quarantined record.
type QuarantineEntry struct {
	// ID is the id the damaged record was stored under.
	ID uint64 `json:"id"`
	// Reason says why the record was quarantined.
	Reason string `json:"reason"`
	// At is when it was quarantined.
	At time.Time `json:"at"`
	// RawBytes is the number of damaged bytes kept for inspection.
	RawBytes int `json:"raw_bytes"`
}

func decodeQuarantine(id uint64, b []byte) QuarantineEntry {
	q := QuarantineEntry{ID: id, RawBytes: len(b)}
	if len(b) < quarHeaderLen {
		q.Reason = "unreadable quarantine entry"
		return q
	}
	n := int(binary.BigEndian.Uint16(b[2:]))
	if quarHeaderLen+n > len(b) {
		q.Reason = "unreadable quarantine entry"
		return q
	}
	q.At = time.Unix(0, int64(binary.BigEndian.Uint64(b[8:])))
	q.Reason = string(b[quarHeaderLen : quarHeaderLen+n])
	q.RawBytes = len(b) - quarHeaderLen - n
	return q
}

func u64Bytes(v uint64) []byte {
	out := make([]byte, 8)
	binary.BigEndian.PutUint64(out, v)
	return out
}

func getU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
