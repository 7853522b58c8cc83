package oslo_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/rpc/oslo"
	"opendev.org/x/ferry/rpc/oslo/oslotest"
)

// countReplies counts the publishes to a reply queue.
func countReplies(b *oslotest.Broker, queue string) *atomic.Int32 {
	var n atomic.Int32
	b.OnPublish(func(_ string, p oslo.Publishing) oslotest.Fault {
		if p.Key == queue {
			n.Add(1)
		}
		return oslotest.Deliver
	})
	return &n
}

var echo = map[string]func(context.Context, *oslo.Request) (any, error){
	"echo": func(context.Context, *oslo.Request) (any, error) { return "ok", nil },
}

// A reply to a missing queue (the caller may be reconnecting) is retried
// every 250 ms for ReplyRetry, then dropped, and the queue remembered as
// gone: the next reply to it is dropped at once. A queue that comes back
// within the window gets its reply.
func TestVanishedReplyQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		srv := startServer(t, b, handlers(echo), func(o *oslo.ServerOptions) { o.ReplyRetry = 2 * time.Second })
		srv.waitReady(t)
		tries := countReplies(b, "reply_gone")
		gone := &caller{b: b, replyQ: "reply_gone"}
		send(t, b, "compute.h1", envelope(t, gone.call("echo", "v1")))
		synctest.Wait()
		if n := tries.Load(); n != 1 {
			t.Errorf("at once: %d publishes, want the first attempt", n)
		}
		time.Sleep(3 * time.Second)
		if n := tries.Load(); n < 8 || n > 9 { // the first attempt, then one every 250 ms for 2 s
			t.Errorf("after the retry window: %d publishes, want 1 + 8", n)
		}
		if !srv.log.has(logrus.WarnLevel, "reply dropped") {
			t.Error("the dropped reply was not logged")
		}
		before := tries.Load()
		send(t, b, "compute.h1", envelope(t, gone.call("echo", "v2")))
		synctest.Wait()
		time.Sleep(time.Second)
		if n := tries.Load(); n != before {
			t.Errorf("a reply to a queue known gone was published %d times, want dropped at once", n-before)
		}

		// A caller whose queue comes back within the window.
		late := &caller{b: b, replyQ: "reply_late"}
		send(t, b, "compute.h1", envelope(t, late.call("echo", "v3")))
		time.Sleep(time.Second)
		declare(t, b, oslo.Declaration{Queue: "reply_late"})
		time.Sleep(time.Second)
		d, ok := b.Get(vh, "reply_late")
		if !ok || !strings.Contains(string(d.Body), `\"ok\"`) {
			t.Errorf("reply to a queue back within the window: %s, %v", d.Body, ok)
		}
	})
}

// Shutdown's deadline bounds reply retries: a server retrying a reply for a
// minute stops when Shutdown gives up, not a minute later.
func TestShutdownCancelsReplyRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		srv := startServer(t, b, handlers(echo), nil)
		srv.waitReady(t)
		gone := &caller{b: b, replyQ: "reply_gone"}
		send(t, b, "compute.h1", envelope(t, gone.call("echo", "s1")))
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		if err := srv.Shutdown(ctx); err != context.DeadlineExceeded {
			t.Errorf("Shutdown = %v, want its deadline", err)
		}
		if d := time.Since(start); d != 5*time.Second {
			t.Errorf("Shutdown took %s, want its 5 s bound (the retry window is 60 s)", d)
		}
	})
}

// After 70 calls whose reply queues vanished, a normal call is answered at
// once: a handler does not hold its slot while it retries a reply, and the
// consumer never waits for a free handler.
func TestVanishedRepliesDoNotBlockOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		srv := startServer(t, b, handlers(echo), func(o *oslo.ServerOptions) { o.MaxInFlight = 64 })
		srv.waitReady(t)
		for i := range 70 {
			gone := &caller{b: b, replyQ: "reply_gone_" + string(rune('a'+i%26)) + string(rune('a'+i/26))}
			send(t, b, "compute.h1", envelope(t, gone.call("echo", "g"+gone.replyQ)))
		}
		synctest.Wait()
		c := newCaller(t, b)
		start := time.Now()
		send(t, b, "compute.h1", envelope(t, c.call("echo", "live")))
		r := c.next(t, 5*time.Second)
		if d := time.Since(start); r.MsgID != "live" || d > 0 {
			t.Errorf("the live call was answered after %s (%+v), want at once", d, r)
		}
	})
}

// Operator casts (the Priority methods) have a lane of their own: one is
// served at once while every ordinary handler is busy and more requests
// wait.
func TestPriorityLane(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		release := make(chan struct{})
		aborted := make(chan time.Time, 1)
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"live_migration": func(context.Context, *oslo.Request) (any, error) { <-release; return nil, nil },
			"pre_live_migration": func(context.Context, *oslo.Request) (any, error) {
				<-release
				return nil, nil
			},
			"live_migration_abort": func(context.Context, *oslo.Request) (any, error) {
				aborted <- time.Now()
				return nil, nil
			},
		}), func(o *oslo.ServerOptions) {
			o.MaxInFlight = 4
			o.Priority = []string{"live_migration_abort", "live_migration_force_complete"}
		})
		releaseAll := sync.OnceFunc(func() { close(release) })
		t.Cleanup(releaseAll) // before the server's stop, which waits for the handlers
		srv.waitReady(t)
		c := newCaller(t, b)
		for i := range 4 { // every ordinary handler busy with a cast (unacked: they hold prefetch)
			send(t, b, "compute.h1", envelope(t, cast("live_migration", "lm"+string(rune('0'+i)), nil)))
		}
		for i := range 10 { // and calls waiting behind them
			send(t, b, "compute.h1", envelope(t, c.call("pre_live_migration", "p"+string(rune('0'+i)))))
		}
		synctest.Wait()
		start := time.Now()
		send(t, b, "compute.h1", envelope(t, cast("live_migration_abort", "abort", map[string]any{"migration_id": 1})))
		select {
		case at := <-aborted:
			if at != start {
				t.Errorf("abort served %s after it was sent, want at once", at.Sub(start))
			}
		case <-time.After(time.Minute):
			t.Fatal("the abort waited behind the busy handlers")
		}
		releaseAll()
		for range 10 {
			if r := c.next(t, time.Second); r.Failure != nil {
				t.Errorf("queued call: %+v", r)
			}
		}
	})
}
