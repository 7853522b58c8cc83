package oslo_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
	"opendev.org/x/ferry/rpc/oslo/oslotest"
)

// A cast whose connection died before its handler acked it comes back,
// marked redelivered, on the server's next session: the server knows its
// _unique_id and acks the copy without running the handler again.
func TestRedeliveryAfterLostConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var runs atomic.Int32
		release := make(chan struct{})
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"live_migration": func(context.Context, *oslo.Request) (any, error) {
				runs.Add(1)
				<-release
				return nil, nil
			},
		}), nil)
		srv.waitReady(t)
		send(t, b, "compute.h1", envelope(t, cast("live_migration", "lm1", nil)))
		synctest.Wait()
		b.KillConnections()
		time.Sleep(2 * time.Second) // the reconnect backoff
		if st := queueState(t, b, "compute.h1"); st.Ready != 0 || st.Unacked != 0 || st.Consumers != 1 {
			t.Errorf("after the reconnect: %+v, want the redelivered copy acked and one consumer", st)
		}
		close(release)
		synctest.Wait()
		if n := runs.Load(); n != 1 {
			t.Errorf("handler ran %d times, want once", n)
		}
		if !srv.log.has(logrus.WarnLevel, "duplicate message") || !srv.log.has(logrus.WarnLevel, "ack of a cast failed") {
			t.Error("the dropped copy or the failed ack was not logged")
		}
		if !srv.log.has(logrus.InfoLevel, "service resumed") {
			t.Error("nothing at info level says the service resumed")
		}
	})
}

// A repeated _unique_id is dropped: one handler run for two identical
// casts, no second reply for a repeated call.
func TestDuplicatesDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var runs atomic.Int32
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"record": func(context.Context, *oslo.Request) (any, error) { runs.Add(1); return nil, nil },
			"echo":   func(context.Context, *oslo.Request) (any, error) { return "ok", nil },
		}), func(o *oslo.ServerOptions) { o.DedupSize = 2 })
		srv.waitReady(t)
		c := newCaller(t, b)
		body := envelope(t, cast("record", "dup", nil))
		send(t, b, "compute.h1", body)
		send(t, b, "compute.h1", body)
		call := envelope(t, c.call("echo", "d1"))
		send(t, b, "compute.h1", call)
		send(t, b, "compute.h1", call)
		if rs := c.pending(t); len(rs) != 1 || runs.Load() != 1 {
			t.Errorf("replies %d, runs %d; want 1 and 1", len(rs), runs.Load())
		}
		if st := queueState(t, b, "compute.h1"); st.Unacked != 0 || st.Ready != 0 {
			t.Errorf("host queue %+v: the duplicate cast must be acked", st)
		}
		// DedupSize 2: two newer ids push "u-dup" out; it is served again.
		send(t, b, "compute.h1", envelope(t, cast("record", "x1", nil)))
		send(t, b, "compute.h1", envelope(t, cast("record", "x2", nil)))
		send(t, b, "compute.h1", body)
		synctest.Wait()
		if n := runs.Load(); n != 4 {
			t.Errorf("runs = %d, want 4 once the id has left the dedup window", n)
		}
	})
}

// What cannot be served: a call gets a failure reply whenever its reply
// address can be read (a ValueError as oslo raises it, or oslo's
// UnsupportedRpcEnvelopeVersion), a cast is rejected without requeue, and
// the next good message is served.
func TestUndecodableMessages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var runs atomic.Int32
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"echo": func(context.Context, *oslo.Request) (any, error) { runs.Add(1); return "ok", nil },
		}), func(o *oslo.ServerOptions) { o.MaxMessageSize = 64 << 10 })
		srv.waitReady(t)
		c := newCaller(t, b)
		addr := `"_msg_id":"bad","_reply_q":"` + c.replyQ + `"`
		huge := strings.Repeat("x", 64<<10)
		for _, tc := range []struct {
			name, ctype, body, class string
		}{
			{"not JSON", "application/json", `{"method": `, ""},
			{"text/plain", "text/plain", `{"method":"echo",` + addr + `}`, "ValueError"},
			{"no method", "application/json", `{"args":{},` + addr + `}`, "ValueError"},
			{"huge call", "application/json", `{"method":"echo","args":{"pad":"` + huge + `"},` + addr + `}`, "ValueError"},
			{"huge enveloped call", "application/json", string(envelope(t, msg{"method": "echo", "args": map[string]any{"pad": huge},
				"_msg_id": "bad", "_reply_q": c.replyQ}))[:], "ValueError"},
			{"huge cast", "application/json", `{"method":"echo","args":{"pad":"` + huge + `"}}`, ""},
			{"envelope 3.0", "application/json", `{"oslo.version":"3.0","oslo.message":"{\"method\":\"echo\",\"_msg_id\":\"bad\",\"_reply_q\":\"` +
				c.replyQ + `\"}"}`, "UnsupportedRpcEnvelopeVersion"},
		} {
			_, err := b.Publish(vh, oslo.Publishing{Exchange: "nova", Key: "compute.h1", Body: []byte(tc.body),
				Properties: oslo.Properties{ContentType: tc.ctype}})
			if err != nil {
				t.Fatal(err)
			}
			rs := c.pending(t)
			switch {
			case tc.class == "" && len(rs) != 0:
				t.Errorf("%s: replies %+v, want none", tc.name, rs)
			case tc.class != "" && len(rs) != 1:
				t.Errorf("%s: %d replies, want one failure", tc.name, len(rs))
			case tc.class != "":
				if f := rs[0].failure(t); f["class"] != tc.class || rs[0].MsgID != "bad" || !rs[0].Ending {
					t.Errorf("%s: reply %+v %v, want a final %s", tc.name, rs[0], f, tc.class)
				}
			}
			if st := queueState(t, b, "compute.h1"); st.Ready != 0 || st.Unacked != 0 {
				t.Errorf("%s: host queue %+v, want it settled and not requeued", tc.name, st)
			}
		}
		if runs.Load() != 0 {
			t.Errorf("a handler ran %d times for undecodable messages", runs.Load())
		}
		send(t, b, "compute.h1", envelope(t, c.call("echo", "good")))
		if r := c.next(t, time.Second); r.Failure != nil || r.MsgID != "good" {
			t.Errorf("good call after the bad ones: %+v", r)
		}
	})
}

// The host's queue is consumed exclusively: a consumer already on it (a
// nova-compute left running) stops Serve with ErrQueueInUse saying what to
// do, and with it holding the queue no second consumer gets in.
func TestHostQueueInUse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		other := holdQueue(t, b, "compute.h1")
		srv := startServer(t, b, handlers(echo), nil)
		err := srv.ended(t, time.Minute)
		if !errors.Is(err, oslo.ErrQueueInUse) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Fatalf("Serve = %v, want ErrQueueInUse", err)
		}
		for _, s := range []string{"in exclusive use", "nova-compute", "companion mode"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not say %q", err, s)
			}
		}
		_ = other.Close()

		srv2 := startServer(t, b, handlers(echo), nil)
		srv2.waitReady(t)
		s, err := b.Transport(vh).Dial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Consume(context.Background(), "compute.h1", oslo.ConsumeOptions{Tag: "nova"}); !strings.Contains(fmtErr(err), "403") {
			t.Errorf("a second consumer beside the server: %v, want a 403", err)
		}
	})
}

func fmtErr(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// holdQueue declares a queue as oslo does and consumes it from a session
// of its own, as a nova-compute would.
func holdQueue(t *testing.T, b *oslotest.Broker, name string) oslo.Session {
	t.Helper()
	s, _ := listen(t, b, oslo.Declaration{Exchange: "nova", ExchangeKind: "topic", Queue: name, Key: name},
		oslo.ConsumeOptions{Tag: "nova-compute"})
	return s
}

// After a lost connection the holder may be the server's own old
// connection, which the broker has not dropped yet: a refusal is retried
// for twice the heartbeat threshold, and only one that outlasts it stops
// Serve.
func TestHostQueueInUseAfterReconnect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		srv := startServer(t, b, handlers(echo), func(o *oslo.ServerOptions) { o.Heartbeat = 10 * time.Second })
		srv.waitReady(t)
		b.KillConnections()
		stale := holdQueue(t, b, "compute.h1") // "our old connection", for 5 s
		time.Sleep(5 * time.Second)
		_ = stale.Close()
		time.Sleep(5 * time.Second) // backoff 1, 3, 5 s
		if st := queueState(t, b, "compute.h1"); st.Consumers != 1 || !st.Exclusive {
			t.Fatalf("after the holder left: %+v, want the server back", st)
		}
		select {
		case err := <-srv.served:
			t.Fatalf("Serve ended: %v", err)
		default:
		}

		b.KillConnections()
		holdQueue(t, b, "compute.h1") // a nova-compute, for good
		start := time.Now()
		err := srv.ended(t, 5*time.Minute)
		if !errors.Is(err, oslo.ErrQueueInUse) {
			t.Fatalf("Serve = %v, want ErrQueueInUse", err)
		}
		if d := time.Since(start); d < 20*time.Second || d > 50*time.Second {
			t.Errorf("gave up after %s, want once 2×10 s had passed", d)
		}
	})
}

// Queues declared by the deployment with other flags stop Serve with
// ErrTopologyMismatch naming the settings, instead of retrying forever.
func TestTopologyMismatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		declare(t, b, oslo.Declaration{Exchange: "nova", ExchangeKind: "topic", ExchangeDurable: true})
		srv := startServer(t, b, handlers(echo), nil)
		err := srv.ended(t, time.Minute)
		if !errors.Is(err, oslo.ErrTopologyMismatch) || !strings.Contains(err.Error(), "amqp_durable_queues") ||
			!strings.Contains(err.Error(), "inequivalent arg 'durable'") {
			t.Errorf("Serve = %v, want ErrTopologyMismatch naming amqp_durable_queues and the broker's reason", err)
		}
	})
}

// With the broker down at start, Serve keeps trying; when it comes up the
// server serves, says so at info level, and Ready is closed. A clean stop
// deletes the fanout queue, as oslo does; a reconnect declares the same
// one again.
func TestBrokerDownAtStartAndFanout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		b.Down()
		srv := startServer(t, b, handlers(echo), nil)
		time.Sleep(time.Minute)
		select {
		case <-srv.Ready():
			t.Fatal("ready with the broker down")
		case err := <-srv.served:
			t.Fatalf("Serve gave up with the broker down: %v", err)
		default:
		}
		if b.Dials() != 0 {
			t.Fatalf("dials = %d", b.Dials())
		}
		b.Up()
		time.Sleep(30 * time.Second) // at most one backoff
		srv.waitReady(t)
		if !srv.log.has(logrus.InfoLevel, "service resumed") || !srv.log.has(logrus.WarnLevel, "broker unreachable") {
			t.Error("the outage and the recovery were not logged")
		}
		fanout := fanoutQueue(t, b)
		b.KillConnections()
		time.Sleep(2 * time.Second)
		if again := fanoutQueue(t, b); again != fanout {
			t.Errorf("fanout queue after a reconnect = %s, want the same %s", again, fanout)
		}
		srv.stop(t)
		if _, ok := b.Queue(vh, fanout); ok {
			t.Errorf("fanout queue %s left behind after a clean stop", fanout)
		}
	})
}

func fanoutQueue(t *testing.T, b *oslotest.Broker) string {
	t.Helper()
	for _, name := range b.Queues(vh) {
		if strings.HasPrefix(name, "compute_fanout_") {
			if st, _ := b.Queue(vh, name); st.Consumers == 1 {
				return name
			}
		}
	}
	t.Fatalf("no consumed fanout queue among %v", b.Queues(vh))
	return ""
}
