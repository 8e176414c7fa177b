// Package cloud is forest-cloud: it consumes frame messages from RabbitMQ and
// stores them in S3, acknowledging a delivery only after every object it
// produces is stored and verified.
//
// # Messages
//
// Two formats are accepted on the queue:
//
//   - the current frame message defined by package wire (AMQP type
//     "forest.frame.v1.x", the image bytes as body, metadata in headers);
//   - the legacy JSON message of old devices, with no content type and no
//     type: {"image": <base64>, "image_metadata": {"image_name": ...}}.
//
// # Key layout (owned by this package)
//
// For a wire frame with device D, frame id F, capture time T (UTC) and
// configured prefix P, the objects are
//
//	P/D/yyyy/mm/dd/F.<ext>        the image bytes exactly as received
//	                               (ext is jpg, png or webp from the content type)
//	P/D/yyyy/mm/dd/F.mask.png     the forest mask PNG, when the frame has one
//	P/D/yyyy/mm/dd/F.json         the JSON sidecar (see Sidecar), written last
//
// yyyy/mm/dd is the capture date. D and F are restricted by wire to
// [A-Za-z0-9._-]{1,128} (and never "." or ".."). A legacy message with image
// name N is stored, by default (legacy.format original, legacy.key
// extension), as the bytes the device sent at
//
//	L/<wire.SanitiseName(N) with its extension replaced by the format's>
//
// (jpg, png, gif or webp, with the matching content type), where L is the
// configured legacy prefix. legacy.format png stores a PNG of the same
// pixels instead (the old service's format; see encodePNG), and legacy.key
// name keeps N itself after the prefix (the old service's key, key =
// image_name). A device's latest status report (see below) is
//
//	S/D.json                      a StatusRecord, replaced by each report
//
// where S is fleet.status_prefix. Keys depend only on the message and the
// configuration, so every redelivery and every replica computes the same
// keys: a frame is
// never stored twice.
//
// # Guarantees
//
// A delivery is acknowledged only after each of its objects was written with
// a SHA-256 checksum (PUT with If-None-Match: *), or was found to exist with
// the same content (a redelivery: counted as a suppressed duplicate). An
// object that exists with different content is a conflict and the message is
// dead-lettered. The image and mask are written concurrently and the
// sidecar only after both are stored, so a sidecar's presence means its
// frame is complete (unless s3.sidecar_last is false: then all three are
// written at once). The sidecar records the receipt time, so a redelivery
// produces different sidecar bytes; it counts as the same object when it
// names the same frame, image and mask checksums (the first sidecar stays). With s3.checksum "sha256" the body's SHA-256 (already
// verified against the message) travels as x-amz-checksum-sha256 and the
// server verifies it; the SigV4 signature then covers the headers only
// (UNSIGNED-PAYLOAD) instead of hashing the body a second time.
//
// Legacy messages carry no device, so their publisher is all that says who
// sent them: one is accepted only if its user_id (validated by the broker)
// is listed in legacy.users, and dead-lettered with reason legacy_user
// otherwise, before its body is decoded. The legacy prefix may neither equal
// nor contain nor sit inside the frames prefix (Validate), so a legacy name
// can never take a frame's key; If-None-Match still keeps any publisher
// from replacing an existing object. A legacy image kept as sent is checked
// without decoding its pixels: its header (format, size within
// consumer.max_pixels) and, for JPEG and PNG, that it is complete (every
// segment up to the end marker, every PNG chunk's CRC); S3 then verifies its
// SHA-256 as for frames.
//
// Poison messages (undecodable, failing validation, checksum mismatch,
// oversized, unknown schema, identity mismatch, conflicting content, unsafe
// legacy name) are dead-lettered: the consumer republishes a copy to the
// dead-letter exchange with the header x-forest-reason (a stable code, see
// Reason) and x-forest-reason-detail, waits for the broker's publisher
// confirm, and only then acks the original. A crash between the two leaves
// the original in the queue, so a dead letter may be duplicated, never lost.
// Messages that exceed the queue's delivery limit are dead-lettered by the
// broker itself (reason shown from x-death). Because RabbitMQ validates the
// user_id property against the publishing user, the dead-lettered copy
// carries the original user_id in x-forest-user-id instead.
//
// A transient S3 error (anything except the conditional-write outcome) is
// reported to a circuit breaker (breaker.go), which probes S3 with an empty
// PUT. If S3 answers, the failure is the message's own: it is retried with
// jittered exponential backoff for s3.retry_max_elapsed, then the delivery
// is returned to the queue (nack, requeue) and never acknowledged, so its
// delivery count grows. If S3 does not answer, the breaker opens: the
// session cancels its consumer, every message it holds is parked (a copy
// published to the queue by forest-cloud's own user, with its publisher in
// x-forest-user-id, confirmed, then the original acked: the copy's delivery
// count starts at zero), and the breaker probes under backoff until S3
// answers; then consumption resumes. An S3 outage of any length thus costs
// no message a delivery.
//
// # Queue settings
//
// The frames queue is declared with its type only; its delivery limit,
// dead-letter exchange and strategy and length limits are a RabbitMQ
// policy (Policy, PolicyFor), which an operator applies and may change on a
// running queue. A queue an earlier version declared with those as
// arguments is used as it is and reported; MigrateQueue re-creates it.
//
// # Identity
//
// RabbitMQ validates the user_id property against the connection's user. A
// frame is accepted only if its user_id equals its device header, or the
// configuration maps that user to the device (identity.devices). A missing
// user_id is refused unless identity.require_user_id is false. A message
// requeued from the dead-letter queue by `forest-cloud dlq requeue` is
// published by the consumer's own user, and only for that user is the
// x-forest-user-id header trusted as the original publisher.
//
// # Operations
//
// Metrics (on the registry in Options): forest_cloud_messages_total{result}
// (stored, duplicate, dead_lettered, requeued),
// forest_cloud_dead_letters_total{reason}, forest_cloud_objects_stored_total{kind},
// forest_cloud_duplicates_suppressed_total, forest_cloud_stored_bytes_total,
// forest_cloud_s3_put_seconds, forest_cloud_s3_retries_total,
// forest_cloud_s3_errors_total, forest_cloud_s3_healthy (0 while the
// breaker is open), forest_cloud_s3_outages_total,
// forest_cloud_s3_probes_total{result}, forest_cloud_queue_legacy_arguments,
// forest_cloud_broker_connected, forest_cloud_broker_reconnects_total,
// forest_cloud_inflight_messages and forest_cloud_handle_seconds.
// /readyz is 503 unless the consumer is consuming and the breaker is
// closed, with the reason in the body (Readiness). Run first runs Check: S3
// credentials, bucket present and writable (a probe object under
// {prefix}/.forest-cloud-check/ is written and deleted), broker reachable
// and topology declarable; a failure is a *StartupError naming what is
// missing and how to fix it, except that an S3 that does not answer (no
// response, 5xx) is waited for, not ready. Under systemd (Type=notify) Run
// sends READY=1 once it runs, STATUS= with the readiness reason, and
// WATCHDOG=1 only while idle or making progress (notify.go).
//
// # Status reports and the fleet page
//
// Agents publish a status report (wire.Status, routing key status.<device>)
// every few minutes. A consumer on a connection of its own (fleet.go,
// status.go) reads them from an auto-delete, length- and age-bounded queue
// (fleet.status_queue), checks them like frames (schema, identity: a bad
// report is dead-lettered with its reason), and stores each known device's
// latest as S/D.json; it never requeues one, so reports neither pile up
// nor hold back frames, whatever S3 does (one S3 refuses is dropped, shown
// from memory, and replaced by the next). Every replica re-reads the
// stored reports every fleet.refresh, so all show the same fleet and none
// keeps state. Known devices are fleet.devices plus those that report, up
// to fleet.max_devices; only they get the per-device metrics
// forest_cloud_device_{last_seen_timestamp_seconds, status_interval_seconds,
// silent, spool_frames, spool_bytes, spool_oldest_timestamp_seconds,
// frames_evicted_total{reason}, frames_quarantined_total{reason},
// clock_synced, clock_skew_seconds},
// besides forest_cloud_fleet_devices, forest_cloud_dead_letter_queue_messages
// and forest_cloud_status_reports_total{result}.
//
// The fleet page (fleetpage.go) is served at /fleet on http.listen to the
// networks in fleet.allow only (loopback by default), with an optional
// token or basic-auth password: one row per device (last seen, red when
// silent for fleet.silent_after of its intervals; spool depth and oldest
// unsent frame; evictions; coverage by hour; the latest stored frame's
// thumbnail with its mask; dead letters by reason), and a page per device
// with its frames of the last 24 hours. Thumbnails are made from the S3
// objects by at most fleet.thumb_workers at once and cached; dead letters
// are counted by reading through at most fleet.dlq_scan_limit of them while
// the page is viewed, at most every fleet.dlq_scan_interval.
//
// # Concurrency
//
// Service.Run owns every goroutine it starts: the fleet's status consumer,
// refresh loop and dead-letter scans (stopped with it), one session per
// broker connection, a pool of consumer.workers goroutines reading the delivery
// channel (prefetch amqp.prefetch bounds the messages held), the breaker's
// prober, the systemd notifier, and the HTTP server for /metrics, /healthz
// and /readyz. A session consumes in rounds: a round ends when the breaker
// opens, and the next starts when it closes. On connection loss the workers
// finish, the session is torn down (unacknowledged deliveries return to the
// queue) and a new one is made after a jittered backoff, with fresh
// notification channels. On cancellation, consumption stops, in-flight
// messages get consumer.shutdown_timeout to finish, the held acks are sent
// and the connection is closed, returning everything unacknowledged to the
// queue.
//
// Acks are coalesced: a stored message's ack is held for at most 50 ms,
// until half the prefetch left over by the workers is held (at most 16),
// or until no worker has a message in progress; then one ack with the
// multiple flag settles the run, which halves the broker's work per
// message. A held ack lost with its connection only means a redelivery,
// which finds its objects stored (a counted duplicate).
// Results are counted in forest_cloud_messages_total when the ack is sent.
package cloud
