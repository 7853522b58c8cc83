// Package oslotest is an in-memory RabbitMQ for rpc/oslo's unit tests: a
// Broker whose Transport keeps to the contract of oslo.Session the way
// RabbitMQ 3.10 does where rpc/oslo depends on it, down to the reply texts
// of its errors (captured from the real broker):
//
//   - queue names are per virtual host; topic, fanout and direct exchanges
//     route as RabbitMQ's do, and the default exchange by queue name;
//   - redeclaring with other flags or arguments is a 406, consuming a
//     missing queue a 404, an exclusive consumer beside another one (or
//     any consumer beside an exclusive one) a 403 "in exclusive use", an
//     unknown delivery tag a 406; each ends the session, as a channel
//     exception ends the channel;
//   - every publish is confirmed, an unroutable one too; a mandatory one is
//     also returned (the publish fails with oslo.ErrUnroutable);
//   - unsettled deliveries are requeued, marked redelivered, when their
//     session ends; per-consumer prefetch; per-message expiration;
//     auto-delete queues and exchanges go with their last consumer or
//     binding. No x-expires, no dead-lettering, no priorities.
//
// Knobs make what is hard with a real broker easy: KillConnections ends
// every session as a broker restart would, Down and Up make the broker
// unreachable and back, OnPublish lets a test lose a confirm or nack a
// publish, and Publish, Get and Queue let it act and look as rabbitmqctl
// and a raw client would.
//
// The Broker starts goroutines only for consumers (one each) and session
// closers; they end with their sessions, so a test that closes what it
// opened (or calls KillConnections) leaves none behind, inside
// testing/synctest bubbles too.
package oslotest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
)

// Broker is an in-memory RabbitMQ. The zero value is not usable: call New.
type Broker struct {
	mu        sync.Mutex
	vhosts    map[string]*vhost
	sessions  map[*session]struct{}
	down      bool
	dials     int
	onPublish func(vhost string, p oslo.Publishing) Fault
}

// New returns a broker that is up, with no virtual hosts yet (Transport
// creates them as they are named).
func New() *Broker {
	return &Broker{vhosts: map[string]*vhost{}, sessions: map[*session]struct{}{}}
}

// Fault is what OnPublish makes of one publish.
type Fault int

const (
	Deliver        Fault = iota // as usual
	KillAfterRoute              // routed, then the session dies before the confirm
	Nack                        // not routed; the broker nacks it
)

// OnPublish sets a function that decides the fate of every publish from
// now on (nil: every publish as usual). It runs outside the broker's lock,
// so it may look at the broker.
func (b *Broker) OnPublish(f func(vhost string, p oslo.Publishing) Fault) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onPublish = f
}

// Transport is a Transport into virtual host vh.
func (b *Broker) Transport(vh string) oslo.Transport { return transport{b, vh} }

type transport struct {
	b  *Broker
	vh string
}

func (t transport) Dial(ctx context.Context) (oslo.Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b := t.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.down {
		return nil, fmt.Errorf("dial oslotest broker: %w: connection refused", errdefs.ErrUnavailable)
	}
	b.dials++
	s := &session{b: b, vh: b.vhost(t.vh), done: make(chan struct{}), unacked: map[uint64]*pending{},
		consumers: map[string]*consumer{}}
	b.sessions[s] = struct{}{}
	return s, nil
}

// Dials counts the sessions dialled so far.
func (b *Broker) Dials() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dials
}

// KillConnections ends every session with a CONNECTION_FORCED, as a
// broker restart does (queues and messages stay: they are all durable
// here).
func (b *Broker) KillConnections() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.sessions {
		s.end(&oslo.BrokerError{Code: 320, Reason: "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"})
	}
}

// Down ends every session and refuses new ones until Up.
func (b *Broker) Down() {
	b.KillConnections()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.down = true
}

// Up accepts sessions again.
func (b *Broker) Up() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.down = false
}

// QueueState is what rabbitmqctl list_queues would show of a queue.
type QueueState struct {
	Ready, Unacked, Consumers int
	Exclusive                 bool // it has an exclusive consumer
	Durable, AutoDelete       bool
	Args                      map[string]any
}

// Queue reports on a queue of virtual host vh.
func (b *Broker) Queue(vh, name string) (QueueState, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	q, ok := b.vhost(vh).queues[name]
	if !ok {
		return QueueState{}, false
	}
	q.expire(time.Now())
	st := QueueState{Ready: len(q.msgs), Consumers: len(q.consumers), Durable: q.durable, AutoDelete: q.autoDelete, Args: q.args}
	for _, c := range q.consumers {
		st.Exclusive = st.Exclusive || c.exclusive
	}
	for s := range b.sessions {
		for _, p := range s.unacked {
			if p.q == q {
				st.Unacked++
			}
		}
	}
	return st, true
}

// Queues lists the queues of virtual host vh, sorted.
func (b *Broker) Queues(vh string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	names := slices.Collect(maps.Keys(b.vhost(vh).queues))
	slices.Sort(names)
	return names
}

// DeleteQueue deletes a queue as rabbitmqctl delete_queue does: its
// consumers are cancelled (which ends their sessions) and its messages
// dropped. It reports whether the queue existed.
func (b *Broker) DeleteQueue(vh, name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.vhost(vh).deleteQueue(name)
}

// Publish publishes as a raw client would (no session, no confirm to wait
// for) and reports whether the message was routed.
func (b *Broker) Publish(vh string, p oslo.Publishing) (routed bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	routed, berr := b.vhost(vh).route(p, time.Now())
	if berr != nil {
		return false, berr
	}
	return routed, nil
}

// Get takes the next message of a queue, settled (basic.get with no-ack).
func (b *Broker) Get(vh, queue string) (oslo.Delivery, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	q, ok := b.vhost(vh).queues[queue]
	if !ok {
		return oslo.Delivery{}, false
	}
	q.expire(time.Now())
	if len(q.msgs) == 0 {
		return oslo.Delivery{}, false
	}
	m := q.msgs[0]
	q.msgs = q.msgs[1:]
	return m.delivery(0, nil), true
}

func (b *Broker) vhost(name string) *vhost {
	v, ok := b.vhosts[name]
	if !ok {
		v = &vhost{b: b, name: name, exchanges: map[string]*exchange{}, queues: map[string]*queue{}}
		b.vhosts[name] = v
	}
	return v
}

type vhost struct {
	b         *Broker
	name      string
	exchanges map[string]*exchange
	queues    map[string]*queue
}

type exchange struct {
	name, kind          string
	durable, autoDelete bool
	bindings            []binding
}

type binding struct{ queue, key string }

type queue struct {
	vh                  *vhost
	name                string
	durable, autoDelete bool
	args                map[string]any
	msgs                []*message
	consumers           []*consumer
	next                int // round robin
}

type message struct {
	p           oslo.Publishing
	redelivered bool
	expires     time.Time // zero: never
}

func (m *message) delivery(tag uint64, a oslo.Acknowledger) oslo.Delivery {
	return oslo.Delivery{Properties: m.p.Properties, Body: m.p.Body, Exchange: m.p.Exchange, RoutingKey: m.p.Key,
		Redelivered: m.redelivered, Tag: tag, Acker: a}
}

func (q *queue) expire(now time.Time) {
	q.msgs = slices.DeleteFunc(q.msgs, func(m *message) bool { return !m.expires.IsZero() && !now.Before(m.expires) })
}

func preconditionFailed(arg, what, name, vh, received, current string) *oslo.BrokerError {
	return &oslo.BrokerError{Code: 406, Reason: fmt.Sprintf("PRECONDITION_FAILED - inequivalent arg '%s' for %s '%s' in vhost '%s': received %s but current is %s",
		arg, what, name, vh, received, current)}
}

func quoted(v any) string { return "'" + fmt.Sprint(v) + "'" }

func (v *vhost) declareExchange(d oslo.Declaration) *oslo.BrokerError {
	if e, ok := v.exchanges[d.Exchange]; ok {
		switch {
		case e.kind != d.ExchangeKind:
			return preconditionFailed("type", "exchange", d.Exchange, v.name, quoted(d.ExchangeKind), quoted(e.kind))
		case e.durable != d.ExchangeDurable:
			return preconditionFailed("durable", "exchange", d.Exchange, v.name, quoted(d.ExchangeDurable), quoted(e.durable))
		case e.autoDelete != d.ExchangeAutoDelete:
			return preconditionFailed("auto_delete", "exchange", d.Exchange, v.name, quoted(d.ExchangeAutoDelete), quoted(e.autoDelete))
		}
		return nil
	}
	v.exchanges[d.Exchange] = &exchange{name: d.Exchange, kind: d.ExchangeKind, durable: d.ExchangeDurable, autoDelete: d.ExchangeAutoDelete}
	return nil
}

func (v *vhost) declareQueue(d oslo.Declaration) *oslo.BrokerError {
	q, ok := v.queues[d.Queue]
	if !ok {
		v.queues[d.Queue] = &queue{vh: v, name: d.Queue, durable: d.Durable, autoDelete: d.AutoDelete, args: d.Args}
		return nil
	}
	switch {
	case q.durable != d.Durable:
		return preconditionFailed("durable", "queue", d.Queue, v.name, quoted(d.Durable), quoted(q.durable))
	case q.autoDelete != d.AutoDelete:
		return preconditionFailed("auto_delete", "queue", d.Queue, v.name, quoted(d.AutoDelete), quoted(q.autoDelete))
	}
	keys := map[string]bool{}
	for k := range q.args {
		keys[k] = true
	}
	for k := range d.Args {
		keys[k] = true
	}
	for k := range keys {
		have, hok := q.args[k]
		want, wok := d.Args[k]
		switch {
		case !wok:
			return preconditionFailed(k, "queue", d.Queue, v.name, "none", "the value "+quoted(have))
		case !hok:
			return preconditionFailed(k, "queue", d.Queue, v.name, quoted(want), "none")
		case fmt.Sprint(have) != fmt.Sprint(want):
			return preconditionFailed(k, "queue", d.Queue, v.name, quoted(want), quoted(have))
		}
	}
	return nil
}

func notFound(what, name, vh string) *oslo.BrokerError {
	return &oslo.BrokerError{Code: 404, Reason: fmt.Sprintf("NOT_FOUND - no %s '%s' in vhost '%s'", what, name, vh)}
}

func (v *vhost) bind(d oslo.Declaration) *oslo.BrokerError {
	e, ok := v.exchanges[d.Exchange]
	if !ok {
		return notFound("exchange", d.Exchange, v.name)
	}
	if _, ok := v.queues[d.Queue]; !ok {
		return notFound("queue", d.Queue, v.name)
	}
	b := binding{queue: d.Queue, key: d.Key}
	if !slices.Contains(e.bindings, b) {
		e.bindings = append(e.bindings, b)
	}
	return nil
}

func (v *vhost) deleteQueue(name string) bool {
	q, ok := v.queues[name]
	if !ok {
		return false
	}
	delete(v.queues, name)
	for _, c := range slices.Clone(q.consumers) {
		c.s.end(fmt.Errorf("%w: the broker cancelled consumer %s (queue %s deleted)", oslo.ErrSessionClosed, c.tag, name))
	}
	for en, e := range v.exchanges {
		e.bindings = slices.DeleteFunc(e.bindings, func(b binding) bool { return b.queue == name })
		if e.autoDelete && len(e.bindings) == 0 {
			delete(v.exchanges, en)
		}
	}
	return true
}

// route delivers p to every queue its exchange routes it to; a missing
// exchange is a 404.
func (v *vhost) route(p oslo.Publishing, now time.Time) (bool, *oslo.BrokerError) {
	var names []string
	if p.Exchange == "" {
		if _, ok := v.queues[p.Key]; ok {
			names = []string{p.Key}
		}
	} else {
		e, ok := v.exchanges[p.Exchange]
		if !ok {
			return false, notFound("exchange", p.Exchange, v.name)
		}
		for _, b := range e.bindings {
			if (e.kind == "fanout" || (e.kind == "topic" && topicMatch(b.key, p.Key)) || (e.kind == "direct" && b.key == p.Key)) &&
				!slices.Contains(names, b.queue) {
				names = append(names, b.queue)
			}
		}
	}
	var expires time.Time
	if p.Expiration != "" {
		if ms, err := strconv.ParseInt(p.Expiration, 10, 64); err == nil {
			expires = now.Add(time.Duration(ms) * time.Millisecond)
		}
	}
	for _, n := range names {
		q := v.queues[n]
		q.msgs = append(q.msgs, &message{p: p, expires: expires})
		q.dispatch()
	}
	return len(names) > 0, nil
}

// topicMatch matches a routing key against a binding key with AMQP's
// topic rules: words split by '.', '*' one word, '#' zero or more.
func topicMatch(pattern, key string) bool {
	return matchWords(strings.Split(pattern, "."), strings.Split(key, "."))
}

func matchWords(p, k []string) bool {
	switch {
	case len(p) == 0:
		return len(k) == 0
	case p[0] == "#":
		for i := 0; i <= len(k); i++ {
			if matchWords(p[1:], k[i:]) {
				return true
			}
		}
		return false
	case len(k) == 0:
		return false
	case p[0] == "*" || p[0] == k[0]:
		return matchWords(p[1:], k[1:])
	}
	return false
}

// dispatch hands ready messages to consumers with room, round robin.
func (q *queue) dispatch() {
	q.expire(time.Now())
	for len(q.msgs) > 0 {
		var c *consumer
		for i := range q.consumers {
			cand := q.consumers[(q.next+i)%len(q.consumers)]
			if cand.prefetch == 0 || cand.held < cand.prefetch {
				c = cand
				q.next = (q.next + i + 1) % len(q.consumers)
				break
			}
		}
		if c == nil {
			return
		}
		m := q.msgs[0]
		q.msgs = q.msgs[1:]
		c.give(m)
	}
}
