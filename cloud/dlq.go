package cloud

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/wire"
)

// DeadLetter describes one message in the dead-letter queue.
type DeadLetter struct {
	MessageID   string `json:"message_id"`
	RoutingKey  string `json:"routing_key"`
	ContentType string `json:"content_type"`
	Type        string `json:"type"`
	// User is the original publisher's user_id, if known.
	User string `json:"user"`
	// Reason is the x-forest-reason code, or for a message dead-lettered by
	// the broker itself the x-death reason (e.g. "delivery_limit").
	Reason string `json:"reason"`
	// Detail is the error text recorded with the reason.
	Detail string `json:"detail"`
	// DeadLetteredAt is the RFC 3339 time it was dead-lettered.
	DeadLetteredAt string `json:"dead_lettered_at"`
	Bytes          int    `json:"bytes"`
}

// DLQOptions select dead letters.
type DLQOptions struct {
	// Limit bounds how many messages are selected (0: all present when
	// the operation starts).
	Limit int
	// Reason, if set, selects only dead letters with this reason code.
	Reason string
	// OlderThan, if set, selects only dead letters dead-lettered at least
	// this long ago (by x-forest-dead-lettered-at, or the broker's x-death
	// time); one whose time is unknown is not selected.
	OlderThan time.Duration
	// DryRun makes PurgeDeadLetters and ExportDeadLetters count (and
	// export) without removing anything.
	DryRun bool
	// Now is the time OlderThan counts from (zero: time.Now()).
	Now time.Time
}

// selects reports whether opts select dl.
func (opts DLQOptions) selects(dl DeadLetter) bool {
	if opts.Reason != "" && dl.Reason != opts.Reason {
		return false
	}
	if opts.OlderThan > 0 {
		at, err := time.Parse(time.RFC3339Nano, dl.DeadLetteredAt)
		now := opts.Now
		if now.IsZero() {
			now = time.Now()
		}
		if err != nil || now.Sub(at) < opts.OlderThan {
			return false
		}
	}
	return true
}

// ListDeadLetters returns the dead letters without removing them: they are
// fetched unacknowledged and returned to the queue when the channel closes.
func ListDeadLetters(ctx context.Context, cfg *Config, opts DLQOptions) ([]DeadLetter, error) {
	var out []DeadLetter
	err := walkDLQ(ctx, cfg, opts, func(_ *amqp.Channel, d *amqp.Delivery, own string) error {
		out = append(out, describe(d, own))
		return nil
	})
	return out, err
}

// RequeueDeadLetters moves dead letters back to the main queue and returns
// how many it moved. Each is published to the queue with a confirm (the
// routing key and the original user in x-forest-* headers, user_id set to
// the consumer's own user) and only then removed from the dead-letter queue;
// a crash in between duplicates, never loses, a message.
func RequeueDeadLetters(ctx context.Context, cfg *Config, opts DLQOptions) (int, error) {
	n := 0
	err := walkDLQ(ctx, cfg, opts, func(ch *amqp.Channel, d *amqp.Delivery, own string) error {
		dl := describe(d, own)
		h := amqp.Table{}
		for k, v := range d.Headers {
			if strings.HasPrefix(k, "x-death") || strings.HasPrefix(k, "x-first-death") || strings.HasPrefix(k, "x-last-death") ||
				k == "x-delivery-count" || k == HeaderReason || k == HeaderReasonDetail || k == HeaderDeadLetteredAt {
				continue
			}
			h[k] = v
		}
		h[HeaderRoutingKey] = dl.RoutingKey
		if dl.User != "" {
			h[HeaderUserID] = dl.User
		}
		p := amqp.Publishing{
			Headers: h, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding, DeliveryMode: amqp.Persistent,
			CorrelationId: d.CorrelationId, MessageId: d.MessageId, Timestamp: d.Timestamp, Type: d.Type, AppId: d.AppId,
			UserId: own, Body: d.Body,
		}
		cctx, cancel := context.WithTimeout(ctx, cfg.AMQP.ConfirmTimeout)
		defer cancel()
		dc, err := ch.PublishWithDeferredConfirmWithContext(cctx, "", cfg.AMQP.Queue, true, false, p)
		if err != nil {
			return fmt.Errorf("requeue %s: %w", d.MessageId, err)
		}
		if ok, err := dc.WaitContext(cctx); err != nil || !ok {
			return fmt.Errorf("requeue %s: not confirmed: %w", d.MessageId, errors.Join(err, errors.New("broker nack")))
		}
		if err := d.Ack(false); err != nil {
			return fmt.Errorf("remove %s from the dead-letter queue: %w", d.MessageId, err)
		}
		n++
		return nil
	})
	return n, err
}

// PurgeDeadLetters removes the selected dead letters for good and returns
// how many it removed (with DryRun: how many it would remove, removing
// none).
func PurgeDeadLetters(ctx context.Context, cfg *Config, opts DLQOptions) (int, error) {
	n := 0
	err := walkDLQ(ctx, cfg, opts, func(_ *amqp.Channel, d *amqp.Delivery, _ string) error {
		if !opts.DryRun {
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("remove %s: %w", d.MessageId, err)
			}
		}
		n++
		return nil
	})
	return n, err
}

// Export is the metadata file ExportDeadLetters writes beside each body.
type Export struct {
	DeadLetter
	// SHA256 is the hex SHA-256 of the body file.
	SHA256 string `json:"sha256"`
	// Body is the body file's name (in the same directory).
	Body string `json:"body"`
	// Properties are the AMQP properties of the dead letter.
	Properties map[string]any `json:"properties"`
	// Headers are its AMQP headers as received.
	Headers map[string]any `json:"headers"`
}

// ExportDeadLetters writes each selected dead letter into dir (made if
// missing) as two files, NAME.body (the body as received) and NAME.json
// (an Export: reason, properties and headers), where NAME is the message
// id (made safe for a file name) and the start of the body's SHA-256, and
// returns how many it wrote. Unless DryRun is set, a dead letter is then
// removed from the queue, but only after both files and the directory were
// synced to disk: an interruption leaves a message exported twice, never
// lost. Exporting the same dead letter again rewrites the same files.
func ExportDeadLetters(ctx context.Context, cfg *Config, opts DLQOptions, dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	n := 0
	err := walkDLQ(ctx, cfg, opts, func(_ *amqp.Channel, d *amqp.Delivery, own string) error {
		sum := sha256.Sum256(d.Body)
		hexSum := hex.EncodeToString(sum[:])
		id := strings.ReplaceAll(wire.CleanName(d.MessageId), "/", "_")
		if id == "" {
			id = "message"
		}
		name := id + "-" + hexSum[:16]
		meta := Export{DeadLetter: describe(d, own), SHA256: hexSum, Body: name + ".body", Headers: d.Headers,
			Properties: map[string]any{
				"content_type": d.ContentType, "content_encoding": d.ContentEncoding, "delivery_mode": d.DeliveryMode,
				"priority": d.Priority, "correlation_id": d.CorrelationId, "reply_to": d.ReplyTo, "expiration": d.Expiration,
				"message_id": d.MessageId, "timestamp": d.Timestamp, "type": d.Type, "user_id": d.UserId, "app_id": d.AppId,
				"exchange": d.Exchange, "routing_key": d.RoutingKey,
			}}
		mb, err := json.MarshalIndent(meta, "", "  ")
		if err != nil {
			return fmt.Errorf("export %s: %w", d.MessageId, err)
		}
		if err := writeSynced(filepath.Join(dir, name+".body"), d.Body); err != nil {
			return err
		}
		if err := writeSynced(filepath.Join(dir, name+".json"), append(mb, '\n')); err != nil {
			return err
		}
		if err := syncDir(dir); err != nil {
			return err
		}
		if !opts.DryRun {
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("remove %s: %w", d.MessageId, err)
			}
		}
		n++
		return nil
	})
	return n, err
}

// writeSynced writes b to path through a synced temporary file and a
// rename, so that path holds all of b or what it held before.
func writeSynced(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".export-*")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("export %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("export: sync %s: %w", dir, err)
	}
	return nil
}

// walkDLQ calls fn with each dead letter and the broker user of cfg.
func walkDLQ(ctx context.Context, cfg *Config, opts DLQOptions, fn func(ch *amqp.Channel, d *amqp.Delivery, own string) error) error {
	urls, err := cfg.BrokerURLs()
	if err != nil {
		return err
	}
	own := userOf(urls[0])
	conn, _, err := newBrokers(urls, cfg.AMQP.Heartbeat, "").dial()
	if err != nil {
		return fmt.Errorf("dial broker: %w", err)
	}
	defer conn.Close()
	if _, err := declare(conn, &cfg.AMQP); err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("enable confirms: %w", err)
	}
	var q amqp.Queue
	// Messages another dlq command just looked at return to the queue
	// asynchronously: give an empty-looking queue a moment.
	for try := 0; ; try++ {
		q, err = ch.QueueDeclarePassive(cfg.AMQP.DeadLetterQueue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
		if err != nil {
			return fmt.Errorf("inspect %s: %w", cfg.AMQP.DeadLetterQueue, err)
		}
		if q.Messages > 0 || try == 3 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
	// Whatever was fetched and not removed goes back to the queue now
	// (also returned when the channel closes).
	var last uint64
	defer func() {
		if last != 0 {
			_ = ch.Nack(last, true, true)
		}
	}()
	limit := q.Messages
	if opts.Limit > 0 && opts.Limit < limit {
		limit = opts.Limit
	}
	for i := 0; i < q.Messages && limit > 0; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		d, ok, err := ch.Get(cfg.AMQP.DeadLetterQueue, false)
		if err != nil {
			return fmt.Errorf("get from %s: %w", cfg.AMQP.DeadLetterQueue, err)
		}
		if !ok {
			break
		}
		last = d.DeliveryTag
		if !opts.selects(describe(&d, own)) {
			continue // left unacknowledged: returned on close
		}
		limit--
		if err := fn(ch, &d, own); err != nil {
			return err
		}
	}
	return nil
}

func describe(d *amqp.Delivery, own string) DeadLetter {
	dl := DeadLetter{
		MessageID: d.MessageId, RoutingKey: d.RoutingKey, ContentType: d.ContentType, Type: d.Type,
		User: d.UserId, Bytes: len(d.Body),
	}
	str := func(k string) string { s, _ := d.Headers[k].(string); return s }
	if own != "" && d.UserId == own {
		// Published by forest-cloud (validated by the broker), so its
		// record of the original user can be trusted.
		dl.User = str(HeaderUserID)
	}
	if v := str(HeaderRoutingKey); v != "" {
		dl.RoutingKey = v
	}
	dl.Reason, dl.Detail, dl.DeadLetteredAt = str(HeaderReason), str(HeaderReasonDetail), str(HeaderDeadLetteredAt)
	if deaths, ok := d.Headers["x-death"].([]any); ok && len(deaths) > 0 {
		if t, ok := deaths[0].(amqp.Table); ok {
			if dl.Reason == "" {
				r, _ := t["reason"].(string)
				dl.Reason = r
				if r == "delivery_limit" {
					dl.Detail = "delivered more than amqp.delivery_limit times without being settled"
				}
				if ts, ok := t["time"].(time.Time); ok {
					dl.DeadLetteredAt = ts.UTC().Format(time.RFC3339)
				}
			}
			if keys, ok := t["routing-keys"].([]any); ok && len(keys) > 0 && str(HeaderRoutingKey) == "" {
				dl.RoutingKey, _ = keys[0].(string)
			}
		}
	}
	return dl
}

// userOf returns the user name of an AMQP URL: "guest" when the URL names
// none (amqp091's default), "" for EXTERNAL (certificate) authentication,
// where the broker user is not known to the client.
func userOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	if u.User != nil && u.User.Username() != "" {
		return u.User.Username()
	}
	if u.Query().Get("auth_mechanism") == "external" {
		return ""
	}
	return "guest"
}
