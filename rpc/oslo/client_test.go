package oslo_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
	"opendev.org/x/ferry/rpc/oslo/oslotest"
)

func newClient(t *testing.T, b *oslotest.Broker) *oslo.Client {
	t.Helper()
	log, _ := newLog()
	c, err := oslo.NewClient(context.Background(), oslo.ClientOptions{Transport: b.Transport(vh), Timeout: 10 * time.Second, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testServer serves the methods the client tests call.
func testServer(t *testing.T, b *oslotest.Broker, runs *atomic.Int32, casts chan<- json.RawMessage) *server {
	srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
		"echo": func(_ context.Context, r *oslo.Request) (any, error) {
			runs.Add(1)
			return map[string]any{"args": r.Args, "user": r.Context["user"], "namespace": r.Namespace}, nil
		},
		"fail": func(context.Context, *oslo.Request) (any, error) {
			return nil, &oslo.Failure{Class: "MigrationPreCheckError", Module: "nova.exception", Message: "no"}
		},
		"slow": func(context.Context, *oslo.Request) (any, error) { time.Sleep(5 * time.Second); return "done", nil },
		"record": func(_ context.Context, r *oslo.Request) (any, error) {
			casts <- r.Args["n"]
			return nil, nil
		},
	}), nil)
	srv.waitReady(t)
	return srv
}

var h1 = oslo.Target{Topic: "compute", Server: "h1", Version: "6.0"}

// The Go client against the Go server: results, remote failures, casts
// and fanouts, the request context, heartbeats that keep a call alive past
// its monitor timeout, and the timeouts.
func TestClientCallsAndCasts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var runs atomic.Int32
		casts := make(chan json.RawMessage, 4)
		testServer(t, b, &runs, casts)
		c := newClient(t, b)
		ctx := context.Background()
		rctx := json.RawMessage(`{"user":"u-9","request_id":"req-9"}`)
		res, err := c.Call(ctx, h1, "echo", map[string]any{"a": 1}, oslo.CallOptions{Context: rctx})
		if err != nil || string(res) != `{"args":{"a":1},"namespace":"","user":"u-9"}` {
			t.Errorf("echo = %s, %v", res, err)
		}
		_, err = c.Call(ctx, h1, "fail", nil, oslo.CallOptions{})
		if f, ok := errors.AsType[*oslo.Failure](err); !ok || f.Class != "MigrationPreCheckError" || f.Module != "nova.exception" {
			t.Errorf("fail = %v, want the remote MigrationPreCheckError", err)
		}
		if err := c.Cast(ctx, h1, "record", map[string]any{"n": 1}, oslo.CallOptions{Context: rctx}); err != nil {
			t.Fatal(err)
		}
		if err := c.Cast(ctx, oslo.Target{Topic: "compute", Fanout: true, Version: "6.0"}, "record", map[string]any{"n": 2}, oslo.CallOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := string(<-casts) + string(<-casts); got != "12" && got != "21" { // handlers run side by side
			t.Errorf("casts n = %s, want 1 and 2", got)
		}
		// The server's heartbeats (every 1 s for a 2 s monitor) keep a 5 s call alive.
		res, err = c.Call(ctx, h1, "slow", nil, oslo.CallOptions{MonitorTimeout: 2 * time.Second})
		if err != nil || string(res) != `"done"` {
			t.Errorf("slow with heartbeats = %s, %v", res, err)
		}
		start := time.Now()
		_, err = c.Call(ctx, h1, "slow", nil, oslo.CallOptions{Timeout: 3 * time.Second})
		if !oslo.IsTimeout(err) || time.Since(start) != 3*time.Second {
			t.Errorf("slow past its timeout = %v after %s, want a timeout after 3 s", err, time.Since(start))
		}
		_, err = c.Call(ctx, oslo.Target{Topic: "compute", Server: "nobody", Version: "6.0"}, "echo", nil, oslo.CallOptions{})
		if !oslo.IsTimeout(err) || !errors.Is(err, errdefs.ErrTimeout) {
			t.Errorf("call to nobody = %v, want a timeout", err)
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := c.Call(cctx, h1, "slow", nil, oslo.CallOptions{}); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("call past its ctx = %v", err)
		}
		if _, err := c.Call(ctx, oslo.Target{Topic: "compute", Fanout: true}, "echo", nil, oslo.CallOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("fanout call = %v, want ErrInvalidArgument", err)
		}
		if err := c.Cast(ctx, h1, "echo", nil, oslo.CallOptions{Context: json.RawMessage(`[1]`)}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("cast with a non-object context = %v, want ErrInvalidArgument", err)
		}
		synctest.Wait() // the slow calls' late replies arrive with nobody waiting
	})
}

// NewClient does not wait for the broker: with it down, the client is
// built at once, a call fails within its own timeout with ErrUnavailable,
// and once the broker is up calls go through.
func TestClientBrokerDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var runs atomic.Int32
		testServer(t, b, &runs, nil)
		b.Down()
		start := time.Now()
		c := newClient(t, b)
		if time.Since(start) != 0 {
			t.Errorf("NewClient took %s with the broker down", time.Since(start))
		}
		_, err := c.Call(context.Background(), h1, "echo", nil, oslo.CallOptions{Timeout: 5 * time.Second})
		if !errors.Is(err, errdefs.ErrUnavailable) || !oslo.IsTimeout(err) || time.Since(start) != 5*time.Second {
			t.Errorf("call with the broker down = %v after %s, want ErrUnavailable after 5 s", err, time.Since(start))
		}
		if err := c.Cast(context.Background(), h1, "record", nil, oslo.CallOptions{Timeout: time.Second}); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("cast with the broker down = %v, want ErrUnavailable", err)
		}
		select {
		case <-c.Ready():
			t.Error("client ready with the broker down")
		default:
		}
		b.Up()
		if _, err := c.Call(context.Background(), h1, "echo", nil, oslo.CallOptions{Timeout: time.Minute}); err != nil {
			t.Errorf("call once the broker is up: %v", err)
		}
	})
}

// A call whose session died after the broker routed it but before the
// confirm is sent again, the same bytes, on the next session: the server
// drops the copy by its _unique_id and the caller gets one reply.
func TestClientResendsUnconfirmedCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var runs atomic.Int32
		testServer(t, b, &runs, nil)
		c := newClient(t, b)
		var bodies [][]byte
		b.OnPublish(func(_ string, p oslo.Publishing) oslotest.Fault {
			if p.Key != "compute.h1" {
				return oslotest.Deliver
			}
			bodies = append(bodies, p.Body)
			if len(bodies) == 1 {
				return oslotest.KillAfterRoute
			}
			return oslotest.Deliver
		})
		res, err := c.Call(context.Background(), h1, "echo", nil, oslo.CallOptions{})
		if err != nil || len(res) == 0 {
			t.Fatalf("call = %s, %v", res, err)
		}
		synctest.Wait()
		if len(bodies) != 2 || string(bodies[0]) != string(bodies[1]) || runs.Load() != 1 {
			t.Errorf("published %d times (same bytes: %v), served %d times; want the same message twice, served once",
				len(bodies), len(bodies) == 2 && string(bodies[0]) == string(bodies[1]), runs.Load())
		}
	})
}

// A reply sent while the client's reply consumer was reconnecting waits in
// the reply queue (it outlives the connection) and reaches the caller.
func TestClientReplyAcrossReconnect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var runs atomic.Int32
		testServer(t, b, &runs, nil)
		c := newClient(t, b)
		done := make(chan error, 1)
		go func() {
			_, err := c.Call(context.Background(), h1, "slow", nil, oslo.CallOptions{Timeout: time.Minute})
			done <- err
		}()
		time.Sleep(time.Second)
		b.KillConnections() // the server's too: the call was acked, its handler runs on
		if err := <-done; err != nil {
			t.Errorf("call across a reconnect: %v", err)
		}
	})
}

// OnResumed tells the client's owner each time the broker is back after an
// outage, not at the first connection.
func TestClientOnResumed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		var resumed atomic.Int32
		log, _ := newLog()
		c, err := oslo.NewClient(context.Background(), oslo.ClientOptions{Transport: b.Transport(vh), Log: log,
			OnResumed: func() { resumed.Add(1) }})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		<-c.Ready()
		synctest.Wait()
		if n := resumed.Load(); n != 0 {
			t.Errorf("resumed %d times at the first connection", n)
		}
		b.Down()
		b.KillConnections()
		time.Sleep(10 * time.Second)
		b.Up()
		time.Sleep(40 * time.Second)
		if n := resumed.Load(); n != 1 {
			t.Errorf("resumed %d times after one outage, want 1", n)
		}
	})
}
