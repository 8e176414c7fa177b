package cloud

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/wire"
)

// StatusSchema is the schema name of every stored status record.
const StatusSchema = "forest.cloud.status.v1"

// StatusRecord is the object {fleet.status_prefix}/{device}.json: a
// device's latest status report (wire.Status) and when forest-cloud
// received it. Each new report replaces it.
type StatusRecord struct {
	Schema     string       `json:"schema"`
	ReceivedAt time.Time    `json:"received_at"`
	User       string       `json:"user,omitempty"`
	Status     *wire.Status `json:"status"`
}

// StatusKey returns the key of a device's status record:
// prefix/device.json.
func StatusKey(prefix, device string) string { return prefix + "/" + device + ".json" }

// statusQueueTTL bounds how long a report waits in the status queue: one
// that old says little the next one will not.
const statusQueueTTL = time.Hour

// statusPutTimeout bounds the S3 write of one report; reports are not
// retried (the next one supersedes a lost one).
const statusPutTimeout = 5 * time.Second

// consumeStatus consumes status reports until ctx ends, on a connection of
// its own so that nothing about them (a slow S3, the queue's home node
// being down, a declare refused) can hold back frames. It reconnects with
// jittered backoff.
func (f *fleet) consumeStatus(ctx context.Context) {
	a := &f.s.cfg.AMQP
	delay := a.ReconnectMin
	for {
		start := time.Now()
		err := f.statusSession(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			delay = a.ReconnectMin
		}
		d := delay/2 + rand.N(delay/2+1)
		f.log.Warn("status consumer stopped; reconnecting (frames are not affected)", "err", err, "retry_in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		delay = min(delay*2, a.ReconnectMax)
	}
}

// statusSession runs one connection of the status consumer.
func (f *fleet) statusSession(ctx context.Context) error {
	cfg := f.s.cfg
	if f.brokers == nil {
		f.brokers = f.s.newBrokers()
	}
	conn, _, err := f.brokers.dial()
	if err != nil {
		return fmt.Errorf("dial broker: %w", err)
	}
	defer conn.Close()
	defer func() {
		if ctx.Err() == nil {
			f.brokers.lost()
		}
	}()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	if err := ch.ExchangeDeclare(cfg.AMQP.Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", cfg.AMQP.Exchange, err)
	}
	// Auto-delete: with no forest-cloud running no reports are kept. The
	// length and age bounds keep a slow consumer from piling them up.
	if _, err := ch.QueueDeclare(cfg.Fleet.StatusQueue, false, true, false, false, amqp.Table{
		amqp.QueueTypeArg: amqp.QueueTypeClassic,
		"x-max-length":    int64(10 * cfg.Fleet.MaxDevices),
		"x-overflow":      "drop-head",
		"x-message-ttl":   statusQueueTTL.Milliseconds(),
	}); err != nil {
		return fmt.Errorf("declare queue %s: %w", cfg.Fleet.StatusQueue, err)
	}
	if err := ch.QueueBind(cfg.Fleet.StatusQueue, cfg.Fleet.StatusBindingKey, cfg.AMQP.Exchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s: %w", cfg.Fleet.StatusQueue, err)
	}
	if err := ch.Qos(16, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	pub, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open publish channel: %w", err)
	}
	if err := pub.Confirm(false); err != nil {
		return fmt.Errorf("enable confirms: %w", err)
	}
	deliveries, err := ch.Consume(cfg.Fleet.StatusQueue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", cfg.Fleet.StatusQueue, err)
	}
	f.log.Info("consuming status reports", "queue", cfg.Fleet.StatusQueue)
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	depth := time.NewTicker(cfg.Fleet.Refresh)
	defer depth.Stop()
	f.dlqDepth(ch)
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-closed:
			return fmt.Errorf("connection closed: %w", amqpErr(e))
		case <-depth.C:
			f.dlqDepth(ch)
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("status consumer cancelled by the broker")
			}
			f.handleStatus(ctx, pub, &d)
		}
	}
}

// dlqDepth records the dead-letter queue's length for the metrics.
func (f *fleet) dlqDepth(ch *amqp.Channel) {
	a := &f.s.cfg.AMQP
	q, err := ch.QueueDeclarePassive(a.DeadLetterQueue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
	if err != nil {
		f.log.Debug("dead-letter queue length", "err", err)
		return
	}
	f.dlqMessages.Store(int64(q.Messages))
}

// handleStatus checks one report, keeps it, stores it in S3 and acks it.
// A report that breaks the protocol or comes from a user that may not
// speak for its device is dead-lettered like a bad frame; one from a
// device beyond fleet.max_devices, one older than what is known, and one
// S3 does not take are dropped (the next report supersedes it). Nothing
// is requeued, so nothing piles up.
func (f *fleet) handleStatus(ctx context.Context, pub *amqp.Channel, d *amqp.Delivery) {
	m := toMessage(d)
	now := time.Now()
	result := "stored"
	defer func() {
		if err := d.Ack(false); err != nil {
			f.log.Debug("ack status report", "err", err)
		}
		f.statusMsgs.WithLabelValues(result).Inc()
	}()
	st, err := wire.DecodeStatus(m)
	if err == nil {
		err = f.s.checkIdentity(m, st.Device)
	} else {
		var ve *wire.VersionError
		reason := ReasonInvalid
		if errors.As(err, &ve) {
			reason = ReasonSchema
		}
		err = poison(reason, err)
	}
	if err != nil {
		var pe *PoisonError
		if errors.As(err, &pe) {
			result = "dead_lettered"
			if derr := f.s.deadLetter(ctx, pub, d, pe); derr != nil {
				result = "dropped"
				f.log.Warn("dead-lettering a bad status report failed; dropped", "reason", string(pe.Reason), "err", derr)
				return
			}
			f.log.Warn("status report dead-lettered", "reason", string(pe.Reason), "err", pe.Err, "routing_key", d.RoutingKey)
		}
		return
	}
	rec := &StatusRecord{Schema: StatusSchema, ReceivedAt: now.UTC(), User: m.UserID, Status: st}
	switch f.keep(rec) {
	case keepUnknown:
		result = "unknown_device"
		f.log.Debug("status report of a device beyond fleet.max_devices dropped", "device", st.Device)
		return
	case keepStale:
		result = "stale"
		return
	}
	pctx, cancel := context.WithTimeout(ctx, min(statusPutTimeout, f.s.cfg.S3.RequestTimeout))
	defer cancel()
	if err := f.putStatus(pctx, rec); err != nil {
		result = "not_stored"
		if f.statusPutFailing.CompareAndSwap(false, true) {
			f.log.Warn("status reports cannot be stored in S3; shown from memory until S3 takes them again", "err", err)
		}
		return
	}
	if f.statusPutFailing.CompareAndSwap(true, false) {
		f.log.Info("status reports are stored in S3 again")
	}
}

// putStatus writes rec to its key, replacing the previous report.
func (f *fleet) putStatus(ctx context.Context, rec *StatusRecord) error {
	body, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	st := f.s.store
	in := &s3.PutObjectInput{
		Bucket: aws.String(st.bucket), Key: aws.String(StatusKey(f.s.cfg.Fleet.StatusPrefix, rec.Status.Device)),
		Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))), ContentType: aws.String("application/json"),
	}
	if st.checksum {
		sum := sha256.Sum256(body)
		in.ChecksumAlgorithm = types.ChecksumAlgorithmSha256
		in.ChecksumSHA256 = aws.String(base64.StdEncoding.EncodeToString(sum[:]))
	}
	if _, err := st.c.PutObject(ctx, in); err != nil {
		return fmt.Errorf("put status of %s: %w", rec.Status.Device, err)
	}
	return nil
}

// loadStatuses reads the stored reports that changed since the last call
// (by ETag) and keeps them. It lists at most 2 × fleet.max_devices keys.
func (f *fleet) loadStatuses(ctx context.Context) error {
	st := f.s.store
	prefix := f.s.cfg.Fleet.StatusPrefix + "/"
	var token *string
	seen := 0
	for {
		out, err := st.c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(st.bucket), Prefix: aws.String(prefix), ContinuationToken: token})
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		for _, o := range out.Contents {
			key := aws.ToString(o.Key)
			dev, ok := strings.CutSuffix(strings.TrimPrefix(key, prefix), ".json")
			if !ok || !wire.ValidID(dev) {
				continue
			}
			seen++
			etag := aws.ToString(o.ETag)
			if !f.changed(key, etag) {
				continue
			}
			b, found, err := st.get(ctx, key)
			if err != nil || !found {
				continue
			}
			var rec StatusRecord
			if err := json.Unmarshal(b, &rec); err != nil || rec.Status == nil || rec.Status.Device != dev {
				f.log.Warn("stored status record unreadable; ignored", "key", key, "err", err)
				f.seenETag(key, etag)
				continue
			}
			f.keep(&rec)
			f.seenETag(key, etag)
		}
		if !aws.ToBool(out.IsTruncated) || seen >= 2*f.s.cfg.Fleet.MaxDevices {
			return nil
		}
		token = out.NextContinuationToken
	}
}
