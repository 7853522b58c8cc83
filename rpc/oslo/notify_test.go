package oslo_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
	"opendev.org/x/ferry/rpc/oslo/oslotest"
)

func note(event string) oslo.Notification {
	return oslo.Notification{MessageID: "0b1e7c1a-6f0e-4c33-9a55-6c8e3f1d2a10", PublisherID: "compute.h1", EventType: event,
		Priority: "INFO", Payload: json.RawMessage(`{"instance_id": "i1"}`),
		Timestamp: time.Date(2026, 12, 3, 7, 0, 0, 123456789, time.UTC),
		Context:   map[string]json.RawMessage{"request_id": json.RawMessage(`"req-1"`)}, UniqueID: "u1"}
}

func newNotifier(t *testing.T, b *oslotest.Broker, q oslo.QueueOptions) *oslo.Notifier {
	t.Helper()
	log, _ := newLog()
	n, err := oslo.NewNotifier(oslo.NotifierOptions{Transport: b.Transport("/"), Queues: q, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// Both drivers: the queue <topic>.<priority> is declared with the
// exchange's flags and the message lands there, enveloped (messagingv2) or
// bare (messaging), with oslo's keys, _unique_id and the _context_* keys.
func TestNotifyFormats(t *testing.T) {
	for _, tc := range []struct {
		name     string
		envelope bool
	}{{"messagingv2", true}, {"messaging", false}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := oslotest.New()
				n := newNotifier(t, b, oslo.QueueOptions{Durable: true})
				if err := n.Notify(t.Context(), "notifications", tc.envelope, note("compute.instance.live_migration._post.start")); err != nil {
					t.Fatal(err)
				}
				st, ok := b.Queue("/", "notifications.info")
				if !ok || st.Ready != 1 || !st.Durable {
					t.Fatalf("notifications.info: %+v (exists %v), want one message in a durable queue", st, ok)
				}
				d, _ := b.Get("/", "notifications.info")
				if d.ContentType != "application/json" || d.DeliveryMode != 2 || d.RoutingKey != "notifications.info" || d.Exchange != "nova" {
					t.Errorf("delivery %+v: want JSON, persistent, nova/notifications.info", d.Properties)
				}
				var outer map[string]any
				if err := json.Unmarshal(d.Body, &outer); err != nil {
					t.Fatal(err)
				}
				inner := outer
				if tc.envelope {
					if outer["oslo.version"] != "2.0" {
						t.Fatalf("envelope %v", outer)
					}
					inner = nil
					if err := json.Unmarshal([]byte(outer["oslo.message"].(string)), &inner); err != nil {
						t.Fatal(err)
					}
				}
				want := map[string]any{"message_id": "0b1e7c1a-6f0e-4c33-9a55-6c8e3f1d2a10", "publisher_id": "compute.h1",
					"event_type": "compute.instance.live_migration._post.start", "priority": "INFO",
					"payload": map[string]any{"instance_id": "i1"}, "timestamp": "2026-12-03 07:00:00.123456",
					"_unique_id": "u1", "_context_request_id": "req-1"}
				if diff := cmp.Diff(want, inner); diff != "" {
					t.Errorf("message (-want +got):\n%s", diff)
				}
			})
		})
	}
}

// Python's str(datetime) drops a zero fraction.
func TestPythonTime(t *testing.T) {
	for in, want := range map[time.Time]string{
		time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC):                   "2026-01-02 03:04:05",
		time.Date(2026, 1, 2, 3, 4, 5, 999, time.UTC):                 "2026-01-02 03:04:05",
		time.Date(2026, 1, 2, 3, 4, 5, 1000, time.UTC):                "2026-01-02 03:04:05.000001",
		time.Date(2026, 1, 2, 4, 4, 5, 5e8, time.FixedZone("", 3600)): "2026-01-02 03:04:05.500000",
	} {
		if got := oslo.PythonTime(in); got != want {
			t.Errorf("PythonTime(%v) = %q, want %q", in, got, want)
		}
	}
}

// A notification sent while the broker is down waits for it and goes once
// it is back; a session that dies before the confirm gets the same bytes
// again on the next one.
func TestNotifyThroughOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		n := newNotifier(t, b, oslo.QueueOptions{})
		b.Down()
		done := make(chan error, 1)
		go func() { done <- n.Notify(t.Context(), "notifications", true, note("e1")) }()
		time.Sleep(10 * time.Second)
		select {
		case err := <-done:
			t.Fatalf("Notify returned %v while the broker was down", err)
		default:
		}
		b.Up()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		killed := false
		b.OnPublish(func(string, oslo.Publishing) oslotest.Fault {
			if !killed {
				killed = true
				return oslotest.KillAfterRoute
			}
			return oslotest.Deliver
		})
		if err := n.Notify(t.Context(), "notifications", true, note("e2")); err != nil {
			t.Fatal(err)
		}
		st, _ := b.Queue("/", "notifications.info")
		if st.Ready != 3 { // e1, e2 and e2's copy (same _unique_id: an oslo listener drops it)
			t.Errorf("notifications.info holds %d, want 3", st.Ready)
		}
	})
}

// Without the broker, Notify fails within its context as unavailable; a
// queue declared with other flags is a topology mismatch, not an outage.
func TestNotifyFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		b.Down()
		n := newNotifier(t, b, oslo.QueueOptions{})
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if err := n.Notify(ctx, "notifications", true, note("e1")); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("Notify with the broker down: %v, want ErrUnavailable", err)
		}
		b.Up()
		durable := newNotifier(t, b, oslo.QueueOptions{Durable: true})
		if err := n.Notify(t.Context(), "notifications", true, note("e1")); err != nil {
			t.Fatal(err)
		}
		err := durable.Notify(t.Context(), "notifications", true, note("e2"))
		if !errors.Is(err, oslo.ErrTopologyMismatch) || errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("Notify against other flags: %v, want ErrTopologyMismatch", err)
		}
	})
}
