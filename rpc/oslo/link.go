package oslo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// link is the package's one reconnect loop: dial a session, use it until
// it ends, wait (oslo's backoff), dial again. The server's consumers, the
// client's reply consumer and every publisher each run one.
type link struct {
	t        Transport
	what     string // "consumer", "reply consumer", "publisher": for logs
	log      *logrus.Entry
	onResume func() // called when the broker serves again after a loss; may be nil
	name     string // for the Observer: Link*
	obs      Observer
}

// fatalError is what a link's user returns for an error no reconnect
// fixes (the deployment's queues are declared otherwise, the host's queue
// has another consumer): run returns it instead of dialling again.
type fatalError struct{ err error }

func (e fatalError) Error() string { return e.err.Error() }

func fatal(err error) error { return fatalError{err} }

// run keeps a session open until ctx ends (it returns nil) or use returns
// a fatal error (it returns that error). use runs while s lives, calls up
// once s serves (declared, consuming), and returns why it stopped.
func (l *link) run(ctx context.Context, use func(ctx context.Context, s Session, up func()) error) error {
	var bo backoff
	lost := false
	for {
		s, err := l.t.Dial(ctx)
		if ctx.Err() != nil {
			if s != nil {
				_ = s.Close()
			}
			return nil
		}
		if err != nil {
			if errors.Is(err, errdefs.ErrInvalidArgument) {
				return fmt.Errorf("%s: %w", l.what, err)
			}
			l.log.WithError(err).Warnf("%s: broker unreachable; retrying in %s", l.what, bo.peek())
			lost = true
			if bo.wait(ctx) != nil {
				return nil
			}
			continue
		}
		up := func() {
			bo.reset()
			if lost {
				l.log.Infof("%s: broker reachable again; service resumed", l.what)
				if l.onResume != nil {
					l.onResume()
				}
			}
			if lost && l.obs != nil {
				l.obs.AMQPResumed(l.name)
			}
			lost = false
		}
		err = use(ctx, s, up)
		_ = s.Close()
		if fe, ok := errors.AsType[fatalError](err); ok {
			return fe.err
		}
		if ctx.Err() != nil {
			return nil
		}
		lost = true
		if l.obs != nil {
			l.obs.AMQPLost(l.name)
		}
		l.log.WithError(err).Warnf("%s: session lost; reconnecting in %s", l.what, bo.peek())
		if bo.wait(ctx) != nil {
			return nil
		}
	}
}

// backoff is oslo's: 1 s, growing by 2 s per failure, at most 30 s.
type backoff struct{ next time.Duration }

func (b *backoff) peek() time.Duration {
	if b.next == 0 {
		return time.Second
	}
	return b.next
}

func (b *backoff) wait(ctx context.Context) error {
	t := time.NewTimer(b.peek())
	defer t.Stop()
	b.next = min(b.peek()+2*time.Second, 30*time.Second)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (b *backoff) reset() { b.next = 0 }

// connName is the connection_name rabbitmqctl list_connections shows, as
// oslo builds it: "<argv0>:<pid>:<uuid>".
func connName() string {
	return fmt.Sprintf("%s:%d:%s", filepath.Base(os.Args[0]), os.Getpid(), newID())
}

// transportFor is the Transport an Options struct asks for: its own, or
// amqp091-go to its URL with its TLS options (the URL's query over them).
func transportFor(t Transport, u TransportURL, tlsOpts TLSOptions, threshold time.Duration) (Transport, error) {
	if t != nil {
		return t, nil
	}
	return newAMQPTransport(u, tlsOpts, threshold)
}

func newAMQPTransport(u TransportURL, tlsOpts TLSOptions, threshold time.Duration) (*amqpTransport, error) {
	if len(u.Hosts) == 0 {
		return nil, fmt.Errorf("%w: no transport URL", errdefs.ErrInvalidArgument)
	}
	o, err := u.TLSOptions(tlsOpts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return &amqpTransport{url: u, tls: o, threshold: threshold, name: connName()}, nil
}

// publisher publishes through the session its link keeps open, and sends
// a message again, the same bytes, when its session ended before the
// broker confirmed it (receivers drop the copy by its _unique_id, as
// oslo's own ensure() relies on).
type publisher struct {
	mu      sync.Mutex
	cur     Session
	changed chan struct{} // closed and replaced whenever cur changes
}

func newPublisher() *publisher { return &publisher{changed: make(chan struct{})} }

// serve is the publisher's link use: it offers s until s ends.
func (p *publisher) serve(ctx context.Context, s Session, up func()) error {
	p.set(s)
	up()
	select {
	case <-s.Done():
	case <-ctx.Done():
	}
	p.set(nil)
	return s.Err()
}

func (p *publisher) set(s Session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur = s
	close(p.changed)
	p.changed = make(chan struct{})
}

// session returns a live session other than old, waiting for one within
// ctx.
func (p *publisher) session(ctx context.Context, old Session) (Session, error) {
	for {
		p.mu.Lock()
		cur, changed := p.cur, p.changed
		p.mu.Unlock()
		if cur != nil && cur != old {
			return cur, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: not connected to the broker: %w", errdefs.ErrUnavailable, context.Cause(ctx))
		}
	}
}

// publish sends m and waits for the broker's confirm; a mandatory message
// gets a message_id of its own, by which a return is told apart. It fails
// with ErrUnroutable when the broker returned it.
func (p *publisher) publish(ctx context.Context, m Publishing) error {
	if m.Mandatory {
		m.MessageID = newID()
	}
	var s Session
	for {
		var err error
		if s, err = p.session(ctx, s); err != nil {
			return fmt.Errorf("publish to %q/%q: %w", m.Exchange, m.Key, err)
		}
		err = s.Publish(ctx, m)
		if !errors.Is(err, ErrSessionClosed) || ctx.Err() != nil {
			return err
		}
		if c := brokerCode(err); c >= 400 && c < 500 {
			// The broker closed the channel over a publish (404: no such
			// exchange): this one, likely; sending it again would too.
			return err
		}
	}
}
