package rabbittest

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/uplink"
)

// Channel dials url and opens a channel; the connection is closed when tb
// ends. For a connection used once in a loop, use WithChannel.
func Channel(tb testing.TB, url string) *amqp.Channel {
	tb.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		tb.Fatal(err)
	}
	return ch
}

// WithChannel dials url, runs f on a channel and closes the connection.
func WithChannel(tb testing.TB, url string, f func(*amqp.Channel)) {
	tb.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		tb.Fatal(err)
	}
	f(ch)
}

// FramesQueue declares the agent's frames exchange (uplink.DefaultExchange,
// durable topic) and a durable quorum queue bound to every frame
// ("frames.#"), with args added to the queue's arguments.
func FramesQueue(tb testing.TB, url, queue string, args amqp.Table) {
	tb.Helper()
	WithChannel(tb, url, func(ch *amqp.Channel) {
		if err := ch.ExchangeDeclare(uplink.DefaultExchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			tb.Fatal(err)
		}
		a := amqp.Table{"x-queue-type": "quorum"}
		for k, v := range args {
			a[k] = v
		}
		if _, err := ch.QueueDeclare(queue, true, false, false, false, a); err != nil {
			tb.Fatal(err)
		}
		if err := ch.QueueBind(queue, "frames.#", uplink.DefaultExchange, false, nil); err != nil {
			tb.Fatal(err)
		}
	})
}

// Purge empties queue.
func Purge(tb testing.TB, url, queue string) {
	tb.Helper()
	WithChannel(tb, url, func(ch *amqp.Channel) {
		if _, err := ch.QueuePurge(queue, false); err != nil {
			tb.Fatal(err)
		}
	})
}
