package oslo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Transport is the AMQP broker as this package uses it. amqp.go implements
// it with amqp091-go over TCP (the default, from ServerOptions.URL or
// ClientOptions.URL); oslotest.Broker implements it in memory for unit
// tests. Both keep to the contract written on Session, which is
// RabbitMQ's behaviour where rpc/oslo depends on it.
type Transport interface {
	// Dial opens a session. It does not retry: the caller's reconnect loop
	// does, with backoff. An error wrapping errdefs.ErrInvalidArgument (a
	// TLS file that cannot be read, a broker certificate refused on every
	// host) is not worth retrying.
	Dial(ctx context.Context) (Session, error)
}

// Session is one AMQP connection with one channel on it, in publisher
// confirm mode. A channel or connection exception (a 403, 404, 405 or 406
// from the broker, a broker that cancels one of the session's consumers, a
// lost socket, a missed heartbeat) ends the whole session: Done is closed,
// Err says why, every call fails with an error wrapping ErrSessionClosed,
// and the broker requeues every delivery the session had not settled,
// marked redelivered. Methods are safe for concurrent use.
type Session interface {
	// Declare declares what d names: an exchange, a queue, and the binding
	// between them when it names both. Declaring what exists with other
	// flags or arguments fails with a *BrokerError of code 406.
	Declare(ctx context.Context, d Declaration) error
	// Consume starts a consumer on queue until ctx ends (basic.cancel) or
	// the session does; the channel is closed then. Deliveries not yet
	// settled stay on the session and can still be acked.
	Consume(ctx context.Context, queue string, o ConsumeOptions) (<-chan Delivery, error)
	// Publish sends p and waits for the broker's confirm. It fails with
	// ErrUnroutable when p is mandatory and the broker returned it (matched
	// by p.MessageID, which a mandatory publish must carry), ErrNacked when
	// the broker refused it, and ErrSessionClosed when the session ended
	// first (the message may or may not have been routed).
	Publish(ctx context.Context, p Publishing) error
	// DeleteQueue deletes a queue and the messages in it.
	DeleteQueue(ctx context.Context, queue string) error
	// Done is closed when the session has ended.
	Done() <-chan struct{}
	// Err says why the session ended; nil while it lives.
	Err() error
	// Close ends the session and waits for what it runs.
	Close() error
}

// Declaration names an exchange, a queue, or both and their binding. Its
// flags must match the deployment's (see QueueOptions).
type Declaration struct {
	Exchange           string // "" declares no exchange (the queue is reached through the default exchange)
	ExchangeKind       string // topic, fanout or direct
	ExchangeDurable    bool
	ExchangeAutoDelete bool

	Queue      string // "" declares no queue
	Durable    bool
	AutoDelete bool
	Args       map[string]any // x-expires, x-queue-type, x-ha-policy…
	Key        string         // the binding key, when Exchange and Queue are both set
}

// ConsumeOptions tune one consumer.
type ConsumeOptions struct {
	Tag string
	// Exclusive asks the broker to refuse every other consumer of the
	// queue. The broker refuses the consumer itself, with a *BrokerError of
	// code 403 ("... in exclusive use"), when the queue already has one.
	Exclusive bool
	AutoAck   bool // deliveries are settled as they are sent (reply queues)
	// Prefetch is how many unsettled deliveries the broker hands this
	// consumer at most (basic.qos, per consumer); 0 = no limit.
	Prefetch int
}

// Properties are a message's AMQP basic properties.
type Properties struct {
	ContentType     string
	ContentEncoding string
	Headers         map[string]any
	DeliveryMode    uint8 // 2 = persistent
	Priority        uint8
	CorrelationID   string
	ReplyTo         string
	Expiration      string // per-message TTL in milliseconds, as a decimal string
	MessageID       string
	Timestamp       time.Time
	Type            string
	UserID          string
	AppID           string
}

// Publishing is one message to send.
type Publishing struct {
	Exchange  string // "" = the default exchange (routing key = queue name)
	Key       string
	Mandatory bool // the broker returns it when no queue takes it
	Properties
	Body []byte
}

// Delivery is one message received by a consumer. Ack and Nack settle it
// on the session it came on, never on another: after that session has
// ended they fail and the broker redelivers the message.
type Delivery struct {
	Properties
	Body        []byte
	Exchange    string
	RoutingKey  string
	Redelivered bool
	Tag         uint64
	Acker       Acknowledger
}

// Acknowledger settles deliveries by tag; a Session's implementation.
type Acknowledger interface {
	Ack(tag uint64) error
	Nack(tag uint64, requeue bool) error
}

// Ack settles d as handled.
func (d Delivery) Ack() error { return d.Acker.Ack(d.Tag) }

// Nack settles d as not handled: requeued (redelivered later, to any
// consumer) or dropped.
func (d Delivery) Nack(requeue bool) error { return d.Acker.Nack(d.Tag, requeue) }

// The errors a Session returns besides *BrokerError.
var (
	ErrUnroutable    = errors.New("oslo: returned by the broker: no queue takes it")
	ErrNacked        = fmt.Errorf("oslo: nacked by the broker: %w", errdefs.ErrUnavailable)
	ErrSessionClosed = fmt.Errorf("oslo: session closed: %w", errdefs.ErrUnavailable)
)

// BrokerError is an exception the broker raised: the AMQP reply code and
// text, e.g. 406 "PRECONDITION_FAILED - inequivalent arg 'durable' for
// queue 'compute' in vhost '/': received 'true' but current is 'false'".
type BrokerError struct {
	Code   int
	Reason string
}

func (e *BrokerError) Error() string { return fmt.Sprintf("broker: %d %s", e.Code, e.Reason) }

// AMQP reply codes rpc/oslo tells apart.
const (
	codeAccessRefused      = 403 // e.g. an exclusive consumer refused
	codePreconditionFailed = 406 // e.g. an inequivalent redeclare
	codeConnectionForced   = 320 // the broker is shutting down (or an operator closed the connection)
	codeResourceError      = 506 // e.g. a memory or disk alarm
	codeInternalError      = 541 // the broker failed
)

func brokerCode(err error) int {
	if be, ok := errors.AsType[*BrokerError](err); ok {
		return be.Code
	}
	return 0
}
