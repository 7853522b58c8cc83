package oslo

// Admin is the broker as the cut-over and ferryd's start checks use it:
// bindings, queue inspection, a queue's backlog moved to another, and the
// alternate-exchange probe. It is not a Session: it needs basic.get,
// queue.unbind and passive declares, which nothing else does, and it is
// used for a few seconds, not kept connected.

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"opendev.org/x/ferry/pkg/errdefs"
)

// AdminOptions configure an Admin.
type AdminOptions struct {
	URL      TransportURL
	TLS      TLSOptions   // [oslo_messaging_rabbit] ssl options; URL's query overrides them
	Exchange string       // control_exchange (Nova's); default "nova"
	Queues   QueueOptions // the deployment's flags, for the queues Declare makes
}

// Admin does topology work over one AMQP connection. A broker exception
// (404, 403, 406) ends only the channel it came on; the next call opens
// another. Not safe for concurrent use.
type Admin struct {
	o    AdminOptions
	user string
	conn adminConn
	ch   adminChannel // confirm mode; nil after an exception
	ret  <-chan amqp.Return
}

// adminConn and adminChannel are what Admin uses of an amqp091 connection
// and channel, so that its logic can be tested against a fake
// (admin_test.go). adminChannel keeps amqp091's own signatures, one for
// one, but for the mandatory publish, whose confirmation amqp091 returns as
// a struct.
type adminConn interface {
	// channel opens a channel in confirm mode and the channel its returns
	// come on.
	channel() (adminChannel, <-chan amqp.Return, error)
	CloseDeadline(deadline time.Time) error
}

type adminChannel interface {
	IsClosed() bool
	ExchangeDeclare(name, kind string, durable, autoDelete, internal, noWait bool, args amqp.Table) error
	ExchangeDeclarePassive(name, kind string, durable, autoDelete, internal, noWait bool, args amqp.Table) error
	QueueDeclare(name string, durable, autoDelete, exclusive, noWait bool, args amqp.Table) (amqp.Queue, error)
	QueueDeclarePassive(name string, durable, autoDelete, exclusive, noWait bool, args amqp.Table) (amqp.Queue, error)
	QueueBind(name, key, exchange string, noWait bool, args amqp.Table) error
	QueueUnbind(name, key, exchange string, args amqp.Table) error
	QueueDelete(name string, ifUnused, ifEmpty, noWait bool) (int, error)
	Get(queue string, autoAck bool) (amqp.Delivery, bool, error)
	Nack(tag uint64, multiple, requeue bool) error
	// publishMandatory publishes msg with the mandatory flag and returns
	// its confirmation to wait for.
	publishMandatory(ctx context.Context, exchange, key string, msg amqp.Publishing) (confirmation, error)
}

// confirmation is a publisher confirm to come (*amqp.DeferredConfirmation).
type confirmation interface {
	WaitContext(ctx context.Context) (acked bool, err error)
}

// amqpAdminConn is an adminConn on an amqp091 connection.
type amqpAdminConn struct{ *amqp.Connection }

func (c amqpAdminConn) channel() (adminChannel, <-chan amqp.Return, error) {
	ch, err := c.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		return nil, nil, err
	}
	return amqpAdminChannel{ch}, ch.NotifyReturn(make(chan amqp.Return, 8)), nil
}

// amqpAdminChannel is an adminChannel on an amqp091 channel.
type amqpAdminChannel struct{ *amqp.Channel }

func (ch amqpAdminChannel) publishMandatory(ctx context.Context, exchange, key string, msg amqp.Publishing) (confirmation, error) {
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false, msg)
	if err != nil {
		return nil, err
	}
	return dc, nil
}

// NotFoundError is a queue or exchange the broker does not have (404).
type NotFoundError struct {
	What   string // what was asked, e.g. "inspect queue compute.h1"
	Broker *BrokerError
}

func (e *NotFoundError) Error() string { return fmt.Sprintf("%s: %v", e.What, e.Broker) }

// Unwrap lets errors.Is find errdefs.ErrNotFound and the *BrokerError.
func (e *NotFoundError) Unwrap() []error { return []error{errdefs.ErrNotFound, e.Broker} }

// QueueInfo is what a passive declare tells about a queue.
type QueueInfo struct {
	Messages  int // ready, not counting the unacked
	Consumers int
}

// DialAdmin connects to the first host of o.URL that answers.
func DialAdmin(ctx context.Context, o AdminOptions) (*Admin, error) {
	if o.Exchange == "" {
		o.Exchange = "nova"
	}
	t, err := newAMQPTransport(o.URL, o.TLS, 60*time.Second)
	if err != nil {
		return nil, err
	}
	conn, err := t.dial(ctx)
	if err != nil {
		return nil, err
	}
	return newAdmin(o, amqpAdminConn{conn}), nil
}

// newAdmin is an Admin on conn; o.Exchange is already defaulted.
func newAdmin(o AdminOptions, conn adminConn) *Admin {
	a := &Admin{o: o, conn: conn}
	if len(o.URL.Hosts) > 0 {
		a.user = o.URL.Hosts[0].Username
	}
	return a
}

// Close closes the connection.
func (a *Admin) Close() error { return a.conn.CloseDeadline(time.Now().Add(5 * time.Second)) }

func (a *Admin) channel() (adminChannel, error) {
	if a.ch != nil && !a.ch.IsClosed() {
		return a.ch, nil
	}
	ch, ret, err := a.conn.channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w: %w", errdefs.ErrUnavailable, err)
	}
	a.ch, a.ret = ch, ret
	return ch, nil
}

// classify translates an amqp091 error once: 404 is a *NotFoundError, 403
// and 406 are failed preconditions (permissions, flags, a queue not
// empty), anything else the broker being unreachable.
func (a *Admin) classify(what string, err error) error {
	ae, ok := errors.AsType[*amqp.Error](err)
	if !ok || ae.Code == 0 || ae == amqp.ErrClosed {
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrUnavailable, err)
	}
	a.ch = nil // the broker closed it
	be := &BrokerError{Code: ae.Code, Reason: ae.Reason}
	switch be.Code {
	case 404:
		return &NotFoundError{What: what, Broker: be}
	case codeAccessRefused:
		return fmt.Errorf("%s: %w: the broker user %q lacks the permission: %w", what, errdefs.ErrFailedPrecondition, a.user, be)
	case codePreconditionFailed:
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrFailedPrecondition, be)
	case codeConnectionForced, codeResourceError, codeInternalError: // the broker's trouble, not the request's: try again
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrUnavailable, be)
	}
	return fmt.Errorf("%s: %w", what, be)
}

// Declare declares queue on the control exchange with key, exactly as an
// oslo server declares its topic consumer (QueueOptions.Topic): the
// exchange, the queue and the binding.
func (a *Admin) Declare(ctx context.Context, queue, key string) error {
	d := a.o.Queues.Topic(a.o.Exchange, queue, key)
	what := fmt.Sprintf("declare queue %s bound to %s/%s", queue, d.Exchange, key)
	ch, err := a.channel()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := ch.ExchangeDeclare(d.Exchange, d.ExchangeKind, d.ExchangeDurable, d.ExchangeAutoDelete, false, false, nil); err != nil {
		return a.classify(what, err)
	}
	if _, err := ch.QueueDeclare(d.Queue, d.Durable, d.AutoDelete, false, false, amqp.Table(d.Args)); err != nil {
		return a.classify(what, err)
	}
	if err := ch.QueueBind(d.Queue, d.Key, d.Exchange, false, nil); err != nil {
		return a.classify(what, err)
	}
	return nil
}

// Bind binds an existing queue to an existing exchange with key.
func (a *Admin) Bind(ctx context.Context, queue, exchange, key string) error {
	what := fmt.Sprintf("bind %s to %s/%s", queue, exchange, key)
	ch, err := a.channel()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := ch.QueueBind(queue, key, exchange, false, nil); err != nil {
		return a.classify(what, err)
	}
	return nil
}

// Unbind removes a binding. A binding that does not exist is fine (the
// broker says so); a queue or exchange that does not exist is a
// *NotFoundError.
func (a *Admin) Unbind(ctx context.Context, queue, exchange, key string) error {
	what := fmt.Sprintf("unbind %s from %s/%s", queue, exchange, key)
	ch, err := a.channel()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := ch.QueueUnbind(queue, key, exchange, nil); err != nil {
		return a.classify(what, err)
	}
	return nil
}

// Inspect declares queue passively: how many messages wait in it and how
// many consumers it has. A missing queue is a *NotFoundError.
func (a *Admin) Inspect(ctx context.Context, queue string) (QueueInfo, error) {
	what := "inspect queue " + queue
	ch, err := a.channel()
	if err != nil {
		return QueueInfo{}, fmt.Errorf("%s: %w", what, err)
	}
	q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
	if err != nil {
		return QueueInfo{}, a.classify(what, err)
	}
	return QueueInfo{Messages: q.Messages, Consumers: q.Consumers}, nil
}

// DeleteQueueIfEmpty deletes queue unless messages wait in it or it has
// a consumer (then the error wraps errdefs.ErrFailedPrecondition). A
// missing queue is fine.
func (a *Admin) DeleteQueueIfEmpty(ctx context.Context, queue string) error {
	what := "delete queue " + queue
	ch, err := a.channel()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if _, err := ch.QueueDelete(queue, true, true, false); err != nil {
		if err := a.classify(what, err); !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
	}
	return nil
}

// Moved is what a Move did.
type Moved struct {
	Messages   int // republished to the target and acked
	Duplicates int // acked without a copy: one with its _unique_id waited in the target already
}

// peekMax bounds how many waiting messages Move reads to learn their ids.
const peekMax = 10000

// Move takes every message waiting in from, one at a time in queue order,
// and republishes it to queue to through the default exchange: the same
// body and properties (the user_id only when it is this connection's
// user: RabbitMQ refuses another; the expiration as it was, since AMQP
// 0-9-1 does not say how long the message waited), mandatory, with a
// publisher confirm. The original is acked only after the confirm came
// without a return: a confirm alone is not delivery, RabbitMQ confirms an
// unroutable message too. A returned or refused copy puts the original
// back at the head of from and ends the move with an error.
//
// A message whose _unique_id is already waiting in to is acked without a
// copy: the cut-over binds one queue before it unbinds the other, so what
// was published in between sits in both, and the receiver's own dedup
// (oslo keeps 16 ids) may not reach back across a backlog. The ids are
// read from to when it has no consumer (basic.get, then every message
// requeued, which RabbitMQ puts back in place). A missing from is a
// *NotFoundError and nothing moved.
func (a *Admin) Move(ctx context.Context, from, to string) (Moved, error) {
	var m Moved
	skip, err := a.waitingIDs(ctx, to)
	if err != nil {
		return m, fmt.Errorf("move %s to %s: %w", from, to, err)
	}
	for {
		if err := ctx.Err(); err != nil {
			return m, fmt.Errorf("move %s to %s: %w", from, to, err)
		}
		moved, dup, err := a.moveOne(ctx, from, to, skip)
		switch {
		case err != nil || !moved:
			return m, err
		case dup:
			m.Duplicates++
		default:
			m.Messages++
		}
	}
}

// waitingIDs returns the _unique_ids of the messages waiting in queue, or
// none when it is missing, has a consumer or holds more than peekMax.
func (a *Admin) waitingIDs(ctx context.Context, queue string) (map[string]bool, error) {
	q, err := a.Inspect(ctx, queue)
	if errors.Is(err, errdefs.ErrNotFound) || (err == nil && (q.Consumers > 0 || q.Messages == 0 || q.Messages > peekMax)) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ch, err := a.channel()
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	var last uint64
	for range q.Messages {
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			return nil, a.classify("read the ids waiting in "+queue, err)
		}
		if !ok {
			break
		}
		last = d.DeliveryTag
		if m, err := decodeMessage(d.ContentType, d.Body, MaxMessageSize); err == nil && m.UniqueID != "" {
			ids[m.UniqueID] = true
		}
	}
	if last != 0 {
		if err := ch.Nack(last, true, true); err != nil {
			return nil, a.classify("requeue what was read from "+queue, err)
		}
	}
	return ids, nil
}

func (a *Admin) moveOne(ctx context.Context, from, to string, skip map[string]bool) (moved, dup bool, err error) {
	what := fmt.Sprintf("move %s to %s", from, to)
	ch, err := a.channel()
	if err != nil {
		return false, false, fmt.Errorf("%s: %w", what, err)
	}
	d, ok, err := ch.Get(from, false)
	if err != nil {
		return false, false, a.classify(what, err)
	}
	if !ok {
		return false, false, nil
	}
	if m, err := decodeMessage(d.ContentType, d.Body, MaxMessageSize); err == nil && skip[m.UniqueID] && m.UniqueID != "" {
		if err := d.Ack(false); err != nil {
			return false, false, a.classify(what, err)
		}
		return true, true, nil
	}
	p := amqp.Publishing{Headers: d.Headers, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding,
		DeliveryMode: d.DeliveryMode, Priority: d.Priority, CorrelationId: d.CorrelationId, ReplyTo: d.ReplyTo,
		Expiration: d.Expiration, MessageId: d.MessageId, Timestamp: d.Timestamp, Type: d.Type, AppId: d.AppId, Body: d.Body}
	if d.UserId == a.user {
		p.UserId = d.UserId
	}
	dc, err := ch.publishMandatory(ctx, "", to, p)
	if err != nil {
		return false, false, a.classify(what, err) // the channel is gone: the broker requeues the original
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		_ = d.Nack(false, true)
		return false, false, fmt.Errorf("%s: no confirm: %w", what, err)
	}
	select { // a return comes before the confirm of the same message
	case r := <-a.ret:
		_ = d.Nack(false, true)
		return false, false, fmt.Errorf("%s: %w: %w (%d %s): queue %s is missing", what, errdefs.ErrFailedPrecondition,
			ErrUnroutable, r.ReplyCode, r.ReplyText, to)
	default:
	}
	if !acked {
		_ = d.Nack(false, true)
		return false, false, fmt.Errorf("%s: %w", what, ErrNacked)
	}
	if err := d.Ack(false); err != nil {
		return false, false, fmt.Errorf("%s: moved, but the original's ack failed (it stays in %s; its copy is dropped by _unique_id): %w",
			what, from, a.classify(what, err))
	}
	return true, false, nil
}

// ErrNoAlternate: what is published to nova-compute's private exchange
// does not reach the control exchange; the policy that gives it
// alternate-exchange is missing (or another policy of higher priority
// wins).
var ErrNoAlternate = errors.New("no alternate-exchange to the control exchange")

// ErrNoPrivateExchange: the exchange ProbeAlternate probes does not exist
// (nova-compute has not declared it).
var ErrNoPrivateExchange = errors.New("nova-compute's private exchange does not exist")

// ProbeAlternate checks that a message published to exchange with a key
// nothing on exchange takes reaches a queue bound to the control exchange
// with that key: the alternate-exchange policy at work. It uses an
// exclusive, auto-delete queue ferry.probe.<uuid> of its own, and
// deletes it. A missing exchange is a *NotFoundError, and also
// ErrNoPrivateExchange when it is the probed one.
func (a *Admin) ProbeAlternate(ctx context.Context, exchange string) error {
	key := "ferry.probe." + newID()
	what := fmt.Sprintf("probe %s's alternate exchange", exchange)
	ch, err := a.channel()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := ch.ExchangeDeclarePassive(exchange, "topic", false, false, false, false, nil); err != nil {
		err = a.classify(what, err)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("%w: %w", ErrNoPrivateExchange, err)
		}
		return err
	}
	if _, err := ch.QueueDeclare(key, false, true, true, false, nil); err != nil {
		return a.classify(what, err)
	}
	defer func() {
		if ch, err := a.channel(); err == nil {
			_, _ = ch.QueueDelete(key, false, false, false)
		}
	}()
	if err := ch.QueueBind(key, key, a.o.Exchange, false, nil); err != nil {
		return a.classify(what, err)
	}
	dc, err := ch.publishMandatory(ctx, exchange, key,
		amqp.Publishing{ContentType: contentType, MessageId: key, Body: []byte(`{"ferry":"probe"}`)})
	if err != nil {
		return a.classify(what, err)
	}
	if acked, err := dc.WaitContext(ctx); err != nil || !acked {
		return fmt.Errorf("%s: %w: not confirmed (%v)", what, errdefs.ErrUnavailable, err)
	}
	select {
	case r := <-a.ret:
		return fmt.Errorf("%s: %w: %w: the broker returned the probe (%d %s)", what, ErrNoAlternate,
			errdefs.ErrFailedPrecondition, r.ReplyCode, r.ReplyText)
	default:
	}
	for deadline := time.Now().Add(2 * time.Second); ; {
		_, ok, err := ch.Get(key, true)
		if err != nil {
			return a.classify(what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w: %w: the probe was confirmed but never arrived", what, ErrNoAlternate, errdefs.ErrFailedPrecondition)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
