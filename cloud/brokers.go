package cloud

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/forestwatch/forest/internal/config"
)

// brokers are the addresses of the broker, or of the nodes of a cluster,
// that forest-cloud connects to in turn. It starts at a random address, so
// that replicas spread over the nodes, and after a connection is lost it
// dials the next address first: the node may be gone. Not safe for
// concurrent use; each user (the service's session loop, a dlq command)
// has its own.
type brokers struct {
	urls      []string // with credentials
	heartbeat time.Duration
	name      string // connection name shown by the broker; "" for none
	next      int    // index of the address dialled first
}

func newBrokers(urls []string, heartbeat time.Duration, name string) *brokers {
	return &brokers{urls: urls, heartbeat: heartbeat, name: name, next: rand.IntN(len(urls))}
}

// dial connects to the first address that accepts, trying each once from
// b.next on. It returns the connection and the address (without its
// password); the error names every address that failed.
func (b *brokers) dial() (*amqp.Connection, string, error) {
	var errs []error
	for range b.urls {
		i := b.next
		props := amqp.NewConnectionProperties()
		if b.name != "" {
			props.SetClientConnectionName(b.name)
		}
		conn, err := amqp.DialConfig(b.urls[i], amqp.Config{
			Heartbeat:  b.heartbeat,
			Properties: props,
			Dial:       amqp.DefaultDial(30 * time.Second),
		})
		if err == nil {
			return conn, config.Redact(b.urls[i]), nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", config.Redact(b.urls[i]), err))
		b.next = (i + 1) % len(b.urls)
	}
	if len(errs) == 1 {
		return nil, "", errors.Unwrap(errs[0])
	}
	return nil, "", errors.Join(errs...)
}

// lost moves on to the next address after the connection to the current
// one was lost.
func (b *brokers) lost() { b.next = (b.next + 1) % len(b.urls) }
