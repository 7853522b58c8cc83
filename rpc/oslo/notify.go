package oslo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// NotifierOptions configure a Notifier: [oslo_messaging_notifications] of
// the deployment, and its [oslo_messaging_rabbit] queue flags.
type NotifierOptions struct {
	URL TransportURL
	// TLS is [oslo_messaging_rabbit]'s ssl options, which oslo applies to
	// the notification transport too; the URL's query overrides them.
	TLS       TLSOptions
	Transport Transport // default: amqp091-go to URL
	// Exchange is the control_exchange the notifications go to; default
	// "nova" (oslo's driver publishes to the transport's default exchange).
	Exchange  string
	Heartbeat time.Duration // heartbeat_timeout_threshold; default 60s
	// Queues are the deployment's flags: oslo declares the queue
	// "<topic>.<priority>" before its first publish on each channel, with
	// the exchange's durability, and the broker refuses other flags.
	Queues QueueOptions
	// OnResumed is called each time the broker can be reached again after
	// an outage; nil for none. It must not block.
	OnResumed func()
	Log       *logrus.Entry
}

// Notification is one oslo notification message (notifier.py _notify),
// before the driver packs the context and wraps it.
type Notification struct {
	// MessageID is message_id, a uuid4 in its dashed form. A caller that
	// may send the same notification twice (a re-send after a crash) keeps
	// it, so that a consumer can tell the copy.
	MessageID   string
	PublisherID string // e.g. "compute.<host>" or "nova-compute:<host>"
	EventType   string
	Priority    string          // INFO, ERROR, … (upper case, as oslo's notifier methods send it)
	Payload     json.RawMessage // the serialized payload
	Timestamp   time.Time       // UTC; sent as Python's str(datetime)
	// Context is the serialized request context (the serializer's
	// serialize_context of the sanitized context), packed as _context_*
	// keys; nil for none.
	Context map[string]json.RawMessage
	// UniqueID is the driver's _unique_id (hex); "" for a fresh one. An
	// oslo listener drops a repeat of one of its last 16.
	UniqueID string
}

// Notifier publishes notifications as oslo.messaging's "messaging" (1.0,
// bare) and "messagingv2" (2.0 envelope) drivers do over the rabbit
// driver: to the exchange with routing key "<topic>.<priority>", after
// declaring that queue, persistent, and confirmed by the broker. It
// keeps itself connected, through any outage, until Close; a Notify
// waits for the broker within its own context.
type Notifier struct {
	o   NotifierOptions
	pub *publisher

	mu         sync.Mutex
	declaredOn Session
	declared   map[string]bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewNotifier starts the notifier's session in the background and returns
// at once.
func NewNotifier(o NotifierOptions) (*Notifier, error) {
	if o.Exchange == "" {
		o.Exchange = "nova"
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = 60 * time.Second
	}
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	o.Log = o.Log.WithField("component", "oslo-notifier")
	t, err := transportFor(o.Transport, o.URL, o.TLS, o.Heartbeat)
	if err != nil {
		return nil, fmt.Errorf("oslo notifier: %w", err)
	}
	n := &Notifier{o: o, pub: newPublisher(), declared: map[string]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	l := link{t: t, what: "notification publisher", log: o.Log, onResume: o.OnResumed}
	n.wg.Go(func() {
		if err := l.run(ctx, n.pub.serve); err != nil {
			o.Log.WithError(err).Error("notifier stopped")
		}
	})
	return n, nil
}

// Close stops the notifier; a Notify in progress fails.
func (n *Notifier) Close() error {
	n.cancel()
	n.wg.Wait()
	return nil
}

// Notify sends note to topic (e.g. "notifications"), in the 2.0 envelope
// when envelope is set (messagingv2) or bare (messaging), and returns once
// the broker confirmed it. A session that ends before the confirm gets the
// same bytes again on the next one. It fails with errdefs.ErrUnavailable
// while the broker cannot be reached within ctx, and with
// ErrTopologyMismatch when the broker has the queue with other flags.
func (n *Notifier) Notify(ctx context.Context, topic string, envelope bool, note Notification) error {
	body, err := notificationBody(note, envelope)
	if err != nil {
		return fmt.Errorf("notify %s: %w: %w", note.EventType, errdefs.ErrInvalidArgument, err)
	}
	key := topic + "." + strings.ToLower(note.Priority)
	m := Publishing{Exchange: n.o.Exchange, Key: key, Properties: osloProperties(0), Body: body}
	var s Session
	for {
		if s, err = n.pub.session(ctx, s); err != nil {
			return fmt.Errorf("notify %s to %q/%q: %w", note.EventType, m.Exchange, key, err)
		}
		if err = n.declare(ctx, s, key); err == nil {
			err = s.Publish(ctx, m)
		}
		if !errors.Is(err, ErrSessionClosed) || ctx.Err() != nil {
			if fe, ok := errors.AsType[fatalError](err); ok {
				err = fe.err
			}
			if err != nil {
				return fmt.Errorf("notify %s to %q/%q: %w", note.EventType, m.Exchange, key, err)
			}
			return nil
		}
		if c := brokerCode(err); c >= 400 && c < 500 { // the broker refused it, not an outage
			return fmt.Errorf("notify %s to %q/%q: %w", note.EventType, m.Exchange, key, err)
		}
	}
}

// declare declares the notification queue and its exchange once per
// session, as oslo's _publish_and_creates_default_queue does once per
// channel: the queue is named by the routing key, bound with it, with the
// exchange's durability and the deployment's queue arguments.
func (n *Notifier) declare(ctx context.Context, s Session, key string) error {
	n.mu.Lock()
	if n.declaredOn != s {
		n.declaredOn, n.declared = s, map[string]bool{}
	}
	done := n.declared[key]
	n.mu.Unlock()
	if done {
		return nil
	}
	d := n.o.Queues.Topic(n.o.Exchange, key, key)
	if err := s.Declare(ctx, d); err != nil {
		return declareError(d, err)
	}
	n.mu.Lock()
	if n.declaredOn == s {
		n.declared[key] = true
	}
	n.mu.Unlock()
	return nil
}

// PythonTime is Python's str(datetime) of a naive UTC time, as oslo's
// notifier stamps a message: "2006-01-02 15:04:05.000000", without the
// fraction when it is zero.
func PythonTime(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02 15:04:05")
	}
	return t.Format("2006-01-02 15:04:05.000000")
}

// notificationBody is the message the driver sends: oslo's notification
// dict with _unique_id and the _context_* keys added, wrapped or bare.
func notificationBody(note Notification, envelope bool) ([]byte, error) {
	if note.MessageID == "" || note.EventType == "" || note.Priority == "" || note.PublisherID == "" {
		return nil, errors.New("a notification needs a message_id, an event_type, a priority and a publisher_id")
	}
	payload := note.Payload
	if len(payload) == 0 {
		payload = json.RawMessage("{}")
	}
	m := map[string]any{"message_id": note.MessageID, "publisher_id": note.PublisherID, "event_type": note.EventType,
		"priority": note.Priority, "payload": payload, "timestamp": PythonTime(note.Timestamp)}
	m["_unique_id"] = note.UniqueID
	if note.UniqueID == "" {
		m["_unique_id"] = newID()
	}
	for k, v := range note.Context {
		m[contextPrefix+k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if envelope {
		return wrap(b), nil
	}
	return b, nil
}
