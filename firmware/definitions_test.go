package firmware

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/internal/rabbittest"
)

// The example users of rabbitmq/definitions.json and the passwords their
// example hashes encode. For tests only: a deployment replaces the hashes.
const (
	devicePassword   = "dev-a-example-only"
	consumerPassword = "forest-cloud-example-only"
	defsVhost        = "forest"
	exchange         = "forest.frames"
	queue            = "forest.cloud.frames"
	dlx              = "forest.cloud.dlx"
	dlq              = "forest.cloud.frames.dlq"
	deliveryLimit    = 20
)

type definitions struct {
	Users []struct {
		Name, PasswordHash, HashingAlgorithm string
	} `json:"users"`
}

func (d *definitions) UnmarshalJSON(b []byte) error {
	var raw struct {
		Users []struct {
			Name             string `json:"name"`
			PasswordHash     string `json:"password_hash"`
			HashingAlgorithm string `json:"hashing_algorithm"`
		} `json:"users"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	for _, u := range raw.Users {
		d.Users = append(d.Users, struct{ Name, PasswordHash, HashingAlgorithm string }{u.Name, u.PasswordHash, u.HashingAlgorithm})
	}
	return nil
}

// TestDefinitionHashes checks that the example hashes are RabbitMQ's salted
// SHA-256 (base64 of 4-byte salt || sha256(salt || password)) of the example
// passwords, the scheme README.md tells operators to use.
func TestDefinitionHashes(t *testing.T) {
	raw, err := os.ReadFile("rabbitmq/definitions.json")
	if err != nil {
		t.Fatal(err)
	}
	var d definitions
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"dev-a": devicePassword, "forest-cloud": consumerPassword}
	for _, u := range d.Users {
		pw, ok := want[u.Name]
		if !ok {
			t.Errorf("unexpected user %q", u.Name)
			continue
		}
		delete(want, u.Name)
		if u.HashingAlgorithm != "rabbit_password_hashing_sha256" {
			t.Errorf("%s: hashing_algorithm %q", u.Name, u.HashingAlgorithm)
		}
		h, err := base64.StdEncoding.DecodeString(u.PasswordHash)
		if err != nil || len(h) != 4+sha256.Size {
			t.Errorf("%s: password_hash is not base64 of salt+sha256 (%v)", u.Name, err)
			continue
		}
		sum := sha256.Sum256(append(append([]byte{}, h[:4]...), pw...))
		if !bytes.Equal(sum[:], h[4:]) {
			t.Errorf("%s: password_hash does not encode the example password", u.Name)
		}
	}
	for u := range want {
		t.Errorf("user %q missing", u)
	}
}

// TestDefinitionsImport imports rabbitmq/definitions.json into a real
// broker and proves what each user may do.
func TestDefinitionsImport(t *testing.T) {
	b := rabbittest.Shared(t)
	// Registered first, so it runs after every connection is closed.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	path, err := filepath.Abs("rabbitmq/definitions.json")
	if err != nil {
		t.Fatal(err)
	}
	b.Ctl(t, "import_definitions", path)
	t.Cleanup(func() {
		for _, args := range [][]string{{"delete_vhost", defsVhost}, {"delete_user", "dev-a"}, {"delete_user", "forest-cloud"}} {
			if out, err := b.CtlErr(args...); err != nil {
				t.Errorf("cleanup %v: %v: %s", args, err, out)
			}
		}
	})
	device := b.URLFor("dev-a", devicePassword, defsVhost)
	consumer := b.URLFor("forest-cloud", consumerPassword, defsVhost)

	t.Run("consumer declares the topology forest-cloud declares", func(t *testing.T) {
		// The same arguments as cloud.declare (the type only: the rest is
		// the policy's): a difference would make forest-cloud report a
		// queue of an earlier version.
		ch := channel(t, consumer)
		must(t, ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil))
		must(t, ch.ExchangeDeclare(dlx, amqp.ExchangeFanout, true, false, false, false, nil))
		_, err := ch.QueueDeclare(dlq, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
		must(t, err)
		must(t, ch.QueueBind(dlq, "", dlx, false, nil))
		_, err = ch.QueueDeclare(queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
		must(t, err)
		must(t, ch.QueueBind(queue, "frames.#", exchange, false, nil))
	})

	body := []byte("frame from dev-a " + time.Now().Format(time.RFC3339Nano))
	t.Run("device publishes its own routing key", func(t *testing.T) {
		ch := channel(t, device)
		must(t, ch.Confirm(false))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		returns := ch.NotifyReturn(make(chan amqp.Return, 1))
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, "frames.dev-a", true, false, amqp.Publishing{
			UserId: "dev-a", DeliveryMode: amqp.Persistent, Body: body,
		})
		must(t, err)
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			t.Fatalf("publish not confirmed: ok=%v err=%v", ok, err)
		}
		select {
		case r := <-returns:
			t.Fatalf("message returned unroutable: %s", r.ReplyText)
		default:
		}
	})

	t.Run("consumer receives it", func(t *testing.T) {
		ch := channel(t, consumer)
		must(t, ch.Qos(1, 0, false))
		d, err := ch.Consume(queue, "", false, false, false, false, nil)
		must(t, err)
		select {
		case m := <-d:
			if !bytes.Equal(m.Body, body) || m.UserId != "dev-a" || m.RoutingKey != "frames.dev-a" {
				t.Fatalf("got body %q user_id %q key %q", m.Body, m.UserId, m.RoutingKey)
			}
			must(t, m.Ack(false))
		case <-time.After(10 * time.Second):
			t.Fatal("no message in the queue")
		}
	})

	refused := func(t *testing.T, want int, op func(ch *amqp.Channel) error) {
		t.Helper()
		ch := channel(t, device)
		closed := ch.NotifyClose(make(chan *amqp.Error, 1))
		err := op(ch)
		var ae *amqp.Error
		if !errors.As(err, &ae) {
			select {
			case ae = <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("not refused: the channel stays open")
			}
		}
		if ae == nil || ae.Code != want {
			t.Fatalf("got %v, want AMQP error %d", ae, want)
		}
	}
	t.Run("device cannot publish another device's key", func(t *testing.T) {
		refused(t, amqp.AccessRefused, func(ch *amqp.Channel) error {
			return ch.PublishWithContext(context.Background(), exchange, "frames.dev-b", false, false, amqp.Publishing{UserId: "dev-a", Body: body})
		})
	})
	t.Run("device cannot claim another user_id", func(t *testing.T) {
		refused(t, amqp.PreconditionFailed, func(ch *amqp.Channel) error {
			return ch.PublishWithContext(context.Background(), exchange, "frames.dev-a", false, false, amqp.Publishing{UserId: "forest-cloud", Body: body})
		})
	})
	t.Run("device cannot consume", func(t *testing.T) {
		refused(t, amqp.AccessRefused, func(ch *amqp.Channel) error {
			_, err := ch.Consume(queue, "", false, false, false, false, nil)
			return err
		})
	})
	t.Run("device cannot declare", func(t *testing.T) {
		refused(t, amqp.AccessRefused, func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare("dev-a.own", false, true, false, false, nil)
			return err
		})
	})
	t.Run("a message that keeps failing is dead-lettered", func(t *testing.T) {
		// Publish as dev-a, reject it deliveryLimit+1 times as forest-cloud:
		// the policy's delivery limit and dead-letter exchange then move it
		// to the dead-letter queue.
		pub := channel(t, device)
		must(t, pub.Confirm(false))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		poison := []byte("poison")
		dc, err := pub.PublishWithDeferredConfirmWithContext(ctx, exchange, "frames.dev-a", false, false, amqp.Publishing{UserId: "dev-a", Body: poison})
		must(t, err)
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("publish not confirmed: %v %v", ok, err)
		}
		ch := channel(t, consumer)
		for i := 0; i <= deliveryLimit; i++ {
			m := get(ctx, t, ch, queue)
			if !bytes.Equal(m.Body, poison) {
				t.Fatalf("delivery %d: got %q", i, m.Body)
			}
			must(t, m.Nack(false, true))
		}
		if m := get(ctx, t, ch, dlq); !bytes.Equal(m.Body, poison) {
			t.Fatalf("dead-letter queue holds %q", m.Body)
		} else {
			must(t, m.Ack(false))
		}
	})
}

// get polls queue until a message arrives or ctx ends.
func get(ctx context.Context, t *testing.T, ch *amqp.Channel, q string) amqp.Delivery {
	t.Helper()
	for {
		m, ok, err := ch.Get(q, false)
		must(t, err)
		if ok {
			return m
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no message in %s", q)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// channel dials url and opens a channel, both closed on cleanup.
func channel(t *testing.T, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(10 * time.Second)})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestDefinitionsPolicy: the policy in definitions.json is the one
// forest-cloud prints for its default settings (`forest-cloud policy`), so
// the two never drift apart.
func TestDefinitionsPolicy(t *testing.T) {
	raw, err := os.ReadFile("rabbitmq/definitions.json")
	if err != nil {
		t.Fatal(err)
	}
	var defs struct {
		Policies []cloud.Policy `json:"policies"`
	}
	if err := json.Unmarshal(raw, &defs); err != nil {
		t.Fatal(err)
	}
	cfg, err := cloud.ParseConfig([]byte("amqp: {url: 'amqp://broker/" + defsVhost + "'}\ns3: {bucket: b}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := cloud.PolicyFor(cfg)
	if len(defs.Policies) != 1 {
		t.Fatalf("%d policies in definitions.json, want 1", len(defs.Policies))
	}
	got := defs.Policies[0]
	gotDef, _ := json.Marshal(got.Definition)
	if got.Name != want.Name || got.Vhost != want.Vhost || got.Pattern != want.Pattern || got.ApplyTo != want.ApplyTo ||
		got.Priority != want.Priority || string(gotDef) != want.DefinitionJSON() {
		t.Errorf("definitions.json policy\n %+v %s\nforest-cloud's\n %+v %s", got, gotDef, want, want.DefinitionJSON())
	}
}
