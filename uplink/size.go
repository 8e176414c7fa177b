package uplink

import (
	"math"
	"time"

	"github.com/forestwatch/forest/wire"
)

// DefaultFrameMax is RabbitMQ's default frame_max, which the Publisher
// accepts (it asks for no other): the largest AMQP frame, so a body is
// sent in frames of at most DefaultFrameMax-8 bytes.
const DefaultFrameMax = 131072

// Size returns how many bytes publishing m to exchange with routingKey
// puts on the connection, by the AMQP 0-9-1 encoding the client library
// writes: the basic.publish method frame, the content header frame (its
// properties and the headers table) and the body frames, each with its
// 8 bytes of framing, at DefaultFrameMax. TLS records and TCP/IP headers
// come on top. A header value of a type the library would refuse counts
// as its nearest AMQP type.
func Size(m *wire.Message, exchange, routingKey string) int64 {
	const frame = 8 // type, channel, size, frame-end
	// basic.publish: class, method, reserved short, exchange, routing key,
	// mandatory/immediate bits.
	method := frame + 2 + 2 + 2 + shortstr(exchange) + shortstr(routingKey) + 1
	// Content header: class, weight, body size, property flags, then the
	// properties set (publishing() always sets delivery mode and timestamp).
	header := frame + 2 + 2 + 8 + 2 + 1 + 8
	for _, s := range []string{m.ContentType, m.MessageID, m.Type, m.UserID, m.AppID} {
		if s != "" {
			header += shortstr(s)
		}
	}
	if len(m.Headers) > 0 {
		header += table(m.Headers)
	}
	body := int64(len(m.Body))
	frames := (body + DefaultFrameMax - frame - 1) / (DefaultFrameMax - frame)
	return int64(method+header) + body + frames*frame
}

// SizeFor is Size with the Publisher's exchange and routing key for m.
func (p *Publisher) SizeFor(m *wire.Message) int64 { return Size(m, p.opts.Exchange, p.route(m)) }

func shortstr(s string) int { return 1 + len(s) }

// table is the encoded size of an AMQP field table: a 4-byte length and,
// per entry, the name as a short string, a type octet and the value.
func table(t map[string]any) int {
	n := 4
	for k, v := range t {
		n += shortstr(k) + 1 + value(v)
	}
	return n
}

// value is the encoded size of a field value after its type octet, as
// amqp091-go writes each Go type.
func value(v any) int {
	switch v := v.(type) {
	case bool, int8, uint8:
		return 1
	case int16, uint16:
		return 2
	case int32, uint32, float32:
		return 4
	case int, int64, uint64, float64, time.Time:
		return 8
	case string:
		return 4 + len(v)
	case []byte:
		return 4 + len(v)
	case map[string]any:
		return table(v)
	case []any:
		n := 4
		for _, e := range v {
			n += 1 + value(e)
		}
		return n
	case nil:
		return 0
	}
	return math.MaxInt32 // not an AMQP value: the library refuses it
}
