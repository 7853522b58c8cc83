package oslotest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
)

// session is an oslo.Session on the in-memory broker. Its state is
// guarded by the broker's lock.
type session struct {
	b         *Broker
	vh        *vhost
	done      chan struct{}
	err       error
	nextTag   uint64
	unacked   map[uint64]*pending
	consumers map[string]*consumer
	wg        sync.WaitGroup // consumers' goroutines
}

// pending is a delivery the session has not settled.
type pending struct {
	q *queue
	m *message
	c *consumer
}

func (s *session) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// end ends the session with why (the first reason wins): its consumers
// stop, its unsettled deliveries go back to the head of their queues,
// marked redelivered, in the order they were delivered. Called with the
// broker's lock held.
func (s *session) end(why error) {
	if s.closed() {
		return
	}
	if be, ok := why.(*oslo.BrokerError); ok {
		why = fmt.Errorf("%w: %w", oslo.ErrSessionClosed, be)
	}
	s.err = why
	close(s.done)
	delete(s.b.sessions, s)
	for _, c := range s.consumers {
		c.detach()
	}
	tags := make([]uint64, 0, len(s.unacked))
	for t := range s.unacked {
		tags = append(tags, t)
	}
	slices.Sort(tags)
	requeue := map[*queue][]*message{}
	var order []*queue
	for _, t := range tags {
		p := s.unacked[t]
		if _, ok := requeue[p.q]; !ok {
			order = append(order, p.q)
		}
		p.m.redelivered = true
		requeue[p.q] = append(requeue[p.q], p.m)
	}
	clear(s.unacked)
	for _, q := range order {
		q.msgs = append(requeue[q], q.msgs...)
		q.dispatch()
	}
}

// fail ends the session with a channel exception and returns it, for the
// call that caused it.
func (s *session) fail(what string, be *oslo.BrokerError) error {
	s.end(be)
	return fmt.Errorf("%s: %w", what, be)
}

func (s *session) Done() <-chan struct{} { return s.done }

func (s *session) Err() error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return s.err
}

func (s *session) Close() error {
	s.b.mu.Lock()
	s.end(fmt.Errorf("%w: closed by the client", oslo.ErrSessionClosed))
	s.b.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *session) gone(what string) error {
	return fmt.Errorf("%s: %w", what, s.err)
}

func (s *session) Declare(ctx context.Context, d oslo.Declaration) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.closed() {
		return s.gone("declare")
	}
	if d.Exchange != "" {
		if be := s.vh.declareExchange(d); be != nil {
			return s.fail("declare exchange "+d.Exchange, be)
		}
	}
	if d.Queue == "" {
		return nil
	}
	if be := s.vh.declareQueue(d); be != nil {
		return s.fail("declare queue "+d.Queue, be)
	}
	if d.Exchange != "" {
		if be := s.vh.bind(d); be != nil {
			return s.fail("bind queue "+d.Queue, be)
		}
	}
	return nil
}

func (s *session) DeleteQueue(ctx context.Context, name string) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.closed() {
		return s.gone("delete queue")
	}
	s.vh.deleteQueue(name)
	return nil
}

func (s *session) Consume(ctx context.Context, name string, o oslo.ConsumeOptions) (<-chan oslo.Delivery, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.closed() {
		return nil, s.gone("consume")
	}
	q, ok := s.vh.queues[name]
	if !ok {
		return nil, s.fail("consume "+name, notFound("queue", name, s.vh.name))
	}
	inUse := len(q.consumers) > 0 && o.Exclusive
	for _, c := range q.consumers {
		inUse = inUse || c.exclusive
	}
	if inUse {
		return nil, s.fail("consume "+name, &oslo.BrokerError{Code: 403,
			Reason: fmt.Sprintf("ACCESS_REFUSED - queue '%s' in vhost '%s' in exclusive use", name, s.vh.name)})
	}
	if _, dup := s.consumers[o.Tag]; dup || o.Tag == "" {
		s.end(&oslo.BrokerError{Code: 530, Reason: "NOT_ALLOWED - attempt to reuse consumer tag '" + o.Tag + "'"})
		return nil, fmt.Errorf("consume %s: %w", name, s.err)
	}
	c := &consumer{s: s, q: q, tag: o.Tag, exclusive: o.Exclusive, autoAck: o.AutoAck, prefetch: o.Prefetch,
		out: make(chan oslo.Delivery), wake: make(chan struct{}, 1), stop: make(chan struct{})}
	s.consumers[o.Tag] = c
	q.consumers = append(q.consumers, c)
	s.wg.Go(c.pump)
	c.unhook = context.AfterFunc(ctx, func() {
		s.b.mu.Lock()
		defer s.b.mu.Unlock()
		c.detach()
	})
	q.dispatch()
	return c.out, nil
}

// consumer hands its queue's messages to the session's client, through
// an outbox its goroutine empties into out.
type consumer struct {
	s         *session
	q         *queue
	tag       string
	exclusive bool
	autoAck   bool
	prefetch  int
	held      int // delivered, not settled
	outbox    []oslo.Delivery
	out       chan oslo.Delivery
	wake      chan struct{} // buffered: something is in the outbox
	stop      chan struct{}
	stopped   bool
	unhook    func() bool
}

// give takes a message for this consumer (broker lock held).
func (c *consumer) give(m *message) {
	var d oslo.Delivery
	if c.autoAck {
		d = m.delivery(0, nil)
	} else {
		c.s.nextTag++
		tag := c.s.nextTag
		c.s.unacked[tag] = &pending{q: c.q, m: m, c: c}
		c.held++
		d = m.delivery(tag, (*acker)(c.s))
	}
	c.outbox = append(c.outbox, d)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// detach cancels the consumer (broker lock held): it leaves its queue and
// its goroutine ends; what is in its outbox stays delivered (unsettled on
// the session), as with basic.cancel.
func (c *consumer) detach() {
	if c.stopped {
		return
	}
	c.stopped = true
	close(c.stop)
	if c.unhook != nil {
		c.unhook()
	}
	delete(c.s.consumers, c.tag)
	q := c.q
	q.consumers = slices.DeleteFunc(q.consumers, func(x *consumer) bool { return x == c })
	if q.autoDelete && len(q.consumers) == 0 {
		q.vh.deleteQueue(q.name)
	}
}

func (c *consumer) pump() {
	defer close(c.out)
	for {
		c.s.b.mu.Lock()
		var d oslo.Delivery
		ok := len(c.outbox) > 0
		if ok {
			d = c.outbox[0]
			c.outbox = c.outbox[1:]
		}
		c.s.b.mu.Unlock()
		if !ok {
			select {
			case <-c.wake:
				continue
			case <-c.stop:
				return
			}
		}
		select {
		case c.out <- d:
		case <-c.stop:
			return
		}
	}
}

// acker settles deliveries on its session.
type acker session

func (a *acker) settle(what string, tag uint64, requeue bool) error {
	s := (*session)(a)
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.closed() {
		return s.gone(what)
	}
	p, ok := s.unacked[tag]
	if !ok {
		return s.fail(what, &oslo.BrokerError{Code: 406, Reason: fmt.Sprintf("PRECONDITION_FAILED - unknown delivery tag %d", tag)})
	}
	delete(s.unacked, tag)
	p.c.held--
	if requeue {
		p.m.redelivered = true
		p.q.msgs = append([]*message{p.m}, p.q.msgs...)
	}
	if _, live := p.q.vh.queues[p.q.name]; live {
		p.q.dispatch()
	}
	return nil
}

func (a *acker) Ack(tag uint64) error                { return a.settle("ack", tag, false) }
func (a *acker) Nack(tag uint64, requeue bool) error { return a.settle("nack", tag, requeue) }

func (s *session) Publish(ctx context.Context, p oslo.Publishing) error {
	if p.Mandatory && p.MessageID == "" {
		return fmt.Errorf("publish: %w: a mandatory publish needs a message_id", errdefs.ErrInvalidArgument)
	}
	s.b.mu.Lock()
	hook := s.b.onPublish
	s.b.mu.Unlock()
	fault := Deliver
	if hook != nil { // outside the lock: it may look at the broker
		fault = hook(s.vh.name, p)
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.closed() {
		return s.gone("publish")
	}
	if fault == Nack {
		return oslo.ErrNacked
	}
	p.Body = slices.Clone(p.Body)
	routed, be := s.vh.route(p, time.Now())
	if be != nil {
		return s.fail(fmt.Sprintf("publish to %q/%q", p.Exchange, p.Key), be)
	}
	if fault == KillAfterRoute {
		s.end(&oslo.BrokerError{Code: 320, Reason: "CONNECTION_FORCED - killed by the test before the confirm"})
		return s.gone("publish")
	}
	if !routed && p.Mandatory {
		return fmt.Errorf("%w (312 NO_ROUTE)", oslo.ErrUnroutable)
	}
	return nil
}
