package oslo

// This is the only file that imports amqp091-go. Everything AMQP-shaped is
// translated here into the package's own types (delivery, publishing) and
// error classes.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// broker dials the hosts of a TransportURL in order.
type broker struct {
	url       TransportURL
	heartbeat time.Duration
	name      string // connection_name, shown by rabbitmqctl list_connections
	log       *logrus.Entry
}

func (b *broker) tlsConfig() (*tls.Config, error) {
	if !b.url.TLS() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca := b.url.Query["ssl_ca_file"]; ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("ssl_ca_file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ssl_ca_file %s: no certificate", ca)
		}
	}
	if cert, key := b.url.Query["ssl_cert_file"], b.url.Query["ssl_key_file"]; cert != "" || key != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("ssl_cert_file/ssl_key_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}

// dial returns a connection to the first host that answers.
func (b *broker) dial(ctx context.Context) (*amqp.Connection, error) {
	tlsCfg, err := b.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	var errs []error
	for _, h := range b.url.Hosts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		scheme := "amqp"
		if tlsCfg != nil {
			scheme = "amqps"
		}
		cfg := amqp.Config{
			SASL:            []amqp.Authentication{&amqp.PlainAuth{Username: h.Username, Password: h.Password()}},
			Vhost:           b.url.VHost,
			Heartbeat:       b.heartbeat,
			TLSClientConfig: tlsCfg,
			Properties:      amqp.Table{"connection_name": b.name, "product": "ferry"},
			Dial:            amqp.DefaultDial(10 * time.Second),
		}
		conn, err := amqp.DialConfig(scheme+"://"+h.Addr()+"/", cfg)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, fmt.Errorf("%s@%s: %w", h.Username, h.Addr(), err))
	}
	return nil, fmt.Errorf("connect to %s: %w: %w", b.url, errdefs.ErrUnavailable, errors.Join(errs...))
}

// backoff is oslo's: 1 s, growing by 2 s per failure, at most 30 s.
type backoff struct{ next time.Duration }

func (b *backoff) wait(ctx context.Context) error {
	if b.next == 0 {
		b.next = time.Second
	}
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(b.next+2*time.Second, 30*time.Second)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (b *backoff) reset() { b.next = 0 }

// delivery is one received message, with acks bound to the channel it came
// on: an ack for a dead channel fails and is never sent on another one.
type delivery struct {
	contentType string
	body        []byte
	redelivered bool
	ack         func() error
	reject      func() error // without requeue
}

func fromAMQP(d amqp.Delivery) delivery {
	return delivery{
		contentType: d.ContentType,
		body:        d.Body,
		redelivered: d.Redelivered,
		ack:         func() error { return d.Ack(false) },
		reject:      func() error { return d.Reject(false) },
	}
}

// publishing is one message to send, with oslo's properties.
type publishing struct {
	exchange   string
	key        string
	mandatory  bool          // replies: a missing reply queue is reported, not ignored
	expiration time.Duration // calls: the caller's timeout; 0 = none
	body       []byte
}

func (p publishing) amqp() amqp.Publishing {
	m := amqp.Publishing{
		ContentType:     contentType,
		ContentEncoding: contentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        0,
		Headers:         amqp.Table{},
		Body:            p.body,
	}
	if p.expiration > 0 {
		m.Expiration = fmt.Sprint(p.expiration.Milliseconds())
	}
	return m
}

// errUnroutable: the broker returned a mandatory message (no such queue).
var errUnroutable = errors.New("unroutable")

// publisher keeps a connection with two confirm-mode channels: one for
// requests (pipelined), one for mandatory replies (one at a time, so that a
// basic.return can be tied to the publish it answers: the broker sends the
// return before the ack, and the reader hands both over in that order).
type publisher struct {
	b     *broker
	log   *logrus.Entry
	mu    sync.Mutex
	cur   *pubChans
	ready chan struct{} // closed while cur != nil
	repMu sync.Mutex
}

type pubChans struct {
	conn     *amqp.Connection
	req, rep *amqp.Channel
	returns  chan amqp.Return
}

func newPublisher(b *broker, log *logrus.Entry) *publisher {
	return &publisher{b: b, log: log, ready: make(chan struct{})}
}

// run keeps the publisher connected until ctx ends. connected is closed the
// first time it is.
func (p *publisher) run(ctx context.Context) {
	var bo backoff
	for ctx.Err() == nil {
		pc, err := p.open(ctx)
		if err != nil {
			p.log.WithError(err).Warn("publisher: connect failed; retrying")
			if bo.wait(ctx) != nil {
				return
			}
			continue
		}
		bo.reset()
		closed := pc.conn.NotifyClose(make(chan *amqp.Error, 1))
		reqClosed := pc.req.NotifyClose(make(chan *amqp.Error, 1))
		repClosed := pc.rep.NotifyClose(make(chan *amqp.Error, 1))
		p.mu.Lock()
		p.cur = pc
		close(p.ready)
		p.mu.Unlock()
		var why *amqp.Error
		select {
		case why = <-closed:
		case why = <-reqClosed:
		case why = <-repClosed:
		case <-ctx.Done():
		}
		p.mu.Lock()
		p.cur = nil
		p.ready = make(chan struct{})
		p.mu.Unlock()
		_ = pc.conn.Close()
		if why != nil {
			p.log.WithField("reason", why.Error()).Warn("publisher: connection lost; reconnecting")
		}
	}
}

func (p *publisher) open(ctx context.Context) (*pubChans, error) {
	conn, err := p.b.dial(ctx)
	if err != nil {
		return nil, err
	}
	pc := &pubChans{conn: conn, returns: make(chan amqp.Return, 16)}
	if pc.req, err = conn.Channel(); err == nil {
		err = pc.req.Confirm(false)
	}
	if err == nil {
		if pc.rep, err = conn.Channel(); err == nil {
			err = pc.rep.Confirm(false)
		}
	}
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("publisher channels: %w", err)
	}
	pc.rep.NotifyReturn(pc.returns)
	return pc, nil
}

func (p *publisher) current(ctx context.Context) (*pubChans, error) {
	for {
		p.mu.Lock()
		cur, ready := p.cur, p.ready
		p.mu.Unlock()
		if cur != nil {
			return cur, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("publish: %w: not connected: %w", errdefs.ErrUnavailable, context.Cause(ctx))
		}
	}
}

// publish sends m and waits for the broker's confirm, re-sending the same
// bytes on a new connection when the old one died first (receivers drop
// the copy by its _unique_id). It returns errUnroutable for a mandatory
// message the broker could not route.
func (p *publisher) publish(ctx context.Context, m publishing) error {
	for {
		pc, err := p.current(ctx)
		if err != nil {
			return err
		}
		ch := pc.req
		if m.mandatory {
			ch = pc.rep
			p.repMu.Lock()
		}
		acked, err := p.publishOn(ctx, pc, ch, m)
		if m.mandatory {
			p.repMu.Unlock()
		}
		switch {
		case errors.Is(err, errUnroutable):
			return err
		case err != nil && ctx.Err() != nil:
			return fmt.Errorf("publish to %q/%q: %w", m.exchange, m.key, err)
		case err == nil && acked:
			return nil
		case err == nil && !ch.IsClosed():
			return fmt.Errorf("publish to %q/%q: %w: broker nacked", m.exchange, m.key, errdefs.ErrUnavailable)
		}
		// The channel died before the confirm: wait for the next one.
		p.log.WithError(err).Debug("publish: channel closed before the confirm; re-sending")
		select {
		case <-ctx.Done():
			return fmt.Errorf("publish to %q/%q: %w", m.exchange, m.key, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *publisher) publishOn(ctx context.Context, pc *pubChans, ch *amqp.Channel, m publishing) (bool, error) {
	if m.mandatory {
		for len(pc.returns) > 0 { // stale returns of a publish that gave up
			<-pc.returns
		}
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, m.exchange, m.key, m.mandatory, false, m.amqp())
	if err != nil {
		return false, err
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		return false, err
	}
	if m.mandatory {
		select {
		case r := <-pc.returns:
			return acked, fmt.Errorf("%w: %s (%d %s)", errUnroutable, m.key, r.ReplyCode, r.ReplyText)
		default:
		}
	}
	return acked, nil
}

// queueDecl is one queue to declare and bind.
type queueDecl struct {
	name       string
	exchange   string
	kind       string // exchange type: topic, fanout
	exDurable  bool
	exAutoDel  bool
	durable    bool
	autoDelete bool
	args       map[string]any
	key        string
}

// declare declares the exchange and the queue and binds them. A 406 from
// the broker means the deployment declared them with other settings: that is
// a configuration error, not something a retry fixes.
func declare(ch *amqp.Channel, q queueDecl) error {
	if err := ch.ExchangeDeclare(q.exchange, q.kind, q.exDurable, q.exAutoDel, false, false, nil); err != nil {
		return declareError("exchange "+q.exchange, err)
	}
	if _, err := ch.QueueDeclare(q.name, q.durable, q.autoDelete, false, false, amqp.Table(q.args)); err != nil {
		return declareError("queue "+q.name, err)
	}
	if err := ch.QueueBind(q.name, q.key, q.exchange, false, nil); err != nil {
		return declareError("binding "+q.name, err)
	}
	return nil
}

// ErrTopologyMismatch: the broker has an exchange or queue with other
// settings than the configuration asks for.
var ErrTopologyMismatch = errors.New("queue or exchange settings differ from the broker's")

func declareError(what string, err error) error {
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		return fmt.Errorf("declare %s: %w: %w: %s; make amqp_durable_queues, amqp_auto_delete, rabbit_quorum_queue "+
			"and rabbit_ha_queues match the deployment's [oslo_messaging_rabbit] settings",
			what, ErrTopologyMismatch, errdefs.ErrFailedPrecondition, ae.Reason)
	}
	return fmt.Errorf("declare %s: %w: %w", what, errdefs.ErrUnavailable, err)
}

// consumerSession declares queues on a fresh channel and hands every
// delivery to handle until the connection or the channel closes (returns
// the reason) or ctx ends (cancels the consumers, returns nil). onReady runs
// once every consumer is in place.
func consumerSession(ctx context.Context, conn *amqp.Connection, prefetch int, queues []queueDecl, autoAck bool,
	handle func(delivery), onReady func()) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w: %w", errdefs.ErrUnavailable, err)
	}
	defer ch.Close()
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	cancelled := ch.NotifyCancel(make(chan string, 4))
	if prefetch > 0 {
		if err := ch.Qos(prefetch, 0, false); err != nil {
			return fmt.Errorf("qos: %w: %w", errdefs.ErrUnavailable, err)
		}
	}
	if len(queues) > 3 {
		return fmt.Errorf("%w: at most three queues per session", errdefs.ErrInvalidArgument)
	}
	var ds [3]<-chan amqp.Delivery // a nil channel never delivers
	for i, q := range queues {
		if q.exchange != "" {
			if err := declare(ch, q); err != nil {
				return err
			}
		} else if _, err := ch.QueueDeclare(q.name, q.durable, q.autoDelete, false, false, amqp.Table(q.args)); err != nil {
			return declareError("queue "+q.name, err)
		}
		if ds[i], err = ch.Consume(q.name, fmt.Sprint(i+1), autoAck, false, false, false, nil); err != nil {
			return declareError("consumer on "+q.name, err)
		}
	}
	if onReady != nil {
		onReady()
	}
	var d amqp.Delivery
	var ok bool
	for {
		select {
		case d, ok = <-ds[0]:
		case d, ok = <-ds[1]:
		case d, ok = <-ds[2]:
		case e := <-connClosed:
			return fmt.Errorf("%w: connection closed: %v", errdefs.ErrUnavailable, e)
		case e := <-chClosed:
			return fmt.Errorf("%w: channel closed: %v", errdefs.ErrUnavailable, e)
		case tag := <-cancelled:
			return fmt.Errorf("%w: broker cancelled consumer %s", errdefs.ErrUnavailable, tag)
		case <-ctx.Done():
			for i := range queues {
				_ = ch.Cancel(fmt.Sprint(i+1), false)
			}
			return nil
		}
		if !ok {
			return fmt.Errorf("%w: deliveries ended", errdefs.ErrUnavailable)
		}
		handle(fromAMQP(d))
	}
}

// closeConn closes a connection without waiting long for a dead peer.
func closeConn(c *amqp.Connection) {
	_ = c.CloseDeadline(time.Now().Add(5 * time.Second))
}
