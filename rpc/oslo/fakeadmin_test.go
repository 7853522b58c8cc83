package oslo

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// fakeBroker is the part of RabbitMQ an Admin sees, in memory: exchanges,
// queues with their ready and unacked messages, bindings, alternate
// exchanges and the user_id check. A broker exception closes the channel
// it came on and requeues what that channel had not settled, as RabbitMQ
// does. Bindings match keys exactly (a fanout exchange takes every key).
type fakeBroker struct {
	user      string            // the connection's user
	exchanges map[string]string // name → kind
	alternate map[string]string // exchange → its alternate-exchange (the policy)
	queues    map[string]*fakeQueue
	bindings  map[fakeBinding]bool

	fail     map[string]*amqp.Error // the next call of that method raises it
	openErr  error                  // opening a channel fails with it
	nack     bool                   // the broker nacks every publish
	lost     bool                   // confirms never come
	late     int                    // the next gets find nothing yet (a message on its way)
	channels int                    // channels opened
	closed   bool                   // CloseDeadline was called
}

type fakeBinding struct{ exchange, key, queue string }

type fakeQueue struct {
	durable, autoDelete bool
	args                amqp.Table
	consumers           int
	ready               []amqp.Publishing
}

func newFakeBroker() *fakeBroker {
	return &fakeBroker{
		user:      "nova",
		exchanges: map[string]string{},
		alternate: map[string]string{},
		queues:    map[string]*fakeQueue{},
		bindings:  map[fakeBinding]bool{},
		fail:      map[string]*amqp.Error{},
	}
}

// put makes queue (when missing) and appends msgs to it.
func (b *fakeBroker) put(queue string, msgs ...amqp.Publishing) *fakeQueue {
	q := b.queues[queue]
	if q == nil {
		q = &fakeQueue{}
		b.queues[queue] = q
	}
	q.ready = append(q.ready, msgs...)
	return q
}

// admin is an Admin on b, as DialAdmin makes it.
func (b *fakeBroker) admin(o AdminOptions) *Admin {
	if o.Exchange == "" {
		o.Exchange = "nova"
	}
	if o.URL.Hosts == nil {
		o.URL.Hosts = []URLHost{{Username: b.user}}
	}
	return newAdmin(o, (*fakeConn)(b))
}

type fakeConn fakeBroker

func (c *fakeConn) channel() (adminChannel, <-chan amqp.Return, error) {
	b := (*fakeBroker)(c)
	if b.openErr != nil {
		return nil, nil, b.openErr
	}
	b.channels++
	ch := &fakeChannel{b: b, ret: make(chan amqp.Return, 8), unacked: map[uint64]fakeUnacked{}}
	return ch, ch.ret, nil
}

func (c *fakeConn) CloseDeadline(time.Time) error {
	c.closed = true
	return nil
}

type fakeUnacked struct {
	queue string
	msg   amqp.Publishing
}

type fakeChannel struct {
	b       *fakeBroker
	closed  bool
	ret     chan amqp.Return
	tag     uint64
	unacked map[uint64]fakeUnacked
}

// call is what every method does first: a closed channel refuses, a
// scripted exception is raised.
func (c *fakeChannel) call(method string) error {
	if c.closed {
		return amqp.ErrClosed
	}
	if e := c.b.fail[method]; e != nil {
		delete(c.b.fail, method)
		return c.raise(e.Code, e.Reason)
	}
	return nil
}

// raise closes the channel with a broker exception; what it had not
// settled goes back to the head of its queues.
func (c *fakeChannel) raise(code int, reason string) error {
	c.closed = true
	c.requeue(slices.Sorted(maps.Keys(c.unacked)))
	return &amqp.Error{Code: code, Reason: reason, Server: true}
}

// requeue puts the messages of tags back, at the head of their queues, in
// the order they were taken.
func (c *fakeChannel) requeue(tags []uint64) {
	for i := len(tags) - 1; i >= 0; i-- {
		u := c.unacked[tags[i]]
		delete(c.unacked, tags[i])
		if q := c.b.queues[u.queue]; q != nil {
			q.ready = append([]amqp.Publishing{u.msg}, q.ready...)
		}
	}
}

func notFound(what, name string) string {
	return fmt.Sprintf("NOT_FOUND - no %s '%s' in vhost '/'", what, name)
}

func (c *fakeChannel) IsClosed() bool { return c.closed }

func (c *fakeChannel) ExchangeDeclare(name, kind string, durable, autoDelete, internal, noWait bool, args amqp.Table) error {
	if err := c.call("ExchangeDeclare"); err != nil {
		return err
	}
	if k, ok := c.b.exchanges[name]; ok && k != kind {
		return c.raise(406, fmt.Sprintf("PRECONDITION_FAILED - inequivalent arg 'type' for exchange '%s'", name))
	}
	c.b.exchanges[name] = kind
	return nil
}

func (c *fakeChannel) ExchangeDeclarePassive(name, kind string, durable, autoDelete, internal, noWait bool, args amqp.Table) error {
	if err := c.call("ExchangeDeclarePassive"); err != nil {
		return err
	}
	if _, ok := c.b.exchanges[name]; !ok {
		return c.raise(404, notFound("exchange", name))
	}
	return nil
}

func (c *fakeChannel) QueueDeclare(name string, durable, autoDelete, exclusive, noWait bool, args amqp.Table) (amqp.Queue, error) {
	if err := c.call("QueueDeclare"); err != nil {
		return amqp.Queue{}, err
	}
	q, ok := c.b.queues[name]
	if ok && q.durable != durable {
		return amqp.Queue{}, c.raise(406, fmt.Sprintf("PRECONDITION_FAILED - inequivalent arg 'durable' for queue '%s'", name))
	}
	if !ok {
		q = &fakeQueue{durable: durable, autoDelete: autoDelete, args: args}
		c.b.queues[name] = q
	}
	return amqp.Queue{Name: name, Messages: len(q.ready), Consumers: q.consumers}, nil
}

func (c *fakeChannel) QueueDeclarePassive(name string, durable, autoDelete, exclusive, noWait bool, args amqp.Table) (amqp.Queue, error) {
	if err := c.call("QueueDeclarePassive"); err != nil {
		return amqp.Queue{}, err
	}
	q, ok := c.b.queues[name]
	if !ok {
		return amqp.Queue{}, c.raise(404, notFound("queue", name))
	}
	return amqp.Queue{Name: name, Messages: len(q.ready), Consumers: q.consumers}, nil
}

func (c *fakeChannel) binding(method, name, key, exchange string) (fakeBinding, error) {
	if err := c.call(method); err != nil {
		return fakeBinding{}, err
	}
	if _, ok := c.b.queues[name]; !ok {
		return fakeBinding{}, c.raise(404, notFound("queue", name))
	}
	if _, ok := c.b.exchanges[exchange]; !ok {
		return fakeBinding{}, c.raise(404, notFound("exchange", exchange))
	}
	return fakeBinding{exchange, key, name}, nil
}

func (c *fakeChannel) QueueBind(name, key, exchange string, noWait bool, args amqp.Table) error {
	bd, err := c.binding("QueueBind", name, key, exchange)
	if err == nil {
		c.b.bindings[bd] = true
	}
	return err
}

func (c *fakeChannel) QueueUnbind(name, key, exchange string, args amqp.Table) error {
	bd, err := c.binding("QueueUnbind", name, key, exchange)
	if err == nil {
		delete(c.b.bindings, bd)
	}
	return err
}

// QueueDelete of a missing queue raises 404, as RabbitMQ before 3.7 did
// (later ones answer delete-ok; Admin takes both).
func (c *fakeChannel) QueueDelete(name string, ifUnused, ifEmpty, noWait bool) (int, error) {
	if err := c.call("QueueDelete"); err != nil {
		return 0, err
	}
	q, ok := c.b.queues[name]
	switch {
	case !ok:
		return 0, c.raise(404, notFound("queue", name))
	case ifUnused && q.consumers > 0:
		return 0, c.raise(406, fmt.Sprintf("PRECONDITION_FAILED - queue '%s' in vhost '/' in use", name))
	case ifEmpty && len(q.ready) > 0:
		return 0, c.raise(406, fmt.Sprintf("PRECONDITION_FAILED - queue '%s' in vhost '/' not empty", name))
	}
	delete(c.b.queues, name)
	for bd := range c.b.bindings {
		if bd.queue == name {
			delete(c.b.bindings, bd)
		}
	}
	return len(q.ready), nil
}

func (c *fakeChannel) Get(queue string, autoAck bool) (amqp.Delivery, bool, error) {
	if err := c.call("Get"); err != nil {
		return amqp.Delivery{}, false, err
	}
	q, ok := c.b.queues[queue]
	if !ok {
		return amqp.Delivery{}, false, c.raise(404, notFound("queue", queue))
	}
	if len(q.ready) == 0 || c.b.late > 0 {
		c.b.late = max(c.b.late-1, 0)
		return amqp.Delivery{}, false, nil
	}
	m := q.ready[0]
	q.ready = q.ready[1:]
	c.tag++
	if !autoAck {
		c.unacked[c.tag] = fakeUnacked{queue, m}
	}
	return amqp.Delivery{
		Acknowledger: c, DeliveryTag: c.tag, Headers: m.Headers, ContentType: m.ContentType,
		ContentEncoding: m.ContentEncoding, DeliveryMode: m.DeliveryMode, Priority: m.Priority,
		CorrelationId: m.CorrelationId, ReplyTo: m.ReplyTo, Expiration: m.Expiration, MessageId: m.MessageId,
		Timestamp: m.Timestamp, Type: m.Type, UserId: m.UserId, AppId: m.AppId, Body: m.Body,
	}, true, nil
}

// settled are the tags one ack or nack settles; an unknown tag is a 406,
// as RabbitMQ raises.
func (c *fakeChannel) settled(method string, tag uint64, multiple bool) ([]uint64, error) {
	if err := c.call(method); err != nil {
		return nil, err
	}
	if _, ok := c.unacked[tag]; !ok {
		return nil, c.raise(406, fmt.Sprintf("PRECONDITION_FAILED - unknown delivery tag %d", tag))
	}
	if !multiple {
		return []uint64{tag}, nil
	}
	var tags []uint64
	for t := range c.unacked {
		if t <= tag {
			tags = append(tags, t)
		}
	}
	slices.Sort(tags)
	return tags, nil
}

func (c *fakeChannel) Ack(tag uint64, multiple bool) error {
	tags, err := c.settled("Ack", tag, multiple)
	for _, t := range tags {
		delete(c.unacked, t)
	}
	return err
}

func (c *fakeChannel) Nack(tag uint64, multiple, requeue bool) error {
	tags, err := c.settled("Nack", tag, multiple)
	if requeue {
		c.requeue(tags)
	}
	for _, t := range tags {
		delete(c.unacked, t)
	}
	return err
}

func (c *fakeChannel) Reject(tag uint64, requeue bool) error { return c.Nack(tag, false, requeue) }

// route is the queues exchange takes key to, through its alternate
// exchange when it takes it nowhere.
func (c *fakeChannel) route(exchange, key string) []string {
	if exchange == "" {
		if _, ok := c.b.queues[key]; ok {
			return []string{key}
		}
		return nil
	}
	var qs []string
	for bd := range c.b.bindings {
		if bd.exchange == exchange && (bd.key == key || c.b.exchanges[exchange] == "fanout") {
			qs = append(qs, bd.queue)
		}
	}
	if ae, ok := c.b.alternate[exchange]; ok && len(qs) == 0 {
		return c.route(ae, key)
	}
	slices.Sort(qs)
	return qs
}

func (c *fakeChannel) publishMandatory(ctx context.Context, exchange, key string, msg amqp.Publishing) (confirmation, error) {
	if err := c.call("publish"); err != nil {
		return nil, err
	}
	if _, ok := c.b.exchanges[exchange]; !ok && exchange != "" {
		return nil, c.raise(404, notFound("exchange", exchange))
	}
	if msg.UserId != "" && msg.UserId != c.b.user {
		return nil, c.raise(406, fmt.Sprintf("PRECONDITION_FAILED - user_id property set to '%s' but authenticated user was '%s'", msg.UserId, c.b.user))
	}
	qs := c.route(exchange, key)
	if len(qs) == 0 {
		c.ret <- amqp.Return{ReplyCode: 312, ReplyText: "NO_ROUTE", Exchange: exchange, RoutingKey: key, MessageId: msg.MessageId}
	}
	if !c.b.nack && !c.b.lost {
		for _, q := range qs {
			c.b.put(q, msg)
		}
	}
	return fakeConfirm{acked: !c.b.nack, lost: c.b.lost}, nil
}

type fakeConfirm struct{ acked, lost bool }

func (f fakeConfirm) WaitContext(ctx context.Context) (bool, error) {
	if f.lost {
		<-ctx.Done()
		return false, ctx.Err()
	}
	return f.acked, nil
}

// ids are the _unique_ids of the messages waiting in queue, in order.
func (b *fakeBroker) ids(queue string) []string {
	q := b.queues[queue]
	if q == nil {
		return nil
	}
	var ids []string
	for _, m := range q.ready {
		msg, err := decodeMessage(m.ContentType, m.Body, MaxMessageSize)
		if err != nil {
			ids = append(ids, "?"+strings.TrimSpace(string(m.Body)))
			continue
		}
		ids = append(ids, msg.UniqueID)
	}
	return ids
}
