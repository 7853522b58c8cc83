package oslotest_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
	"opendev.org/x/ferry/rpc/oslo/oslotest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var ctx = context.Background()

func dial(t *testing.T, b *oslotest.Broker, vh string) oslo.Session {
	t.Helper()
	s, err := b.Transport(vh).Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustDeclare(t *testing.T, s oslo.Session, d oslo.Declaration) {
	t.Helper()
	if err := s.Declare(ctx, d); err != nil {
		t.Fatal(err)
	}
}

// Routing as RabbitMQ's exchanges do, per virtual host.
func TestRouting(t *testing.T) {
	b := oslotest.New()
	s := dial(t, b, "v")
	for _, d := range []oslo.Declaration{
		{Exchange: "nova", ExchangeKind: "topic", Queue: "compute", Key: "compute"},
		{Exchange: "nova", ExchangeKind: "topic", Queue: "star", Key: "compute.*"},
		{Exchange: "nova", ExchangeKind: "topic", Queue: "hash", Key: "#.h1"},
		{Exchange: "f", ExchangeKind: "fanout", Queue: "f1", Key: "ignored"},
		{Exchange: "f", ExchangeKind: "fanout", Queue: "f2", Key: "ignored"},
		{Exchange: "d", ExchangeKind: "direct", Queue: "dq", Key: "k"},
	} {
		mustDeclare(t, s, d)
	}
	for _, tc := range []struct {
		exchange, key string
		queues        []string
	}{
		{"nova", "compute", []string{"compute"}},
		{"nova", "compute.h1", []string{"star", "hash"}},
		{"nova", "compute.alt.h1", []string{"hash"}},
		{"nova", "h1", []string{"hash"}},
		{"nova", "conductor", nil},
		{"f", "", []string{"f1", "f2"}},
		{"d", "k", []string{"dq"}},
		{"d", "x", nil},
		{"", "dq", []string{"dq"}},
	} {
		before := map[string]int{}
		for _, q := range b.Queues("v") {
			st, _ := b.Queue("v", q)
			before[q] = st.Ready
		}
		routed, err := b.Publish("v", oslo.Publishing{Exchange: tc.exchange, Key: tc.key, Body: []byte("x")})
		if err != nil || routed != (len(tc.queues) > 0) {
			t.Errorf("%s/%s: routed %v, %v", tc.exchange, tc.key, routed, err)
		}
		var got []string
		for _, q := range b.Queues("v") {
			if st, _ := b.Queue("v", q); st.Ready > before[q] {
				got = append(got, q)
			}
		}
		if strings.Join(got, ",") != strings.Join(slices.Sorted(slices.Values(tc.queues)), ",") {
			t.Errorf("%s/%s went to %v, want %v", tc.exchange, tc.key, got, tc.queues)
		}
	}
	if qs := b.Queues("other"); len(qs) != 0 {
		t.Errorf("queues leak across virtual hosts: %v", qs)
	}
	if _, err := b.Publish("v", oslo.Publishing{Exchange: "nope", Key: "k"}); err == nil ||
		err.Error() != "broker: 404 NOT_FOUND - no exchange 'nope' in vhost 'v'" {
		t.Errorf("publish to a missing exchange: %v", err)
	}
}

// Channel exceptions carry RabbitMQ 3.10's own codes and texts, and end
// the session.
func TestExceptions(t *testing.T) {
	b := oslotest.New()
	base := dial(t, b, "v")
	mustDeclare(t, base, oslo.Declaration{Exchange: "nova", ExchangeKind: "topic", Queue: "q", Args: map[string]any{"x-expires": int32(1800000)}, Key: "q"})
	if _, err := base.Consume(ctx, "q", oslo.ConsumeOptions{Tag: "1"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		do   func(s oslo.Session) error
		want string
	}{
		{"exchange durable", func(s oslo.Session) error {
			return s.Declare(ctx, oslo.Declaration{Exchange: "nova", ExchangeKind: "topic", ExchangeDurable: true})
		}, "406 PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'nova' in vhost 'v': received 'true' but current is 'false'"},
		{"exchange type", func(s oslo.Session) error {
			return s.Declare(ctx, oslo.Declaration{Exchange: "nova", ExchangeKind: "fanout"})
		}, "406 PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'nova' in vhost 'v': received 'fanout' but current is 'topic'"},
		{"queue durable", func(s oslo.Session) error {
			return s.Declare(ctx, oslo.Declaration{Queue: "q", Durable: true, Args: map[string]any{"x-expires": int32(1800000)}})
		}, "406 PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost 'v': received 'true' but current is 'false'"},
		{"queue args", func(s oslo.Session) error {
			return s.Declare(ctx, oslo.Declaration{Queue: "q", Args: map[string]any{"x-expires": int32(60000)}})
		}, "406 PRECONDITION_FAILED - inequivalent arg 'x-expires' for queue 'q' in vhost 'v': received '60000' but current is '1800000'"},
		{"queue args missing", func(s oslo.Session) error { return s.Declare(ctx, oslo.Declaration{Queue: "q"}) },
			"406 PRECONDITION_FAILED - inequivalent arg 'x-expires' for queue 'q' in vhost 'v': received none but current is the value '1800000'"},
		{"consume missing", func(s oslo.Session) error {
			_, err := s.Consume(ctx, "nope", oslo.ConsumeOptions{Tag: "1"})
			return err
		}, "404 NOT_FOUND - no queue 'nope' in vhost 'v'"},
		{"exclusive beside a consumer", func(s oslo.Session) error {
			_, err := s.Consume(ctx, "q", oslo.ConsumeOptions{Tag: "2", Exclusive: true})
			return err
		}, "403 ACCESS_REFUSED - queue 'q' in vhost 'v' in exclusive use"},
		{"unknown delivery tag", func(s oslo.Session) error {
			return (oslo.Delivery{Tag: 99, Acker: ackerOf(t, b, s)}).Ack()
		}, "406 PRECONDITION_FAILED - unknown delivery tag 99"},
		{"mandatory without an id", func(s oslo.Session) error {
			return s.Publish(ctx, oslo.Publishing{Key: "q", Mandatory: true})
		}, "invalid argument"},
	} {
		s := dial(t, b, "v")
		err := tc.do(s)
		switch {
		case err == nil || !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		case strings.Contains(tc.want, " - "):
			if s.Err() == nil || !errors.Is(s.Err(), oslo.ErrSessionClosed) {
				t.Errorf("%s: the session lives on after a channel exception (%v)", tc.name, s.Err())
			}
			if err := s.Publish(ctx, oslo.Publishing{Key: "q"}); !errors.Is(err, oslo.ErrSessionClosed) {
				t.Errorf("%s: publish on the dead session: %v", tc.name, err)
			}
		}
	}
	// An exclusive consumer keeps every other out.
	x := dial(t, b, "v")
	mustDeclare(t, x, oslo.Declaration{Queue: "x"})
	if _, err := x.Consume(ctx, "x", oslo.ConsumeOptions{Tag: "1", Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, b, "v").Consume(ctx, "x", oslo.ConsumeOptions{Tag: "1"}); err == nil ||
		!strings.Contains(err.Error(), "403 ACCESS_REFUSED - queue 'x' in vhost 'v' in exclusive use") {
		t.Errorf("a consumer beside an exclusive one: %v", err)
	}
	if st, _ := b.Queue("v", "x"); !st.Exclusive || st.Consumers != 1 {
		t.Errorf("queue x = %+v", st)
	}
}

// ackerOf gets a delivery's Acknowledger from session s.
func ackerOf(t *testing.T, b *oslotest.Broker, s oslo.Session) oslo.Acknowledger {
	t.Helper()
	q := "acker-" + time.Now().Format("150405.000000000")
	if err := s.Declare(ctx, oslo.Declaration{Queue: q}); err != nil {
		t.Fatal(err)
	}
	in, err := s.Consume(ctx, q, oslo.ConsumeOptions{Tag: q})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish("v", oslo.Publishing{Key: q}); err != nil {
		t.Fatal(err)
	}
	d := <-in
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	return d.Acker
}

// Every publish is confirmed; a mandatory one no queue takes is also
// returned. Unsettled deliveries come back, redelivered, when their
// session dies; prefetch bounds what a consumer holds; a message's
// expiration is kept; auto-delete queues go with their last consumer.
func TestDeliverySemantics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		s := dial(t, b, "v")
		mustDeclare(t, s, oslo.Declaration{Queue: "q"})
		if err := s.Publish(ctx, oslo.Publishing{Key: "nowhere"}); err != nil {
			t.Errorf("unroutable, not mandatory: %v, want a plain confirm", err)
		}
		if err := s.Publish(ctx, oslo.Publishing{Key: "nowhere", Mandatory: true, Properties: oslo.Properties{MessageID: "m"}}); !errors.Is(err, oslo.ErrUnroutable) {
			t.Errorf("unroutable, mandatory: %v, want ErrUnroutable", err)
		}
		for range 3 {
			if err := s.Publish(ctx, oslo.Publishing{Key: "q", Mandatory: true, Properties: oslo.Properties{MessageID: "m"}}); err != nil {
				t.Fatal(err)
			}
		}
		c := dial(t, b, "v")
		in, err := c.Consume(ctx, "q", oslo.ConsumeOptions{Tag: "c", Prefetch: 2})
		if err != nil {
			t.Fatal(err)
		}
		d1, d2 := <-in, <-in
		synctest.Wait()
		if st, _ := b.Queue("v", "q"); st.Ready != 1 || st.Unacked != 2 {
			t.Errorf("with prefetch 2: %+v, want 1 ready, 2 unacked", st)
		}
		if err := d1.Nack(true); err != nil {
			t.Fatal(err)
		}
		if d := <-in; !d.Redelivered {
			t.Error("a requeued message is not marked redelivered")
		}
		_ = d2
		b.KillConnections()
		if _, ok := <-in; ok {
			t.Error("deliveries after the session died")
		}
		if err := d2.Ack(); !errors.Is(err, oslo.ErrSessionClosed) {
			t.Errorf("ack on a dead session: %v", err)
		}
		st, _ := b.Queue("v", "q")
		if st.Ready != 3 || st.Unacked != 0 {
			t.Errorf("after the kill: %+v, want all three back", st)
		}
		if d, _ := b.Get("v", "q"); !d.Redelivered {
			t.Error("a message requeued by a kill is not marked redelivered")
		}

		s2 := dial(t, b, "v")
		mustDeclare(t, s2, oslo.Declaration{Queue: "auto", AutoDelete: true})
		cctx, cancel := context.WithCancel(ctx)
		ch, err := s2.Consume(cctx, "auto", oslo.ConsumeOptions{Tag: "a", AutoAck: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Publish("v", oslo.Publishing{Key: "auto", Properties: oslo.Properties{Expiration: "1000"}}); err != nil {
			t.Fatal(err)
		}
		if d := <-ch; d.Expiration != "1000" {
			t.Errorf("expiration %q", d.Expiration)
		}
		cancel()
		if _, ok := <-ch; ok {
			t.Error("deliveries after the consumer was cancelled")
		}
		if _, ok := b.Queue("v", "auto"); ok {
			t.Error("an auto-delete queue outlived its last consumer")
		}
		mustDeclare(t, s2, oslo.Declaration{Queue: "ttl"})
		if _, err := b.Publish("v", oslo.Publishing{Key: "ttl", Properties: oslo.Properties{Expiration: "1000"}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if st, _ := b.Queue("v", "ttl"); st.Ready != 0 {
			t.Errorf("an expired message is still there: %+v", st)
		}

		b.Down()
		if _, err := b.Transport("v").Dial(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("dial with the broker down: %v", err)
		}
		b.Up()
		dial(t, b, "v")
	})
}
