package oslo_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/rpc/oslo"
	"opendev.org/x/ferry/rpc/oslo/oslotest"
)

// companion starts a companion-mode server on host h1: ferry's own queue
// ferry.compute.h1 bound to nova/compute.h1, live_migration owned, the
// rest forwarded to compute.h1, which a stand-in nova-compute declares
// bound only to its private exchange ferry-h1. It returns nova-compute's
// deliveries.
func companion(t *testing.T, b *oslotest.Broker, runs *atomic.Int32) (*server, <-chan oslo.Delivery) {
	t.Helper()
	_, in := listen(t, b, oslo.Declaration{Exchange: "ferry-h1", ExchangeKind: "topic", Queue: "compute.h1", Key: "compute.h1"},
		oslo.ConsumeOptions{Tag: "nova", AutoAck: true})
	srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
		"live_migration": func(context.Context, *oslo.Request) (any, error) { runs.Add(1); return nil, nil },
		"check_can_live_migrate_source": func(context.Context, *oslo.Request) (any, error) {
			return "ferry's answer", nil
		},
	}), func(o *oslo.ServerOptions) {
		o.Queue = "ferry.compute.h1"
		o.Forward = &oslo.Forward{To: "compute.h1", Owned: []string{"live_migration", "check_can_live_migrate_source"}}
	})
	srv.waitReady(t)
	return srv, in
}

// Companion mode serves what it owns and republishes everything else
// unchanged to nova-compute's queue: same body and properties (but the
// message_id ferry matches returns by, and the expiration, which is what
// remains), acked only after the broker confirmed the copy, in order.
func TestForwardUnchanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var runs atomic.Int32
		_, nova := companion(t, b, &runs)
		c := newCaller(t, b)
		unackedAtCopy := -1
		b.OnPublish(func(_ string, p oslo.Publishing) oslotest.Fault {
			if p.Key == "compute.h1" && p.Exchange == "" {
				unackedAtCopy = queueState(t, b, "ferry.compute.h1").Unacked
			}
			return oslotest.Deliver
		})
		orig := oslo.Publishing{Exchange: "nova", Key: "compute.h1", Body: envelope(t, c.call("build_and_run_instance", "b1")),
			Properties: oslo.Properties{ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: 2, Priority: 3,
				Headers: map[string]any{"x-trace": "t1"}, Expiration: "60000", CorrelationID: "corr", ReplyTo: "rt",
				Type: "ty", AppID: "app", UserID: "someone-else"}}
		if routed, err := b.Publish(vh, orig); err != nil || !routed {
			t.Fatalf("publish: %v %v", routed, err)
		}
		d := <-nova
		if unackedAtCopy != 1 {
			t.Errorf("the original was settled (unacked=%d) before the copy was confirmed", unackedAtCopy)
		}
		synctest.Wait()
		if st := queueState(t, b, "ferry.compute.h1"); st.Unacked != 0 || st.Ready != 0 {
			t.Errorf("ferry's queue after the forward: %+v, want the original acked", st)
		}
		if string(d.Body) != string(orig.Body) {
			t.Errorf("forwarded body changed:\n%s\nwant\n%s", d.Body, orig.Body)
		}
		want := orig.Properties
		want.UserID = "" // RabbitMQ refuses a user_id other than the publisher's
		if diff := cmp.Diff(want, d.Properties, cmpopts.IgnoreFields(oslo.Properties{}, "MessageID")); diff != "" {
			t.Errorf("forwarded properties (-want +got):\n%s", diff)
		}
		if d.MessageID == "" || d.Exchange != "" || d.RoutingKey != "compute.h1" {
			t.Errorf("copy went %q/%q with message_id %q, want the default exchange and ferry's id", d.Exchange, d.RoutingKey, d.MessageID)
		}

		// Owned methods are served here, the rest keep their order.
		send(t, b, "compute.h1", envelope(t, cast("live_migration", "lm", nil)))
		send(t, b, "compute.h1", envelope(t, c.call("check_can_live_migrate_source", "ccs")))
		for i := range 5 {
			send(t, b, "compute.h1", envelope(t, cast("reboot_instance", string(rune('a'+i)), nil)))
		}
		if r := c.next(t, time.Second); string(r.Result) != `"ferry's answer"` {
			t.Errorf("owned call = %+v", r)
		}
		for i := range 5 {
			d := <-nova
			if want := `u-` + string(rune('a'+i)); !strings.Contains(string(d.Body), want) {
				t.Errorf("forward %d: %s, want %s next", i, d.Body, want)
			}
		}
		synctest.Wait()
		if runs.Load() != 1 {
			t.Errorf("owned cast served %d times", runs.Load())
		}
		if qs := b.Queues(vh); len(qs) != 3 { // ferry.compute.h1, compute.h1, the caller's reply queue
			t.Errorf("queues %v: companion mode must leave the topic and fanout queues to nova-compute", qs)
		}
	})
}

// A copy the broker returns (nova-compute's queue is missing) is not
// delivery: the original is requeued after a pause, not lost, and goes
// through once the queue is back. A copy whose time ran out while ferry
// held it is dropped, as the broker would; the others carry what is left.
func TestForwardReturnedAndExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var runs atomic.Int32
		srv, nova := companion(t, b, &runs)
		b.DeleteQueue(vh, "compute.h1")
		<-nova // closed with its session
		send(t, b, "compute.h1", envelope(t, cast("reboot_instance", "r1", nil)))
		time.Sleep(10 * time.Second)
		st := queueState(t, b, "ferry.compute.h1")
		if st.Ready+st.Unacked != 1 {
			t.Fatalf("ferry's queue with the target missing: %+v, want the original kept", st)
		}
		if !srv.log.has(logrus.WarnLevel, "forward target missing") {
			t.Error("the return was not logged")
		}
		_, in := listen(t, b, oslo.Declaration{Queue: "compute.h1"}, oslo.ConsumeOptions{Tag: "nova", AutoAck: true})
		d := <-in
		if !strings.Contains(string(d.Body), "u-r1") {
			t.Errorf("after the queue came back: %s", d.Body)
		}
		synctest.Wait()
		if st := queueState(t, b, "ferry.compute.h1"); st.Ready+st.Unacked != 0 {
			t.Errorf("ferry's queue %+v, want the original acked once forwarded", st)
		}

		// Expirations: the first forward loses its confirm, so the next two
		// wait 1 s (the publisher's reconnect) in ferry's hands.
		first := true
		b.OnPublish(func(_ string, p oslo.Publishing) oslotest.Fault {
			if p.Exchange == "" && p.Key == "compute.h1" && first {
				first = false
				return oslotest.KillAfterRoute
			}
			return oslotest.Deliver
		})
		for _, exp := range []string{"", "1500", "800"} {
			_, err := b.Publish(vh, oslo.Publishing{Exchange: "nova", Key: "compute.h1", Body: envelope(t, cast("stop_instance", "e"+exp, nil)),
				Properties: oslo.Properties{ContentType: "application/json", Expiration: exp}})
			if err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		for len(got) < 3 {
			select {
			case d := <-in:
				got = append(got, d.Expiration)
			case <-time.After(10 * time.Second):
				got = append(got, "none")
			}
		}
		// The first twice (lost confirm, sent again), the 1500 ms one with 500 ms left, the 800 ms one dropped.
		if diff := cmp.Diff([]string{"", "", "500"}, got); diff != "" {
			t.Errorf("expirations of the copies (-want +got):\n%s", diff)
		}
		synctest.Wait()
		if st := queueState(t, b, "ferry.compute.h1"); st.Ready+st.Unacked != 0 {
			t.Errorf("ferry's queue %+v, want all settled", st)
		}
	})
}

// A tapped cast is shown to the handler (in the forwarder's order, before
// the copy goes out) and forwarded unchanged all the same, also when the
// handler fails: external_instance_event is nova-compute's to see too.
func TestForwardTapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		_, nova := listen(t, b, oslo.Declaration{Exchange: "ferry-h1", ExchangeKind: "topic", Queue: "compute.h1", Key: "compute.h1"},
			oslo.ConsumeOptions{Tag: "nova", AutoAck: true})
		var seen []string
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"external_instance_event": func(_ context.Context, r *oslo.Request) (any, error) {
				seen = append(seen, r.UniqueID)
				if len(seen) == 2 {
					return nil, context.Canceled
				}
				return nil, nil
			},
		}), func(o *oslo.ServerOptions) {
			o.Queue = "ferry.compute.h1"
			o.Forward = &oslo.Forward{To: "compute.h1", Tapped: []string{"external_instance_event"}}
		})
		srv.waitReady(t)
		for _, id := range []string{"e1", "e2"} {
			send(t, b, "compute.h1", envelope(t, cast("external_instance_event", id, nil)))
		}
		send(t, b, "compute.h1", envelope(t, cast("reboot_instance", "r1", nil)))
		var got []string
		for range 3 {
			d := <-nova
			var env struct {
				Msg string `json:"oslo.message"`
			}
			if err := json.Unmarshal(d.Body, &env); err != nil || !strings.Contains(env.Msg, `"method"`) {
				t.Fatalf("forwarded %s: %v", d.Body, err)
			}
			got = append(got, env.Msg)
		}
		synctest.Wait()
		if len(seen) != 2 {
			t.Errorf("the handler saw %v, want both events (and not the reboot)", seen)
		}
		if !strings.Contains(got[0], "external_instance_event") || !strings.Contains(got[2], "reboot_instance") {
			t.Errorf("forwarded out of order: %v", got)
		}
	})
}

// A message forwarded already is not forwarded again: during the
// cut-over's bind-then-unbind window one cast can sit in both ferry's queue
// and nova-compute's, and the backlog move brings the second copy to
// ferry's queue. The copy is acked and dropped; messages without a
// _unique_id, or that do not decode, are forwarded every time.
func TestForwardDropsDuplicates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var runs atomic.Int32
		srv, nova := companion(t, b, &runs)
		dup := envelope(t, cast("reboot_instance", "d1", nil))
		noID := envelope(t, msg{"method": "reboot_instance", "args": map[string]any{}, "version": "6.0"})
		for _, body := range [][]byte{dup, dup, noID, noID, []byte("not json"), envelope(t, cast("stop_instance", "s1", nil))} {
			send(t, b, "compute.h1", body)
		}
		var got []string
		for range 5 {
			d := <-nova
			got = append(got, string(d.Body))
		}
		want := []string{string(dup), string(noID), string(noID), "not json"}
		if diff := cmp.Diff(want, got[:4]); diff != "" {
			t.Errorf("forwarded (-want +got):\n%s", diff)
		}
		if !strings.Contains(got[4], "u-s1") {
			t.Errorf("last forward %s, want the stop_instance cast", got[4])
		}
		synctest.Wait()
		select {
		case d := <-nova:
			t.Errorf("forwarded one more: %s", d.Body)
		default:
		}
		if st := queueState(t, b, "ferry.compute.h1"); st.Ready+st.Unacked != 0 {
			t.Errorf("ferry's queue %+v, want every message settled (the duplicate acked)", st)
		}
		if !srv.log.has(logrus.WarnLevel, "duplicate message") {
			t.Error("the dropped duplicate was not logged")
		}
	})
}
