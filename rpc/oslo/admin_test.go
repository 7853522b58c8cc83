package oslo

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	amqp "github.com/rabbitmq/amqp091-go"

	"opendev.org/x/ferry/pkg/errdefs"
)

// The Admin tests run against fakeBroker (fakeadmin_test.go); the
// integration tests prove the same against RabbitMQ.

// cast is a queued oslo cast with that _unique_id.
func cast(t *testing.T, uid string) amqp.Publishing {
	t.Helper()
	body, err := envelope(map[string]any{"method": "live_migration", "args": map[string]any{}, "_unique_id": uid})
	if err != nil {
		t.Fatal(err)
	}
	return amqp.Publishing{ContentType: contentType, ContentEncoding: contentEncoding, DeliveryMode: 2, Body: body}
}

// Broker exceptions are translated once: 404 is a *NotFoundError, 403
// and 406 failed preconditions, 320, 506 and 541 the broker unavailable,
// and each forgets the channel the broker closed; what is not an
// exception is the broker being unreachable and keeps the channel.
func TestAdminClassify(t *testing.T) {
	for _, tc := range []struct {
		name      string
		err       error
		class     error
		code      int    // of the *BrokerError inside; 0 = none
		mention   string // in the message
		dropsChan bool
	}{
		{"socket", io.ErrUnexpectedEOF, errdefs.ErrUnavailable, 0, "unexpected EOF", false},
		{"closed", amqp.ErrClosed, errdefs.ErrUnavailable, 0, "not open", false},
		{"no code", &amqp.Error{Reason: "odd"}, errdefs.ErrUnavailable, 0, "odd", false},
		{"not found", &amqp.Error{Code: 404, Reason: "NOT_FOUND - no queue 'q'"}, errdefs.ErrNotFound, 404, "no queue 'q'", true},
		{"access refused", &amqp.Error{Code: 403, Reason: "ACCESS_REFUSED"}, errdefs.ErrFailedPrecondition, 403, `broker user "nova" lacks the permission`, true},
		{"precondition", &amqp.Error{Code: 406, Reason: "PRECONDITION_FAILED - queue 'q' not empty"}, errdefs.ErrFailedPrecondition, 406, "not empty", true},
		// The broker's own trouble is retried (ferryd's companion checks wait on ErrUnavailable, and exited on these).
		{"broker shutting down", &amqp.Error{Code: 320, Reason: "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"},
			errdefs.ErrUnavailable, 320, "shutdown", true},
		{"resource alarm", &amqp.Error{Code: 506, Reason: "RESOURCE_ERROR"}, errdefs.ErrUnavailable, 506, "RESOURCE_ERROR", true},
		{"internal error", &amqp.Error{Code: 541, Reason: "INTERNAL_ERROR"}, errdefs.ErrUnavailable, 541, "INTERNAL_ERROR", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newFakeBroker().admin(AdminOptions{})
			ch, err := a.channel()
			if err != nil {
				t.Fatal(err)
			}
			err = a.classify("inspect queue q", tc.err)
			if !errors.Is(err, tc.class) {
				t.Errorf("classify = %v, want it to wrap %v", err, tc.class)
			}
			if be, ok := errors.AsType[*BrokerError](err); (tc.code == 0) == ok || (ok && be.Code != tc.code) {
				t.Errorf("classify = %v, want a *BrokerError of code %d", err, tc.code)
			}
			if !strings.HasPrefix(err.Error(), "inspect queue q: ") || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("classify = %q, want what was asked first and %q", err, tc.mention)
			}
			if nf, ok := errors.AsType[*NotFoundError](err); ok != (tc.code == 404) || (ok && nf.What != "inspect queue q") {
				t.Errorf("classify = %#v: *NotFoundError only for a 404, naming what was asked", err)
			}
			if dropped := a.ch != ch; dropped != tc.dropsChan {
				t.Errorf("channel dropped = %t, want %t", dropped, tc.dropsChan)
			}
		})
	}
}

// Declare makes what an oslo server declares for its topic consumer, with
// the deployment's flags; a broker exception costs only its channel.
func TestAdminDeclare(t *testing.T) {
	b := newFakeBroker()
	a := b.admin(AdminOptions{Exchange: "nova", Queues: QueueOptions{Quorum: true, QuorumDeliveryLimit: 5}})
	ctx := context.Background()
	if err := a.Declare(ctx, "ferry.compute.h1", "compute.h1"); err != nil {
		t.Fatal(err)
	}
	q := b.queues["ferry.compute.h1"]
	if q == nil || !q.durable || q.autoDelete || b.exchanges["nova"] != "topic" {
		t.Fatalf("declared %+v, exchanges %v: want a durable queue on the topic exchange nova", q, b.exchanges)
	}
	if diff := cmp.Diff(amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": int32(5)}, q.args); diff != "" {
		t.Errorf("queue arguments (-want +got):\n%s", diff)
	}
	if !b.bindings[fakeBinding{"nova", "compute.h1", "ferry.compute.h1"}] {
		t.Errorf("bindings %v, want ferry.compute.h1 bound to nova with compute.h1", b.bindings)
	}

	// The same queue with other flags: the broker refuses, naming the argument.
	classic := b.admin(AdminOptions{Exchange: "nova"})
	err := classic.Declare(ctx, "ferry.compute.h1", "compute.h1")
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || brokerCode(err) != 406 || !strings.Contains(err.Error(), "inequivalent arg 'durable'") ||
		!strings.HasPrefix(err.Error(), "declare queue ferry.compute.h1 bound to nova/compute.h1: ") {
		t.Errorf("redeclare with other flags = %v, want a failed precondition naming the queue and the argument", err)
	}
	if err := classic.Declare(ctx, "compute.h2", "compute.h2"); err != nil {
		t.Errorf("declare after an exception = %v, want a new channel", err)
	}
	if b.channels != 3 {
		t.Errorf("%d channels opened, want 3 (one per admin, one after the exception)", b.channels)
	}

	for _, step := range []string{"ExchangeDeclare", "QueueBind"} {
		b.fail[step] = &amqp.Error{Code: 403, Reason: "ACCESS_REFUSED - write access to exchange 'nova' refused"}
		if err := a.Declare(ctx, "q."+step, "k"); !errors.Is(err, errdefs.ErrFailedPrecondition) || brokerCode(err) != 403 {
			t.Errorf("%s refused: Declare = %v, want a failed precondition", step, err)
		}
	}
	b.openErr = io.EOF
	if err := a.Declare(ctx, "q", "k"); !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "open channel") {
		t.Errorf("no channel: Declare = %v, want unavailable", err)
	}
}

func TestAdminBindUnbind(t *testing.T) {
	b := newFakeBroker()
	a := b.admin(AdminOptions{})
	ctx := context.Background()
	b.exchanges["nova"] = "topic"
	b.put("compute.h1")
	bd := fakeBinding{"nova", "compute.h1", "compute.h1"}

	if err := a.Bind(ctx, "compute.h1", "nova", "compute.h1"); err != nil || !b.bindings[bd] {
		t.Fatalf("Bind = %v, bindings %v", err, b.bindings)
	}
	if err := a.Unbind(ctx, "compute.h1", "nova", "compute.h1"); err != nil || b.bindings[bd] {
		t.Fatalf("Unbind = %v, bindings %v", err, b.bindings)
	}
	if err := a.Unbind(ctx, "compute.h1", "nova", "compute.h1"); err != nil {
		t.Errorf("Unbind of a binding that is gone = %v, want nil", err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		what string
	}{
		{"bind to a missing exchange", func() error { return a.Bind(ctx, "compute.h1", "ferry-h1", "k") }, "bind compute.h1 to ferry-h1/k"},
		{"bind a missing queue", func() error { return a.Bind(ctx, "compute.h9", "nova", "k") }, "bind compute.h9 to nova/k"},
		{"unbind a missing queue", func() error { return a.Unbind(ctx, "compute.h9", "nova", "k") }, "unbind compute.h9 from nova/k"},
	} {
		err := tc.call()
		if nf, ok := errors.AsType[*NotFoundError](err); !ok || nf.What != tc.what || !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("%s = %v, want a *NotFoundError for %q", tc.name, err, tc.what)
		}
	}
	b.openErr = io.EOF
	if err := a.Bind(ctx, "compute.h1", "nova", "k"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("no channel: Bind = %v", err)
	}
	if err := a.Unbind(ctx, "compute.h1", "nova", "k"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("no channel: Unbind = %v", err)
	}
}

func TestAdminInspect(t *testing.T) {
	b := newFakeBroker()
	a := b.admin(AdminOptions{})
	b.put("compute.h1", cast(t, "u1"), cast(t, "u2")).consumers = 1
	got, err := a.Inspect(context.Background(), "compute.h1")
	if err != nil || got != (QueueInfo{Messages: 2, Consumers: 1}) {
		t.Errorf("Inspect = %+v, %v; want 2 messages, 1 consumer", got, err)
	}
	_, err = a.Inspect(context.Background(), "compute.h9")
	if nf, ok := errors.AsType[*NotFoundError](err); !ok || nf.What != "inspect queue compute.h9" || nf.Broker.Code != 404 {
		t.Errorf("Inspect of a missing queue = %v, want a *NotFoundError", err)
	}
	b.openErr = io.EOF
	if _, err := a.Inspect(context.Background(), "compute.h1"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("no channel: Inspect = %v", err)
	}
}

func TestAdminDeleteQueueIfEmpty(t *testing.T) {
	for _, tc := range []struct {
		name      string
		msgs      int
		consumers int
		missing   bool
		wantErr   error
		wantGone  bool
	}{
		{name: "empty", wantGone: true},
		{name: "missing", missing: true, wantGone: true},
		{name: "messages wait", msgs: 1, wantErr: errdefs.ErrFailedPrecondition},
		{name: "consumed", consumers: 1, wantErr: errdefs.ErrFailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newFakeBroker()
			a := b.admin(AdminOptions{})
			if !tc.missing {
				q := b.put("compute.h1")
				q.consumers = tc.consumers
				for range tc.msgs {
					q.ready = append(q.ready, cast(t, newID()))
				}
			}
			err := a.DeleteQueueIfEmpty(context.Background(), "compute.h1")
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("DeleteQueueIfEmpty = %v, want %v", err, tc.wantErr)
			}
			if _, ok := b.queues["compute.h1"]; ok == tc.wantGone {
				t.Errorf("queue still there: %t, want %t", ok, !tc.wantGone)
			}
		})
	}
	b := newFakeBroker()
	b.openErr = io.EOF
	if err := b.admin(AdminOptions{}).DeleteQueueIfEmpty(context.Background(), "q"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("no channel: DeleteQueueIfEmpty = %v", err)
	}
}

// Move republishes the backlog in order with its properties, acks each
// original after its confirm, and drops (acks without a copy) what waits
// in the target already. The ids it reads from the target stay there, in
// place.
func TestAdminMove(t *testing.T) {
	b := newFakeBroker()
	a := b.admin(AdminOptions{})
	first := cast(t, "u1")
	first.Headers = amqp.Table{"x": "y"}
	first.CorrelationId, first.ReplyTo, first.Expiration, first.MessageId = "c1", "reply_1", "60000", "m1"
	first.Timestamp = time.Date(2024, 5, 1, 8, 0, 0, 0, time.UTC)
	first.Priority, first.Type, first.AppId, first.UserId = 3, "t", "nova-conductor", "nova"
	other := cast(t, "u3")
	other.UserId = "admin" // another user's: RabbitMQ refuses it from nova
	b.put("compute.h1", first, cast(t, "u2"), other)
	b.put("ferry.compute.h1", cast(t, "u2"), cast(t, "u0"))

	got, err := a.Move(context.Background(), "compute.h1", "ferry.compute.h1")
	if err != nil || got != (Moved{Messages: 2, Duplicates: 1}) {
		t.Fatalf("Move = %+v, %v; want 2 moved, 1 duplicate", got, err)
	}
	if diff := cmp.Diff([]string{"u2", "u0", "u1", "u3"}, b.ids("ferry.compute.h1")); diff != "" {
		t.Errorf("target (-want +got):\n%s", diff)
	}
	if n := len(b.queues["compute.h1"].ready); n != 0 {
		t.Errorf("%d messages left in the source", n)
	}
	if diff := cmp.Diff(first, b.queues["ferry.compute.h1"].ready[2]); diff != "" {
		t.Errorf("the copy differs from the original (-want +got):\n%s", diff)
	}
	if u := b.queues["ferry.compute.h1"].ready[3].UserId; u != "" {
		t.Errorf("another user's user_id copied: %q", u)
	}

	// A target with a consumer is not read: its messages may be taken
	// while it is, and the receiver's own dedup serves.
	b = newFakeBroker()
	b.put("compute.h1", cast(t, "u1"))
	b.put("ferry.compute.h1", cast(t, "u1")).consumers = 1
	got, err = b.admin(AdminOptions{}).Move(context.Background(), "compute.h1", "ferry.compute.h1")
	if err != nil || got != (Moved{Messages: 1}) {
		t.Errorf("Move to a consumed queue = %+v, %v; want 1 moved, no duplicate", got, err)
	}
}

// A copy that is returned, refused or never confirmed leaves its original
// at the head of the source, and the move ends with why.
func TestAdminMoveFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(b *fakeBroker)
		ctx     func() (context.Context, context.CancelFunc)
		want    []error
		mention string
	}{
		{name: "target missing", setup: func(b *fakeBroker) { delete(b.queues, "ferry.compute.h1") },
			want: []error{errdefs.ErrFailedPrecondition, ErrUnroutable}, mention: "queue ferry.compute.h1 is missing"},
		{name: "nacked", setup: func(b *fakeBroker) { b.nack = true }, want: []error{ErrNacked, errdefs.ErrUnavailable}},
		{name: "no confirm", setup: func(b *fakeBroker) { b.lost = true },
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), time.Second)
			},
			want: []error{context.DeadlineExceeded}, mention: "no confirm"},
		{name: "cancelled", ctx: func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, want: []error{context.Canceled}},
		{name: "channel lost on get", setup: func(b *fakeBroker) { b.fail["Get"] = &amqp.Error{Code: 541, Reason: "INTERNAL_ERROR"} },
			mention: "541 INTERNAL_ERROR"},
		{name: "publish refused", setup: func(b *fakeBroker) {
			b.fail["publish"] = &amqp.Error{Code: 403, Reason: "ACCESS_REFUSED - write access to exchange 'amq.default' refused"}
		}, want: []error{errdefs.ErrFailedPrecondition}, mention: "ACCESS_REFUSED"},
		{name: "no channel", setup: func(b *fakeBroker) { b.openErr = io.EOF }, want: []error{errdefs.ErrUnavailable}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newFakeBroker()
				b.put("compute.h1", cast(t, "u1"), cast(t, "u2"))
				b.put("ferry.compute.h1").consumers = 1
				if tc.setup != nil {
					tc.setup(b)
				}
				ctx, cancel := context.Background(), func() {}
				if tc.ctx != nil {
					ctx, cancel = tc.ctx()
				}
				defer cancel()
				got, err := b.admin(AdminOptions{}).Move(ctx, "compute.h1", "ferry.compute.h1")
				if err == nil || got != (Moved{}) {
					t.Fatalf("Move = %+v, %v; want nothing moved and an error", got, err)
				}
				for _, w := range tc.want {
					if !errors.Is(err, w) {
						t.Errorf("Move = %v, want it to wrap %v", err, w)
					}
				}
				if !strings.HasPrefix(err.Error(), "move compute.h1 to ferry.compute.h1: ") || !strings.Contains(err.Error(), tc.mention) {
					t.Errorf("Move = %q, want what was asked first and %q", err, tc.mention)
				}
				if diff := cmp.Diff([]string{"u1", "u2"}, b.ids("compute.h1")); diff != "" {
					t.Errorf("source after a failed move (-want +got):\n%s", diff)
				}
				if q := b.queues["ferry.compute.h1"]; q != nil && len(q.ready) != 0 {
					t.Errorf("target holds %d messages, want none", len(q.ready))
				}
			})
		})
	}

	b := newFakeBroker()
	_, err := b.admin(AdminOptions{}).Move(context.Background(), "compute.h9", "ferry.compute.h1")
	if _, ok := errors.AsType[*NotFoundError](err); !ok {
		t.Errorf("Move from a missing queue = %v, want a *NotFoundError", err)
	}
}

// ProbeAlternate tells a missing private exchange from a missing policy,
// and from a policy that sends the probe elsewhere; it deletes its probe
// queue whatever the outcome.
func TestAdminProbeAlternate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(b *fakeBroker)
		want    []error
		mention string
	}{
		{name: "policy in place"},
		{name: "probe arrives late", setup: func(b *fakeBroker) { b.late = 5 }},
		{name: "no private exchange", setup: func(b *fakeBroker) { delete(b.exchanges, "ferry-h1") },
			want: []error{ErrNoPrivateExchange, errdefs.ErrNotFound}},
		{name: "no policy", setup: func(b *fakeBroker) { delete(b.alternate, "ferry-h1") },
			want: []error{ErrNoAlternate, errdefs.ErrFailedPrecondition}, mention: "returned the probe (312 NO_ROUTE)"},
		{name: "policy to another exchange", setup: func(b *fakeBroker) {
			b.exchanges["elsewhere"] = "fanout"
			b.put("sink")
			b.bindings[fakeBinding{"elsewhere", "", "sink"}] = true
			b.alternate["ferry-h1"] = "elsewhere"
		}, want: []error{ErrNoAlternate, errdefs.ErrFailedPrecondition}, mention: "never arrived"},
		{name: "nacked", setup: func(b *fakeBroker) { b.nack = true }, want: []error{errdefs.ErrUnavailable}, mention: "not confirmed"},
		{name: "no bind permission", setup: func(b *fakeBroker) {
			b.fail["QueueBind"] = &amqp.Error{Code: 403, Reason: "ACCESS_REFUSED - read access to exchange 'nova' refused"}
		}, want: []error{errdefs.ErrFailedPrecondition}, mention: `"nova" lacks the permission`},
		{name: "no channel", setup: func(b *fakeBroker) { b.openErr = io.EOF }, want: []error{errdefs.ErrUnavailable}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newFakeBroker()
				b.exchanges["nova"], b.exchanges["ferry-h1"] = "topic", "topic"
				b.alternate["ferry-h1"] = "nova"
				if tc.setup != nil {
					tc.setup(b)
				}
				start := time.Now()
				err := b.admin(AdminOptions{}).ProbeAlternate(context.Background(), "ferry-h1")
				if tc.want == nil && err != nil {
					t.Errorf("ProbeAlternate = %v, want nil", err)
				}
				for _, w := range tc.want {
					if !errors.Is(err, w) {
						t.Errorf("ProbeAlternate = %v, want it to wrap %v", err, w)
					}
				}
				if err != nil && !strings.Contains(err.Error(), tc.mention) {
					t.Errorf("ProbeAlternate = %q, want %q", err, tc.mention)
				}
				if waited := time.Since(start); waited > 2*time.Second+100*time.Millisecond {
					t.Errorf("ProbeAlternate took %s, want at most its 2 s", waited)
				}
				for name := range b.queues {
					if strings.HasPrefix(name, "ferry.probe.") {
						t.Errorf("probe queue %s left behind", name)
					}
				}
			})
		})
	}
}

// CheckCompanion names every problem of a host not cut over, with what to
// do, and keeps the classes ferryd's start waits on.
func TestCheckCompanion(t *testing.T) {
	c := CompanionCheck{Exchange: "nova", NovaComputeExchange: "ferry-h1", NovaComputeQueue: "compute.h1"}
	for _, tc := range []struct {
		name     string
		setup    func(b *fakeBroker)
		want     []error
		mentions []string
	}{
		{name: "cut over"},
		{name: "nova-compute not started", setup: func(b *fakeBroker) {
			delete(b.exchanges, "ferry-h1")
			delete(b.queues, "compute.h1")
		}, want: []error{ErrNoPrivateExchange, errdefs.ErrNotFound},
			mentions: []string{"private exchange ferry-h1", "ferryd cutover to-companion", "nothing could be forwarded to nova-compute"}},
		{name: "no policy", setup: func(b *fakeBroker) { delete(b.alternate, "ferry-h1") }, want: []error{ErrNoAlternate},
			mentions: []string{"what nova-compute sends to ferry-h1 would not reach nova"}},
		{name: "broker unreachable", setup: func(b *fakeBroker) { b.openErr = io.EOF }, want: []error{errdefs.ErrUnavailable}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newFakeBroker()
			b.exchanges["nova"], b.exchanges["ferry-h1"] = "topic", "topic"
			b.alternate["ferry-h1"] = "nova"
			b.put("compute.h1")
			if tc.setup != nil {
				tc.setup(b)
			}
			err := checkCompanion(context.Background(), b.admin(AdminOptions{Exchange: c.Exchange}), c)
			if tc.want == nil && err != nil {
				t.Errorf("checkCompanion = %v, want nil", err)
			}
			for _, w := range tc.want {
				if !errors.Is(err, w) {
					t.Errorf("checkCompanion = %v, want it to wrap %v", err, w)
				}
			}
			for _, m := range tc.mentions {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("checkCompanion = %q, want %q", err, m)
				}
			}
		})
	}
}

// CheckCompanion and DialAdmin against no broker: unavailable, each host
// named, no password.
func TestDialAdminUnreachable(t *testing.T) {
	u, err := ParseTransportURL("rabbit://nova:s3cret@" + closedAddr(t) + "/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DialAdmin(context.Background(), AdminOptions{URL: u}); !errors.Is(err, errdefs.ErrUnavailable) || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("DialAdmin = %v, want unavailable without the password", err)
	}
	err = CheckCompanion(context.Background(), CompanionCheck{URL: u})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.HasPrefix(err.Error(), "companion checks: ") {
		t.Errorf("CheckCompanion = %v, want unavailable", err)
	}
	if _, err := DialAdmin(context.Background(), AdminOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("DialAdmin without a URL = %v, want an invalid argument", err)
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestAdminClose(t *testing.T) {
	b := newFakeBroker()
	if err := b.admin(AdminOptions{}).Close(); err != nil || !b.closed {
		t.Errorf("Close = %v, closed %t", err, b.closed)
	}
}
