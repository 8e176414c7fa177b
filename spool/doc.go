// Package spool is the agent's crash-safe, byte-bounded store-and-forward
// queue for frames, built on bbolt.
//
// A spool is a directory. It holds one bbolt file, DBName, with the encoded
// records (image, mask and caller-owned metadata behind a versioned,
// checksummed header; see format.go, owned by this package), each in its
// own sub-bucket so that a Put writes only its own pages, a small index per
// record, a quarantine for damaged records and persistent counters. A
// damaged file is renamed aside in the same directory as
// DBName+".corrupt-<UTC time>"; nothing is ever deleted silently.
//
// # Durability contract
//
//   - When Put returns nil, the record is on stable storage: it was
//     committed in a bbolt transaction that ended with fdatasync.
//   - A record leaves the spool only through Ack, which deletes it in one
//     durable transaction (call it after the broker confirmed the record),
//     or through a counted eviction (MaxBytes, MinFreeBytes, MaxAge), a
//     counted quarantine, or a counted rename aside of a damaged file
//     (records that cannot be salvaged stay in the renamed file). Each is
//     logged: evictions once per burst, damage at Error.
//   - After a crash at any instant (kill -9, power cut), reopening yields
//     every record whose Put returned nil and that was not acknowledged,
//     exactly once, under the same id; ids are unique and increasing and
//     never reused (the last id is stored with every commit). A record whose
//     Put did not return may or may not be present, whole or not at all.
//   - A record's source key (Record.Key) is stored in the transaction that
//     stores the record, and outlives it: a second Put with the same key
//     stores nothing (ErrDuplicate), and Lookup tells a source that its
//     capture is stored already. The most recent 4096 keys are kept.
//     An Ack that did not return may or may not have taken effect.
//   - In-flight marks (Next) live in memory only: after a restart every
//     unacknowledged record is handed out again, so delivery downstream is
//     at least once; consumers deduplicate by id. A record that can never
//     be delivered is set aside with Quarantine (a reason code, counted in
//     Stats.QuarantinedBy), not left in flight. AckCount says how many
//     records an Ack settled: a record evicted while in flight and then
//     confirmed was delivered after all, and its eviction is taken back, so
//     every record is counted once, as delivered or as evicted.
//
// The crash test (crash_test.go) re-executes the test binary as a
// writer/acker child, SIGKILLs it at random points and checks these
// invariants after every kill.
//
// # Concurrency model
//
// All methods are safe for concurrent use. Put encodes and checksums the
// record in the caller's goroutine and hands it to one committer goroutine
// (started by Open, stopped and waited for by Close). The committer takes
// every Put waiting at the time the previous commit ended, up to
// Options.MaxBatch records, and commits them in one transaction with one
// fsync. When recent batches or the Puts in progress show several
// producers, it waits up to 2 ms for those still encoding; a lone Put is
// committed at once. Ack, eviction, expiry, quarantine and
// compaction are serialized with the committer by a write mutex; Next reads
// in a read transaction concurrently with writes. An in-memory index (about
// 100 bytes per record) holds ids, priorities, creation times and sizes, so
// Next, eviction and Stats never scan the file. On Linux the spool unmaps
// bbolt's mmap'd pages from the process after Open, compaction and the
// first Ack after Next has read 8 MiB of records (madvise MADV_DONTNEED;
// the page cache keeps them), so resident memory does not grow with the
// records read or walked.
//
// # Bounds and eviction
//
// MaxBytes bounds the accounted bytes of records (encoded record + 48 bytes
// of keys and index) plus quarantined data. MinFreeBytes keeps a free-disk
// reserve, checked with statfs(2) (Options.DiskFree for tests): a Put that
// would grow the file while less than the reserve is available evicts or
// rejects; a Put that fits in pages freed inside the file is always allowed,
// so drop-oldest keeps working at constant disk use on a full disk. The
// growth estimate rounds records up to whole pages and leaves 128 free
// pages and 16 pages per commit out of the reckoning (bbolt's scattered
// copy-on-write pages), so on a full disk the file keeps up to about
// 600 KiB of free pages (4 KiB pages) that the reserve check does not
// count. When a
// record does not fit, eviction removes, in this order, quarantined
// records, then records not in flight by (priority, id), then records in
// flight. DropOldest never evicts a record of higher priority than the new
// one and RejectNew only evicts records of strictly lower priority; when
// that is not enough, Put fails with ErrFull. MaxAge expires records (not in
// flight) on Put and Next. Evictions are counted by reason in Stats and in
// the file, and logged at Warn once when a burst starts and once when it
// ends.
//
// # Disk use
//
// A compaction needs room for a copy of the live data: it runs only while
// the file system has that room above MinFreeBytes, so it never consumes
// the reserve, and after a failure or for want of room it is postponed for
// a minute, doubling to an hour. If the file cannot be reopened after a
// compaction, every operation fails with ErrBroken so that the owner stops
// (a supervisor restarts it; Open recovers the file).
//
// Before a Put evicts records to keep MinFreeBytes free, Options.Reclaim
// (when set) is asked to free the space by deleting files the owner can
// spare. Records marked ClockUnsynced are exempt from MaxAge until the
// clock is synchronised (Options.ClockSynced), and expire MaxAge after.
//
// bbolt files never shrink on their own. The spool keeps frames inside bbolt
// and compacts online: after an Ack or eviction, when the file holds more
// than CompactFreeBytes (default 32 MiB) of free pages and either the file
// exceeds MaxBytes+CompactFreeBytes, or seven eighths of the file are free
// and no record is in flight, the live data is copied to DBName+".compact",
// synced, and renamed over the file. Waiting for nothing in flight keeps the
// copy out of a running drain; the drain's last Ack compacts instead. So
// the file's pages stay within max(8×live, live+CompactFreeBytes) once a
// drain has ended, and within MaxBytes + CompactFreeBytes + one batch
// (≤ 32 MiB) plus page rounding (under 4 KiB per record) overall
// (TestDiskBoundedAfterChurn);
// a compaction briefly needs a second copy of the live data on disk, and the
// replaced file is removed in the background after it. Keeping blobs
// as files beside a bbolt index was measured as the alternative
// (BenchmarkAltBlobFiles): it costs a file fsync and a directory fsync on
// top of the index commit, so sequential durable Put fell well short of raw
// bbolt; see BENCHMARKS.md.
//
// # Damage
//
// Every record value carries a header checksum and a payload checksum
// (CRC-32C). A record that fails to decode when Next reads it, or whose
// index and data disagree at Open, is moved to the quarantine bucket with
// its reason and raw bytes, logged at Error and counted.
//
// At Open the spool first walks every page with cursors on a read-only
// handle under a panic and fault guard (bbolt's own walks run in goroutines
// where a panic would kill the process), then runs bbolt's consistency
// check. A file bbolt cannot open, that fails either, or on which bbolt
// panics or faults (a truncated mmap) is replaced: its sound records are
// salvaged into DBName+".fresh" (each read under its own guard, so one
// damaged page loses only the records on it), which is synced; then the
// damaged file is renamed aside and the new one into place. A crash at any
// step is finished or redone by the next Open. The event is logged at
// Error and counted in Stats.CorruptRenames, and Open succeeds: the agent
// never crash-loops on a damaged spool. Because the lost file's last id may
// be unreadable, ids after such a restart continue from at least the current
// time in microseconds, so they never repeat an id handed out before.
//
// Check and Inspect work on a spool no process holds (bbolt's file lock
// makes them fail with ErrInUse otherwise) for `forest-agent spool check`
// and `forest-agent spool stats`.
package spool
