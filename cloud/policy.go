package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Policy is the RabbitMQ policy that carries the frames queue's settings:
// the delivery limit, the dead-letter exchange and strategy, and the
// length limits. forest-cloud declares the queue with no argument but its
// type, so that these settings come from the policy and an operator can
// change them on a running queue (rabbitmqctl set_policy, the management
// API, or the definitions file), which queue arguments never allow.
//
// AMQP 0-9-1 offers no way to set or read a policy, and the management
// plugin may not be enabled, so forest-cloud does not apply the policy
// itself: `forest-cloud policy` prints it for the operator (as a
// rabbitmqctl command and as a definitions entry), and at start
// forest-cloud checks what it can check over AMQP: that the queue carries
// no arguments of an earlier version that would override the policy (see
// MigrateQueue).
type Policy struct {
	Name       string         `json:"name"`
	Vhost      string         `json:"vhost"`
	Pattern    string         `json:"pattern"`
	ApplyTo    string         `json:"apply-to"`
	Priority   int            `json:"priority"`
	Definition map[string]any `json:"definition"`
}

// PolicyFor returns the policy for cfg's frames queue.
func PolicyFor(cfg *Config) Policy {
	a := &cfg.AMQP
	def := map[string]any{
		"delivery-limit":       a.DeliveryLimit,
		"dead-letter-exchange": a.DeadLetterExchange,
		"dead-letter-strategy": a.DeadLetterStrategy,
		// Required by at-least-once dead-lettering; with a length limit it
		// makes the broker refuse (nack) new frames, which then wait in
		// the devices' spools, instead of dropping old ones.
		"overflow": "reject-publish",
	}
	if a.MaxLength > 0 {
		def["max-length"] = a.MaxLength
	}
	if a.MaxLengthBytes > 0 {
		def["max-length-bytes"] = a.MaxLengthBytes
	}
	return Policy{
		Name: a.PolicyName, Vhost: vhostOf(a.URL), Pattern: "^" + regexp.QuoteMeta(a.Queue) + "$",
		ApplyTo: "queues", Priority: a.PolicyPriority, Definition: def,
	}
}

// DefinitionJSON is the policy's definition as JSON.
func (p Policy) DefinitionJSON() string {
	b, _ := json.Marshal(p.Definition) // map keys are sorted
	return string(b)
}

// Command is the rabbitmqctl command line that applies the policy.
func (p Policy) Command() string {
	return fmt.Sprintf("rabbitmqctl set_policy -p %s --apply-to %s --priority %d %s %s %s",
		shellQuote(p.Vhost), p.ApplyTo, p.Priority, shellQuote(p.Name), shellQuote(p.Pattern), shellQuote(p.DefinitionJSON()))
}

func shellQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n'\"\\$`!*?[]{}()<>|&;#~^") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// vhostOf returns the vhost of an AMQP URL ("/" when it names none).
func vhostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Path == "" || u.Path == "/" {
		return "/"
	}
	return strings.TrimPrefix(u.Path, "/")
}

// queueArgs are the arguments forest-cloud declares the frames queue
// with: only its type. Everything else comes from the policy.
var queueArgs = amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum}

// declareQueue declares a quorum queue with queueArgs. If the queue exists
// with other arguments (declared by an earlier version of forest-cloud, or
// by an old definitions file) the broker refuses with PRECONDITION_FAILED;
// the queue is then used as it is and legacy is true.
func declareQueue(conn *amqp.Connection, name string) (legacy bool, err error) {
	err = withChannel(conn, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(name, true, false, false, false, queueArgs)
		return err
	})
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		return false, err
	}
	err = withChannel(conn, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(name, true, false, false, false, queueArgs)
		return err
	})
	return err == nil, err
}

// withChannel runs f on a channel of its own, closed afterwards (a
// refused declaration closes the channel it was made on).
func withChannel(conn *amqp.Connection, f func(*amqp.Channel) error) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	return f(ch)
}

// migrationQueue is the temporary queue of MigrateQueue.
func migrationQueue(a *AMQPConfig) string { return a.Queue + ".migrating" }

// MigrateQueue re-creates the frames queue without the arguments an earlier
// version declared it with (x-delivery-limit, x-dead-letter-exchange),
// which override a policy and cannot be changed on a live queue, and
// returns how many messages it moved. The forest-cloud replicas must be
// stopped (it refuses while the queue has consumers); devices may keep
// publishing.
//
// Steps, each safe to repeat (run it again after an interruption):
// declare and bind a temporary queue (new frames land there too), unbind
// the old queue, move its messages into the temporary one, delete it,
// declare it again without arguments and bind it, unbind the temporary
// queue, move its messages back and delete it. A message is moved by
// publishing a copy with a publisher confirm (by forest-cloud's own user,
// its publisher kept in x-forest-user-id as for parked messages) and only
// then acking the original, so an interruption may duplicate a message,
// never lose one; duplicates are stored once.
func MigrateQueue(ctx context.Context, cfg *Config, log func(format string, args ...any)) (moved int, err error) {
	urls, err := cfg.BrokerURLs()
	if err != nil {
		return 0, err
	}
	own := userOf(urls[0])
	if own == "" {
		return 0, errors.New("migrate: the broker user must be known (not EXTERNAL authentication) to carry each message's publisher")
	}
	conn, _, err := newBrokers(urls, cfg.AMQP.Heartbeat, "").dial()
	if err != nil {
		return 0, fmt.Errorf("dial broker: %w", err)
	}
	defer conn.Close()
	a := &cfg.AMQP
	tmp := migrationQueue(a)
	exists := func(q string) (amqp.Queue, bool, error) {
		var out amqp.Queue
		err := withChannel(conn, func(ch *amqp.Channel) error {
			var err error
			out, err = ch.QueueDeclarePassive(q, true, false, false, false, nil)
			return err
		})
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return out, false, nil
		}
		return out, err == nil, err
	}
	q, found, err := exists(a.Queue)
	if err != nil {
		return 0, err
	}
	if found && q.Consumers > 0 {
		return 0, fmt.Errorf("migrate: queue %s has %d consumer(s): stop the forest-cloud replicas first", a.Queue, q.Consumers)
	}
	_, resuming, err := exists(tmp)
	if err != nil {
		return 0, err
	}
	legacy := false
	if found {
		if legacy, err = declareQueue(conn, a.Queue); err != nil {
			return 0, err
		}
	}
	if !legacy && !resuming {
		log("queue %s has no arguments that override the policy: nothing to migrate", a.Queue)
		return 0, nil
	}
	ch, err := conn.Channel()
	if err != nil {
		return 0, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return 0, fmt.Errorf("enable confirms: %w", err)
	}
	bind := func(q string) error {
		if err := ch.QueueBind(q, a.BindingKey, a.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind %s: %w", q, err)
		}
		return nil
	}
	unbind := func(q string) error {
		if err := ch.QueueUnbind(q, a.BindingKey, a.Exchange, nil); err != nil {
			return fmt.Errorf("unbind %s: %w", q, err)
		}
		return nil
	}
	move := func(from, to string) error {
		n, err := moveMessages(ctx, ch, cfg, own, from, to)
		moved += n
		log("moved %d message(s) from %s to %s", n, from, to)
		return err
	}
	if legacy {
		if _, err := ch.QueueDeclare(tmp, true, false, false, false, queueArgs); err != nil {
			return moved, fmt.Errorf("declare %s: %w", tmp, err)
		}
		if err := bind(tmp); err != nil {
			return moved, err
		}
		if err := unbind(a.Queue); err != nil {
			return moved, err
		}
		if err := move(a.Queue, tmp); err != nil {
			return moved, err
		}
		if err := deleteEmpty(ch, a.Queue); err != nil {
			return moved, err
		}
		log("deleted %s (declared with arguments)", a.Queue)
	}
	if _, err := ch.QueueDeclare(a.Queue, true, false, false, false, queueArgs); err != nil {
		return moved, fmt.Errorf("declare %s: %w", a.Queue, err)
	}
	if err := bind(a.Queue); err != nil {
		return moved, err
	}
	if err := unbind(tmp); err != nil {
		return moved, err
	}
	if err := move(tmp, a.Queue); err != nil {
		return moved, err
	}
	if err := deleteEmpty(ch, tmp); err != nil {
		return moved, err
	}
	log("queue %s declared again without arguments; its settings now come from the policy (forest-cloud policy)", a.Queue)
	return moved, nil
}

// deleteEmpty deletes an unbound queue after checking that it is empty
// (quorum queues refuse the if-empty flag of queue.delete; nothing routes
// to an unbound queue without consumers, so the check holds).
func deleteEmpty(ch *amqp.Channel, q string) error {
	st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", q, err)
	}
	if st.Messages != 0 || st.Consumers != 0 {
		return fmt.Errorf("delete %s: %d message(s) and %d consumer(s) left; run the migration again", q, st.Messages, st.Consumers)
	}
	if _, err := ch.QueueDelete(q, false, false, false); err != nil {
		return fmt.Errorf("delete %s: %w", q, err)
	}
	return nil
}

// moveMessages moves every message of queue from to queue to, each
// published with a confirm before the original is acked.
func moveMessages(ctx context.Context, ch *amqp.Channel, cfg *Config, own, from, to string) (int, error) {
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		d, ok, err := ch.Get(from, false)
		if err != nil {
			return n, fmt.Errorf("get from %s: %w", from, err)
		}
		if !ok {
			return n, nil
		}
		p := copyOf(&d, own)
		cctx, cancel := context.WithTimeout(ctx, cfg.AMQP.ConfirmTimeout)
		dc, err := ch.PublishWithDeferredConfirmWithContext(cctx, "", to, false, false, p)
		if err == nil {
			var ok bool
			if ok, err = dc.WaitContext(cctx); err == nil && !ok {
				err = errors.New("broker nacked the copy")
			}
		}
		cancel()
		if err != nil {
			_ = d.Nack(false, true)
			return n, fmt.Errorf("move %s to %s: %w", d.MessageId, to, err)
		}
		if err := d.Ack(false); err != nil {
			return n, fmt.Errorf("remove %s from %s: %w", d.MessageId, from, err)
		}
		n++
	}
}

// legacyArgsWarning is logged when the frames queue carries arguments.
func legacyArgsWarning(a *AMQPConfig) string {
	return "queue " + a.Queue + " was declared with arguments by an earlier version: its x-delivery-limit and " +
		"x-dead-letter-exchange override the policy (a policy may lower the delivery limit, never raise it or change " +
		"the exchange); stop the replicas and run `forest-cloud queue migrate` (see README, Queue settings)"
}
