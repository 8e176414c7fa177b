// Package agent is the on-device daemon behind the forest-agent command:
// it captures frames, segments them, spools them durably and drains the
// spool to RabbitMQ.
//
// # Data flow
//
//	source (dir | http | exec) ──► pipeline ──► spool ──► drain ──► uplink ──► broker
//	                               decode once, segment, filter,
//	                               encode, Put (durable)
//
// This package holds the configuration, the pipeline, the encoding and the
// drain, and runs them; package source captures, package status tracks
// progress and serves /metrics, /readyz and the status page.
//
// A source hands captures, one at a time, to the pipeline, which decodes
// the image once (segment.Decode, bounded by segment.max_pixels), segments
// it, applies the coverage filter, builds the transmitted encoding and the
// mask PNG, reads EXIF time, GPS and camera into Meta, and Puts the frame
// into the spool with a priority from its coverage. Put returns only when
// the frame is on stable storage; only then does the dir source delete or
// move the file. The drain takes batches from the spool, builds the
// wire messages, publishes them and acknowledges in the spool
// exactly the frames the broker confirmed; everything else is released and
// retried. Capture never waits for the uplink: the spool decouples them.
//
// The heartbeat (heartbeat.go) publishes the agent's status report
// (wire.Status: spool depth and oldest unsent frame, evictions, link,
// disk, coverage by hour) every uplink.status_interval, once the link is up
// after start, after each reconnect and at stop, on the uplink's side
// channel: never spooled, never behind frames; a report that cannot be sent
// is replaced by the next.
//
// # Guarantees
//
//   - A frame leaves the spool only after the broker confirmed it (or by a
//     counted spool eviction under spool.max_bytes, min_free_bytes or
//     max_age). Delivery is at least once; the frame id is stable across
//     retries and restarts.
//   - A frame's sequence number is its spool id: unique and increasing per
//     device across restarts and crashes. A dir-source file carries its key
//     (name, size, time) into the spool Put, which stores it in the same
//     transaction as the frame, so the file is spooled under one frame
//     id even when the agent crashes between spooling it and moving it.
//   - Capture failures (a failed command, an HTTP error, a file that is not
//     an image) are counted and logged; they never stop the agent.
//
// # Concurrency model
//
// Agent.Run starts and waits for: the capture goroutine (source and
// pipeline, one frame at a time), the drain goroutine, the heartbeat, the
// uplink's connection supervisor, and the HTTP server. Shutdown is ordered and
// bounded; see Agent.Run. Status and metrics are read concurrently under
// their own locks.
package agent
