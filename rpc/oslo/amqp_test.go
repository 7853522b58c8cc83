package oslo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"opendev.org/x/ferry/pkg/errdefs"
)

// heartbeat_timeout_threshold is what oslo promises: a dead broker noticed
// within it. amqp091 gives up after 3 × Config.Heartbeat/2 of silence, so
// it gets half the threshold (it was handed the threshold itself, and
// noticed a dead broker after 1.5 × threshold).
func TestAMQPHeartbeat(t *testing.T) {
	for _, tc := range []struct{ threshold, want time.Duration }{
		{60 * time.Second, 30 * time.Second},
		{10 * time.Second, 5 * time.Second},
		{time.Second, time.Second}, // amqp091 counts whole seconds; 0 would mean "none"
	} {
		got := amqpHeartbeat(tc.threshold)
		if got != tc.want {
			t.Errorf("amqpHeartbeat(%s) = %s, want %s", tc.threshold, got, tc.want)
		}
		if noticed := 3 * got / 2; tc.threshold >= 2*time.Second && noticed > tc.threshold {
			t.Errorf("threshold %s: a dead broker noticed after %s", tc.threshold, noticed)
		}
	}
}

// Dial reports each host it tried, never a password, as unavailable; a
// TLS file that cannot be read is not worth a retry.
func TestAMQPDialErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	u, err := ParseTransportURL("rabbit://nova:s3cret@" + addr + ",nova:s3cret@" + addr + "/v")
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&amqpTransport{url: u, threshold: time.Minute, name: connName()}).Dial(context.Background())
	if !errors.Is(err, errdefs.ErrUnavailable) || strings.Count(err.Error(), "nova@"+addr) != 2 || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Dial = %v, want ErrUnavailable naming both hosts, without the password", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (&amqpTransport{url: u}).Dial(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial with a cancelled ctx = %v", err)
	}

	if _, err := transportFor(nil, TransportURL{}, TLSOptions{}, time.Minute); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("no URL, no Transport: %v", err)
	}
}

// Returns are matched to publishes by message_id, confirms by delivery
// tag, whatever the order of the publishes in flight.
func TestConfirms(t *testing.T) {
	c := newConfirms()
	a, _ := c.add(1, "id-a") // mandatory, will be returned
	b, _ := c.add(2, "")     // not mandatory
	x, _ := c.add(3, "id-x") // mandatory, routed
	n, _ := c.add(4, "")     // nacked
	g, _ := c.add(5, "id-g") // given up by its publisher
	c.forget(5)
	c.returned("id-g", 312, "NO_ROUTE") // nobody waits: dropped
	c.returned("id-a", 312, "NO_ROUTE")
	c.returned("nobody", 312, "NO_ROUTE")
	c.confirmed(3, true)
	c.confirmed(1, true) // RabbitMQ acks what it returned
	c.confirmed(2, true)
	c.confirmed(4, false)
	c.confirmed(5, true)
	c.confirmed(99, true) // unknown tag: ignored
	if err := <-a; !errors.Is(err, ErrUnroutable) || !strings.Contains(err.Error(), "312 NO_ROUTE") {
		t.Errorf("returned publish: %v, want ErrUnroutable with the broker's reply", err)
	}
	if err := <-x; err != nil {
		t.Errorf("routed mandatory publish: %v", err)
	}
	if err := <-b; err != nil {
		t.Errorf("plain publish: %v", err)
	}
	if err := <-n; !errors.Is(err, ErrNacked) {
		t.Errorf("nacked publish: %v", err)
	}
	select {
	case err := <-g:
		t.Errorf("a forgotten publish was settled: %v", err)
	default:
	}
	p, _ := c.add(6, "id-p")
	c.fail(ErrSessionClosed)
	if err := <-p; !errors.Is(err, ErrSessionClosed) {
		t.Errorf("pending at close: %v", err)
	}
	if _, err := c.add(7, ""); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("add after close: %v", err)
	}
}

// fakeSessionConn is the connection under an amqpSession: closing it closes the
// notify channels, as amqp091's shutdown does, after hold (when set) is
// closed.
type fakeSessionConn struct {
	n     notifications
	hold  chan struct{}
	once  sync.Once
	calls atomic.Int32
}

func (c *fakeSessionConn) CloseDeadline(time.Time) error {
	c.calls.Add(1)
	if c.hold != nil {
		<-c.hold
	}
	c.once.Do(func() {
		close(c.n.returns)
		close(c.n.confirms)
		close(c.n.cancels)
		close(c.n.ch)
		close(c.n.conn)
	})
	return nil
}

// newWatchedSession is an amqpSession whose watch loop reads n.
func newWatchedSession(hold chan struct{}) (*amqpSession, notifications, *fakeSessionConn) {
	n := notifications{
		conn: make(chan *amqp.Error, 1), ch: make(chan *amqp.Error, 1), cancels: make(chan string, 8),
		returns: make(chan amqp.Return, 64), confirms: make(chan amqp.Confirmation, 256),
	}
	c := &fakeSessionConn{n: n, hold: hold}
	return &amqpSession{conn: c, track: newConfirms(), done: make(chan struct{})}, n, c
}

// A return comes before the confirm of the same message; watch must not
// take the confirm first when both wait (a returned message then looked
// delivered).
func TestSessionReturnBeforeConfirm(t *testing.T) {
	for i := range 200 {
		s, n, _ := newWatchedSession(nil)
		returned, _ := s.track.add(1, "id-a")
		routed, _ := s.track.add(2, "id-b")
		n.returns <- amqp.Return{MessageId: "id-a", ReplyCode: 312, ReplyText: "NO_ROUTE"}
		n.confirms <- amqp.Confirmation{DeliveryTag: 1, Ack: true}
		n.confirms <- amqp.Confirmation{DeliveryTag: 2, Ack: true}
		s.wg.Go(func() { s.watch(n) })
		if err := <-returned; !errors.Is(err, ErrUnroutable) {
			t.Fatalf("run %d: returned publish = %v, want ErrUnroutable", i, err)
		}
		if err := <-routed; err != nil {
			t.Fatalf("run %d: routed publish = %v", i, err)
		}
		if err := s.Err(); err != nil {
			t.Fatalf("run %d: Err of a live session = %v", i, err)
		}
		_ = s.Close()
	}
}

// Whatever ends a session ends it once, with the first reason, fails what
// waits for a confirm, and closes the connection.
func TestSessionEnds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		end     func(n notifications, c *fakeSessionConn)
		code    int // of the *BrokerError in Err; 0 = none
		mention string
	}{
		{"consumer cancelled", func(n notifications, _ *fakeSessionConn) { n.cancels <- "ferry-1" }, 0, "the broker cancelled consumer ferry-1"},
		{"channel exception", func(n notifications, _ *fakeSessionConn) {
			n.ch <- &amqp.Error{Code: 406, Reason: "PRECONDITION_FAILED - unknown delivery tag 7"}
		}, 406, "channel closed"},
		{"connection exception", func(n notifications, _ *fakeSessionConn) {
			n.conn <- &amqp.Error{Code: 320, Reason: "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"}
		}, 320, "connection closed"},
		{"connection lost", func(_ notifications, c *fakeSessionConn) { _ = c.CloseDeadline(time.Now()) }, 0, " closed"},
		{"closed by ferry", nil, 0, "closed by ferry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, n, c := newWatchedSession(nil)
			pending, _ := s.track.add(1, "")
			s.wg.Go(func() { s.watch(n) })
			if tc.end != nil {
				tc.end(n, c)
				select {
				case <-s.Done():
				case <-time.After(10 * time.Second):
					t.Fatal("the session did not end")
				}
			}
			_ = s.Close() // returns once watch has ended
			err := s.Err()
			if !errors.Is(err, ErrSessionClosed) || !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("Err = %v, want ErrSessionClosed saying %q", err, tc.mention)
			}
			if code := brokerCode(err); code != tc.code {
				t.Errorf("Err = %v: broker code %d, want %d", err, code, tc.code)
			}
			if err := <-pending; !errors.Is(err, ErrSessionClosed) {
				t.Errorf("publish waiting for its confirm = %v, want ErrSessionClosed", err)
			}
			if tc.end != nil && tc.name != "connection lost" && c.calls.Load() != 1 {
				t.Errorf("connection closed %d times, want once", c.calls.Load())
			}
			if _, err := s.track.add(2, ""); !errors.Is(err, ErrSessionClosed) {
				t.Errorf("publish after the end = %v", err)
			}
		})
	}
}

// After the session has failed, watch keeps reading what amqp091 hands
// over until it closes the connection's channel: amqp091's reader blocks
// on a full notify channel.
func TestSessionDrainsAfterFailure(t *testing.T) {
	hold := make(chan struct{})
	s, n, _ := newWatchedSession(hold)
	s.wg.Go(func() { s.watch(n) })
	n.cancels <- "ferry-1"
	<-s.Done()
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := range 2 * cap(n.confirms) {
			n.confirms <- amqp.Confirmation{DeliveryTag: uint64(i + 1), Ack: true}
			n.returns <- amqp.Return{MessageId: "x"}
		}
	}()
	select {
	case <-sent:
	case <-time.After(10 * time.Second):
		t.Error("watch stopped reading after the session failed")
	}
	close(hold)
	_ = s.Close()
	<-sent
}

// translate turns amqp091's errors into the package's: an exception
// becomes a *BrokerError and ends the session, a closed channel is
// ErrSessionClosed, anything else unavailable.
func TestSessionTranslate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ended  bool // the session had ended before
		err    error
		want   error // nil: translate returns nil
		code   int
		endsIt bool
	}{
		{name: "nil"},
		{name: "exception", err: &amqp.Error{Code: 404, Reason: "NOT_FOUND - no queue 'q'", Server: true}, want: &BrokerError{}, code: 404, endsIt: true},
		{name: "closed", err: amqp.ErrClosed, want: ErrSessionClosed},
		{name: "other", err: io.ErrUnexpectedEOF, want: errdefs.ErrUnavailable},
		{name: "other after the end", ended: true, err: io.ErrUnexpectedEOF, want: ErrSessionClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _, _ := newWatchedSession(nil)
			defer s.Close()
			if tc.ended {
				s.fail(fmt.Errorf("%w: gone", ErrSessionClosed))
			}
			err := s.translate("declare queue q", tc.err)
			switch w := tc.want.(type) {
			case nil:
				if err != nil {
					t.Errorf("translate = %v, want nil", err)
				}
			case *BrokerError:
				if brokerCode(err) != tc.code || errors.Is(err, ErrSessionClosed) {
					t.Errorf("translate = %v, want a *BrokerError of code %d", err, tc.code)
				}
			default:
				if !errors.Is(err, w) {
					t.Errorf("translate = %v, want %v", err, w)
				}
			}
			if err != nil && !strings.HasPrefix(err.Error(), "declare queue q: ") {
				t.Errorf("translate = %q, want what was asked first", err)
			}
			if ended := s.Err() != nil; ended != (tc.endsIt || tc.ended) {
				t.Errorf("session ended = %t (%v), want %t", ended, s.Err(), tc.endsIt || tc.ended)
			}
			if tc.endsIt && brokerCode(s.Err()) != tc.code {
				t.Errorf("Err = %v, want the exception", s.Err())
			}
		})
	}
}

// A mandatory publish is matched to its return by message_id: without one
// it is refused before it reaches the broker.
func TestPublishMandatoryNeedsID(t *testing.T) {
	err := (&amqpSession{}).Publish(context.Background(), Publishing{Mandatory: true, Key: "compute.h1"})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Publish = %v, want an invalid argument", err)
	}
}
