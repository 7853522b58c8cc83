package oslo_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/rpc/oslo"
	"opendev.org/x/ferry/rpc/oslo/oslotest"
)

// The unit tests of Server, Client and forwarding run against
// oslotest.Broker, most of them inside synctest bubbles, so that reply
// retries, heartbeats and backoffs take no real time. The integration
// tests (integration/oslo) prove the same against RabbitMQ and the Python
// peers.

const vh = "test"

// logs collects what a component logs, for the few tests whose subject is
// a log line (the operator's only signal), and for failure output.
type logs struct {
	mu      sync.Mutex
	entries []*logrus.Entry
}

func (l *logs) Levels() []logrus.Level { return logrus.AllLevels }

func (l *logs) Fire(e *logrus.Entry) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, e)
	return nil
}

// has reports whether a line at level whose message contains s was logged.
func (l *logs) has(level logrus.Level, s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries {
		if e.Level == level && strings.Contains(e.Message, s) {
			return true
		}
	}
	return false
}

func newLog() (*logrus.Entry, *logs) {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.DebugLevel)
	h := &logs{}
	l.AddHook(h)
	return logrus.NewEntry(l), h
}

// server runs a Server on the broker until the test ends.
type server struct {
	*oslo.Server
	served chan error
	log    *logs
}

func startServer(t *testing.T, b *oslotest.Broker, h oslo.Handler, mutate func(*oslo.ServerOptions)) *server {
	t.Helper()
	log, hook := newLog()
	o := oslo.ServerOptions{Transport: b.Transport(vh), Server: "h1", Log: log}
	if mutate != nil {
		mutate(&o)
	}
	srv, err := oslo.NewServer(o, h)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{Server: srv, served: make(chan error, 1), log: hook}
	go func() { s.served <- srv.Serve(context.Background()) }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *server) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-s.Ready():
	case err := <-s.served:
		s.served <- err
		t.Fatalf("Serve ended before it was ready: %v", err)
	}
}

// ended waits for Serve to end by itself, up to within, and returns its
// error (the server counts as stopped).
func (s *server) ended(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-s.served:
		s.served <- err
		return err
	case <-time.After(within):
		t.Fatalf("Serve still running after %s", within)
		return nil
	}
}

// stop shuts the server down (once) and checks that Serve said so.
func (s *server) stop(t *testing.T) {
	select {
	case err := <-s.served:
		s.served <- err
		return // ended by itself; the test has looked at why
	default:
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-s.served; !errors.Is(err, oslo.ErrServerClosed) {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
	s.served <- oslo.ErrServerClosed
}

// caller is a raw client with a reply queue of its own, like the Python
// peer's raw mode: it publishes hand-made bodies and reads the replies
// from a consumer.
type caller struct {
	b       *oslotest.Broker
	replyQ  string
	replies <-chan oslo.Delivery
}

var callers int

func newCaller(t *testing.T, b *oslotest.Broker) *caller {
	t.Helper()
	callers++
	c := &caller{b: b, replyQ: fmt.Sprintf("reply_test%d", callers)}
	_, c.replies = listen(t, b, oslo.Declaration{Queue: c.replyQ}, oslo.ConsumeOptions{Tag: "r", AutoAck: true})
	return c
}

// listen declares d on a session of its own and consumes d.Queue from it
// until the test ends (or the session is closed).
func listen(tb testing.TB, b *oslotest.Broker, d oslo.Declaration, o oslo.ConsumeOptions) (oslo.Session, <-chan oslo.Delivery) {
	tb.Helper()
	s, err := b.Transport(vh).Dial(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	if err := s.Declare(context.Background(), d); err != nil {
		tb.Fatal(err)
	}
	in, err := s.Consume(context.Background(), d.Queue, o)
	if err != nil {
		tb.Fatal(err)
	}
	return s, in
}

// declare declares d on a session of its own.
func declare(t *testing.T, b *oslotest.Broker, d oslo.Declaration) {
	t.Helper()
	s, err := b.Transport(vh).Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Declare(context.Background(), d); err != nil {
		t.Fatal(err)
	}
}

// msg is an inner request message.
type msg map[string]any

func (c *caller) call(method string, id string) msg {
	return msg{"method": method, "args": map[string]any{}, "version": "6.0", "_msg_id": id, "_reply_q": c.replyQ,
		"_unique_id": "u-" + id, "_timeout": nil}
}

func cast(method, id string, args map[string]any) msg {
	if args == nil {
		args = map[string]any{}
	}
	return msg{"method": method, "args": args, "version": "6.0", "_unique_id": "u-" + id}
}

// envelope wraps m as oslo's serialize_msg does.
func envelope(t *testing.T, m msg) []byte {
	t.Helper()
	inner, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": string(inner)})
	return b
}

// send publishes a body to compute.<host> as kombu would.
func send(t *testing.T, b *oslotest.Broker, key string, body []byte) {
	t.Helper()
	routed, err := b.Publish(vh, oslo.Publishing{Exchange: "nova", Key: key, Body: body,
		Properties: oslo.Properties{ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: 2}})
	if err != nil || !routed {
		t.Fatalf("publish to %s: routed=%v, %v", key, routed, err)
	}
}

// reply is an inner reply message.
type reply struct {
	Result  json.RawMessage `json:"result"`
	Failure *string         `json:"failure"`
	Ending  bool            `json:"ending"`
	MsgID   string          `json:"_msg_id"`
	at      time.Time       // when it arrived
}

func (r reply) failure(t *testing.T) map[string]any {
	t.Helper()
	if r.Failure == nil {
		t.Fatalf("reply %+v has no failure", r)
	}
	var f map[string]any
	if err := json.Unmarshal([]byte(*r.Failure), &f); err != nil {
		t.Fatal(err)
	}
	return f
}

// next waits for the next reply, up to within.
func (c *caller) next(t *testing.T, within time.Duration) reply {
	t.Helper()
	select {
	case d := <-c.replies:
		return decodeReply(t, d)
	case <-time.After(within):
		t.Fatalf("no reply within %s", within)
		return reply{}
	}
}

// pending takes every reply that has arrived, once everything in the
// bubble has settled.
func (c *caller) pending(t *testing.T) []reply {
	t.Helper()
	var out []reply
	for {
		synctest.Wait()
		select {
		case d := <-c.replies:
			out = append(out, decodeReply(t, d))
		default:
			return out
		}
	}
}

func decodeReply(t *testing.T, d oslo.Delivery) reply {
	t.Helper()
	var env struct {
		Msg string `json:"oslo.message"`
	}
	var r reply
	if err := json.Unmarshal(d.Body, &env); err != nil || json.Unmarshal([]byte(env.Msg), &r) != nil {
		t.Fatalf("reply not an oslo envelope: %s", d.Body)
	}
	if d.ContentType != "application/json" || d.ContentEncoding != "utf-8" || d.DeliveryMode != 2 || d.Expiration != "" {
		t.Errorf("reply properties %+v, want kombu's (JSON in utf-8, persistent, no expiration)", d.Properties)
	}
	r.at = time.Now()
	return r
}

// handlers is a set of test methods on one endpoint.
func handlers(methods map[string]func(ctx context.Context, r *oslo.Request) (any, error)) oslo.Handler {
	m := map[string]oslo.Handler{}
	for k, f := range methods {
		m[k] = oslo.HandlerFunc(f)
	}
	return &oslo.Dispatcher{Endpoints: []oslo.Endpoint{{Version: "6.4", Methods: m}}}
}

func queueState(t *testing.T, b *oslotest.Broker, name string) oslotest.QueueState {
	t.Helper()
	st, ok := b.Queue(vh, name)
	if !ok {
		t.Fatalf("queue %s missing", name)
	}
	return st
}
