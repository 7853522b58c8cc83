//go:build integration

package oslo_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/rabbit"
	"opendev.org/x/ferry/rpc/oslo"
)

// A server whose queue settings differ from the broker's fails at start
// with an error naming the settings, instead of retrying forever.
func TestTopologyMismatch(t *testing.T) {
	startGoServer(t, vhost, "go-plain", nil) // declares a non-durable "nova" exchange
	srv, err := oslo.NewServer(oslo.ServerOptions{URL: mustURL(t, vhost), Server: "go-durable-mismatch",
		Queues: oslo.QueueOptions{Durable: true}, Log: testLog(t)}, &oslo.Dispatcher{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, oslo.ErrTopologyMismatch) || !strings.Contains(err.Error(), "amqp_durable_queues") {
			t.Errorf("Serve = %v, want ErrTopologyMismatch naming amqp_durable_queues", err)
		}
		t.Logf("start-up error: %v", err)
	case <-time.After(30 * time.Second):
		_ = srv.Shutdown(context.Background())
		t.Fatal("Serve kept retrying a configuration error")
	}
}

// The broker restarts under a consuming server: it comes back by itself
// and the next Python call succeeds. With durable queues, a cast that
// waited in the host's queue while no server consumed it survives the
// restart and is handled by the next server.
func TestBrokerRestart(t *testing.T) {
	ctx := context.Background()
	durableVH := fmt.Sprintf("ferry-oslo-durable-%d", os.Getpid())
	drop, err := rabbit.NewVHost(ctx, broker, durableVH)
	if err != nil {
		t.Fatal(err)
	}
	defer drop()
	durableOpts := func(o *oslo.ServerOptions) { o.Queues.Durable = true }
	plain := startGoServer(t, vhost, "go-restart", nil)
	first := startGoServer(t, durableVH, "go-restart-d", durableOpts)
	durableURL := broker.URL(durableVH) + "?amqp_durable_queues=true"
	py := startPy(t, "client", durableURL)
	if a := py.do(t, call(first.host, "echo", "6.0", nil)); a.Error != nil {
		t.Fatalf("before the restart: %+v", a.Error)
	}
	first.stop(t)
	raw := py.rawCmd(durableVH)
	raw["routing_key"] = "compute." + first.host
	raw["content_type"] = "application/json"
	raw["body"] = `{"method":"record","args":{"n":1},"version":"6.0","_unique_id":"restart-cast-1"}`
	py.do(t, raw)
	if r := listQueues(t, durableVH)["compute."+first.host]; r.messages != 1 || r.consumers != 0 {
		t.Fatalf("host queue before the restart = %+v, want the cast waiting, no consumer", r)
	}

	t.Log("rabbitmqctl stop_app")
	if err := rabbit.StopApp(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // down for a while, as in a real restart
	if err := rabbit.StartApp(ctx); err != nil {
		t.Fatal(err)
	}
	t.Log("started again")
	second := startGoServer(t, durableVH, first.host, durableOpts)
	if c := second.waitCast(t, 30*time.Second); string(c["n"]) != "1" {
		t.Errorf("cast after the restart: %v", c)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		p := startPy(t, "client", broker.URL(vhost))
		a := p.do(t, call(plain.host, "echo", "6.0", map[string]any{"after": "restart"}))
		if a.Error == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no successful call within 60s of the restart: %+v", a.Error)
		}
		time.Sleep(time.Second)
	}
}

// Quorum queues, as a deployment with rabbit_quorum_queue declares them: the
// Go server declares compute and compute.<host> as quorum queues and a Python
// client configured the same way calls it.
func TestQuorumQueues(t *testing.T) {
	ctx := context.Background()
	vh := fmt.Sprintf("ferry-oslo-quorum-%d", os.Getpid())
	drop, err := rabbit.NewVHost(ctx, broker, vh)
	if err != nil {
		t.Fatal(err)
	}
	defer drop()
	g := startGoServer(t, vh, "go-quorum", func(o *oslo.ServerOptions) { o.Queues.Quorum = true })
	py := startPy(t, "client", broker.URL(vh)+"?rabbit_quorum_queue=true")
	if a := py.do(t, call(g.host, "echo", "6.0", map[string]any{"q": 1})); a.Error != nil {
		t.Fatalf("call: %+v", a.Error)
	}
	out, err := rabbit.Ctl(ctx, "-q", "list_queues", "-p", vh, "name", "type", "durable")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"compute", "compute." + g.host} {
		found := false
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == q {
				found = f[1] == "quorum" && f[2] == "true"
			}
		}
		if !found {
			t.Errorf("queue %s is not a durable quorum queue:\n%s", q, out)
		}
	}
}
