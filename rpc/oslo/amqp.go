package oslo

// This file and admin.go are the only ones that import amqp091-go: the
// Transport of a real broker here, the cut-over's topology work there. Everything AMQP-shaped is translated here into the package's own
// types (Delivery, Publishing, BrokerError) and error classes. It does not
// use amqp091's experimental auto-recovery: a session ends with its
// connection, and the package's one reconnect loop (link.go) dials a new
// one, so delivery tags are never carried across channels.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"opendev.org/x/ferry/pkg/errdefs"
)

// amqpTransport dials the hosts of a TransportURL in order.
type amqpTransport struct {
	url       TransportURL
	tls       TLSOptions    // resolved: the URL's query over the configured options
	threshold time.Duration // heartbeat_timeout_threshold
	name      string        // connection_name, shown by rabbitmqctl list_connections
}

// amqpHeartbeat is what amqp091 is given for oslo's
// heartbeat_timeout_threshold. oslo hands the threshold to kombu and py-amqp
// checks it at threshold/2 (heartbeat_rate 2). amqp091 negotiates its
// Config.Heartbeat with the broker (the smaller wins), sends a frame every
// Heartbeat/2 of silence and gives up after 3×Heartbeat/2 without a frame
// from the broker. Half the threshold thus sends every threshold/4 and
// notices a dead broker after 0.75×threshold (45 s for the default 60 s;
// handing amqp091 the threshold itself took 90 s, the 60 s of a RabbitMQ
// that caps it plus the time of a lost socket). amqp091 counts whole
// seconds: below 2 s of threshold it would ask for none, so 1 s is the
// floor.
func amqpHeartbeat(threshold time.Duration) time.Duration {
	return max(threshold/2, time.Second)
}

// Dial connects to the first host that answers and opens a confirm-mode
// channel on it.
func (t *amqpTransport) Dial(ctx context.Context) (Session, error) {
	conn, err := t.dial(ctx)
	if err != nil {
		return nil, err
	}
	s, err := openSession(conn)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w: %w", t.url, errdefs.ErrUnavailable, err)
	}
	return s, nil
}

// dial connects to the first host that answers. A broker certificate
// that every host's dial refused (untrusted, or not naming the host) is a
// configuration error, not an outage: it wraps errdefs.ErrInvalidArgument
// so that the reconnect loop gives up and the operator reads why.
func (t *amqpTransport) dial(ctx context.Context) (*amqp.Connection, error) {
	scheme := "amqp"
	if t.tls.Enabled {
		scheme = "amqps"
	}
	var errs []error
	refused := 0 // hosts whose certificate was refused
	for _, h := range t.url.Hosts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var tlsCfg *tls.Config
		if t.tls.Enabled {
			var err error
			if tlsCfg, err = t.tls.config(h.Host); err != nil {
				return nil, fmt.Errorf("connect to %s: %w: %w", t.url, errdefs.ErrInvalidArgument, err)
			}
		}
		cfg := amqp.Config{
			SASL:            []amqp.Authentication{&amqp.PlainAuth{Username: h.Username, Password: h.Password()}},
			Vhost:           t.url.VHost,
			Heartbeat:       amqpHeartbeat(t.threshold),
			TLSClientConfig: tlsCfg,
			Properties:      amqp.Table{"connection_name": t.name, "product": "ferry"},
			Dial:            amqp.DefaultDial(10 * time.Second),
		}
		conn, err := amqp.DialConfig(scheme+"://"+h.Addr()+"/", cfg)
		if err == nil {
			return conn, nil
		}
		if ce := t.tls.certError(h.Host, err); ce != nil {
			refused++
			err = ce
		} else if t.tls.Enabled && t.tls.CertFile == "" && noClientCert(err) {
			err = fmt.Errorf("%w (the broker may require a client certificate: ssl_cert_file and ssl_key_file are not set)", err)
		}
		errs = append(errs, fmt.Errorf("%s@%s: %w", h.Username, h.Addr(), err))
	}
	class := errdefs.ErrUnavailable
	if refused == len(t.url.Hosts) {
		class = errdefs.ErrInvalidArgument
	}
	return nil, fmt.Errorf("connect to %s: %w: %w", t.url, class, errors.Join(errs...))
}

// noClientCert tells the errors of a broker that refused a client for
// sending no certificate: TLS 1.3 reports it after the handshake, as an
// alert, or as a connection closed or reset under amqp091's first frames.
func noClientCert(err error) bool {
	return errors.Is(err, amqp.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "certificate required")
}

// amqpSession is a Session on an amqp091 connection and channel.
type amqpSession struct {
	conn  deadlineCloser // the *amqp.Connection; a fake in amqp_test.go
	ch    *amqp.Channel
	pubMu sync.Mutex // a publish and the sequence number it gets
	track *confirms

	once sync.Once
	done chan struct{}
	err  error // set before done is closed
	wg   sync.WaitGroup
}

func openSession(conn *amqp.Connection) (*amqpSession, error) {
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		_ = conn.CloseDeadline(time.Now().Add(5 * time.Second))
		return nil, fmt.Errorf("open channel: %w", err)
	}
	s := &amqpSession{conn: conn, ch: ch, track: newConfirms(), done: make(chan struct{})}
	n := notifications{
		conn:     conn.NotifyClose(make(chan *amqp.Error, 1)),
		ch:       ch.NotifyClose(make(chan *amqp.Error, 1)),
		cancels:  ch.NotifyCancel(make(chan string, 8)),
		returns:  ch.NotifyReturn(make(chan amqp.Return, 64)),
		confirms: ch.NotifyPublish(make(chan amqp.Confirmation, 256)),
	}
	s.wg.Go(func() { s.watch(n) })
	return s, nil
}

// deadlineCloser is all a session does with its connection once open.
type deadlineCloser interface {
	CloseDeadline(deadline time.Time) error
}

type notifications struct {
	conn, ch chan *amqp.Error
	cancels  chan string
	returns  chan amqp.Return
	confirms chan amqp.Confirmation
}

// watch reads what the broker reports about the session, in wire order
// (returns before the confirm of the same message: amqp091 hands both over
// on its reader goroutine, one after the other, into buffered channels this
// loop alone drains), until amqp091 has closed the connection's notify
// channel. It keeps draining after the session has failed, as amqp091
// requires.
func (s *amqpSession) watch(n notifications) {
	for n.conn != nil {
		select {
		case r, ok := <-n.returns:
			if !ok {
				n.returns = nil
				continue
			}
			s.track.returned(r.MessageId, int(r.ReplyCode), r.ReplyText)
		case c, ok := <-n.confirms:
			if !ok {
				n.confirms = nil
				continue
			}
			for drained := false; !drained && n.returns != nil; {
				select {
				case r, ok := <-n.returns:
					if ok {
						s.track.returned(r.MessageId, int(r.ReplyCode), r.ReplyText)
					} else {
						n.returns = nil
					}
				default:
					drained = true
				}
			}
			s.track.confirmed(c.DeliveryTag, c.Ack)
		case tag, ok := <-n.cancels:
			if !ok {
				n.cancels = nil
				continue
			}
			s.fail(fmt.Errorf("%w: the broker cancelled consumer %s (queue deleted?)", ErrSessionClosed, tag))
		case e, ok := <-n.ch:
			if !ok {
				n.ch = nil
			}
			s.fail(closeError("channel", e))
		case e, ok := <-n.conn:
			if !ok {
				n.conn = nil
			}
			s.fail(closeError("connection", e))
		}
	}
}

func closeError(what string, e *amqp.Error) error {
	if e == nil {
		return fmt.Errorf("%w: %s closed", ErrSessionClosed, what)
	}
	return fmt.Errorf("%w: %s closed: %w", ErrSessionClosed, what, &BrokerError{Code: e.Code, Reason: e.Reason})
}

// fail ends the session with err (the first reason wins) and closes the
// connection without waiting long for a dead peer.
func (s *amqpSession) fail(err error) {
	s.once.Do(func() {
		s.err = err
		s.track.fail(err)
		close(s.done)
		s.wg.Go(func() { _ = s.conn.CloseDeadline(time.Now().Add(5 * time.Second)) })
	})
}

func (s *amqpSession) Done() <-chan struct{} { return s.done }

func (s *amqpSession) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

func (s *amqpSession) Close() error {
	s.fail(fmt.Errorf("%w: closed by ferry", ErrSessionClosed))
	s.wg.Wait()
	return nil
}

// translate turns an amqp091 error into the package's: a channel or
// connection exception becomes a *BrokerError (and ends the session, as
// it has ended the channel), anything on a closed session ErrSessionClosed.
func (s *amqpSession) translate(what string, err error) error {
	var ae *amqp.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae) && ae.Code != 0 && ae != amqp.ErrClosed:
		be := &BrokerError{Code: ae.Code, Reason: ae.Reason}
		s.fail(fmt.Errorf("%w: %s: %w", ErrSessionClosed, what, be))
		return fmt.Errorf("%s: %w", what, be)
	case errors.Is(err, amqp.ErrClosed) || s.Err() != nil:
		return fmt.Errorf("%s: %w", what, ErrSessionClosed)
	}
	return fmt.Errorf("%s: %w: %w", what, errdefs.ErrUnavailable, err)
}

func (s *amqpSession) Declare(_ context.Context, d Declaration) error {
	if d.Exchange != "" {
		err := s.ch.ExchangeDeclare(d.Exchange, d.ExchangeKind, d.ExchangeDurable, d.ExchangeAutoDelete, false, false, nil)
		if err != nil {
			return s.translate("declare exchange "+d.Exchange, err)
		}
	}
	if d.Queue == "" {
		return nil
	}
	if _, err := s.ch.QueueDeclare(d.Queue, d.Durable, d.AutoDelete, false, false, amqp.Table(d.Args)); err != nil {
		return s.translate("declare queue "+d.Queue, err)
	}
	if d.Exchange != "" {
		if err := s.ch.QueueBind(d.Queue, d.Key, d.Exchange, false, nil); err != nil {
			return s.translate("bind queue "+d.Queue, err)
		}
	}
	return nil
}

func (s *amqpSession) DeleteQueue(_ context.Context, queue string) error {
	_, err := s.ch.QueueDelete(queue, false, false, false)
	return s.translate("delete queue "+queue, err)
}

func (s *amqpSession) Consume(ctx context.Context, queue string, o ConsumeOptions) (<-chan Delivery, error) {
	if o.Prefetch > 0 { // applies to the consumers created after it (RabbitMQ: global=false is per consumer)
		if err := s.ch.Qos(o.Prefetch, 0, false); err != nil {
			return nil, s.translate("qos", err)
		}
	}
	in, err := s.ch.ConsumeWithContext(ctx, queue, o.Tag, o.AutoAck, o.Exclusive, false, false, nil)
	if err != nil {
		return nil, s.translate("consume "+queue, err)
	}
	out := make(chan Delivery)
	s.wg.Go(func() {
		defer close(out)
		for d := range in {
			select {
			case out <- s.delivery(d):
			case <-s.done:
				for range in { // amqp091 closes it when the channel shuts down
				}
				return
			}
		}
	})
	return out, nil
}

func (s *amqpSession) delivery(d amqp.Delivery) Delivery {
	return Delivery{
		Properties: Properties{
			ContentType: d.ContentType, ContentEncoding: d.ContentEncoding, Headers: d.Headers,
			DeliveryMode: d.DeliveryMode, Priority: d.Priority, CorrelationID: d.CorrelationId,
			ReplyTo: d.ReplyTo, Expiration: d.Expiration, MessageID: d.MessageId, Timestamp: d.Timestamp,
			Type: d.Type, UserID: d.UserId, AppID: d.AppId,
		},
		Body: d.Body, Exchange: d.Exchange, RoutingKey: d.RoutingKey, Redelivered: d.Redelivered,
		Tag: d.DeliveryTag, Acker: (*amqpAcker)(s),
	}
}

// amqpAcker settles deliveries on the session's own channel.
type amqpAcker amqpSession

func (a *amqpAcker) Ack(tag uint64) error {
	s := (*amqpSession)(a)
	return s.translate("ack", s.ch.Ack(tag, false))
}

func (a *amqpAcker) Nack(tag uint64, requeue bool) error {
	s := (*amqpSession)(a)
	return s.translate("nack", s.ch.Nack(tag, false, requeue))
}

func (s *amqpSession) Publish(ctx context.Context, p Publishing) error {
	if p.Mandatory && p.MessageID == "" {
		return fmt.Errorf("publish: %w: a mandatory publish needs a message_id", errdefs.ErrInvalidArgument)
	}
	msg := amqp.Publishing{
		ContentType: p.ContentType, ContentEncoding: p.ContentEncoding, Headers: amqp.Table(p.Headers),
		DeliveryMode: p.DeliveryMode, Priority: p.Priority, CorrelationId: p.CorrelationID, ReplyTo: p.ReplyTo,
		Expiration: p.Expiration, MessageId: p.MessageID, Timestamp: p.Timestamp, Type: p.Type, UserId: p.UserID,
		AppId: p.AppID, Body: p.Body,
	}
	msgID := ""
	if p.Mandatory {
		msgID = p.MessageID
	}
	s.pubMu.Lock()
	tag := s.ch.GetNextPublishSeqNo()
	done, err := s.track.add(tag, msgID)
	if err == nil {
		if err = s.ch.PublishWithContext(ctx, p.Exchange, p.Key, p.Mandatory, false, msg); err != nil {
			s.track.forget(tag)
		}
	}
	s.pubMu.Unlock()
	if err != nil {
		return s.translate(fmt.Sprintf("publish to %q/%q", p.Exchange, p.Key), err)
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		s.track.forget(tag)
		return fmt.Errorf("publish to %q/%q: no confirm: %w", p.Exchange, p.Key, context.Cause(ctx))
	}
}
