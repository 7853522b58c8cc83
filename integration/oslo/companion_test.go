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
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
)

// queueRow is one line of rabbitmqctl list_queues.
type queueRow struct {
	messages, consumers int
	exclusiveTag        string // "" when no consumer is exclusive
}

func listQueues(t *testing.T, vh string) map[string]queueRow {
	t.Helper()
	out, err := rabbit.Ctl(context.Background(), "-q", "list_queues", "-p", vh, "--no-table-headers",
		"name", "messages", "consumers", "exclusive_consumer_tag")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]queueRow{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		var r queueRow
		fmt.Sscan(f[1], &r.messages)
		fmt.Sscan(f[2], &r.consumers)
		if len(f) > 3 {
			r.exclusiveTag = f[3]
		}
		rows[f[0]] = r
	}
	return rows
}

func newVHost(t *testing.T, name string) string {
	t.Helper()
	vh := fmt.Sprintf("ferry-oslo-%s-%d", name, os.Getpid())
	drop, err := rabbit.NewVHost(context.Background(), broker, vh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	return vh
}

// The host's queue is consumed exclusively, so RabbitMQ itself keeps a
// stock nova-compute and a native-mode ferryd from splitting it. With
// nova-compute (a real oslo.messaging server) there first, ferry's Serve
// stops with ErrQueueInUse and RabbitMQ's own answer. With ferry there
// first, the oslo server's consume is refused (RabbitMQ 3.10 answers it
// with the same 403; oslo logs it and keeps retrying), and every call to
// the host is ferry's. The shared compute queue is not exclusive.
func TestHostQueueExclusive(t *testing.T) {
	vh := newVHost(t, "excl")
	py := startPy(t, "server", broker.URL(vh), "excl-a")
	if l := py.line(t); l != "READY" {
		t.Fatalf("python server said %q", l)
	}
	srv, err := oslo.NewServer(oslo.ServerOptions{URL: mustURL(t, vh), Server: "excl-a", Log: testLog(t)}, &oslo.Dispatcher{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, oslo.ErrQueueInUse) || !strings.Contains(err.Error(), "ACCESS_REFUSED - queue 'compute.excl-a' in vhost '"+vh+"' in exclusive use") ||
			!strings.Contains(err.Error(), "nova-compute") {
			t.Errorf("Serve beside a running oslo server = %v, want ErrQueueInUse with RabbitMQ's answer", err)
		}
		t.Logf("start-up error: %v", err)
	case <-time.After(30 * time.Second):
		_ = srv.Shutdown(context.Background())
		t.Fatal("Serve started beside a running oslo server on the same host")
	}

	g := startGoServer(t, vh, "excl-b", nil)
	py2 := startPy(t, "server", broker.URL(vh), "excl-b")
	if l := py2.line(t); l != "READY" {
		t.Fatalf("python server said %q", l)
	}
	client := startPy(t, "client", broker.URL(vh))
	for i := range 6 {
		a := client.do(t, call(g.host, "echo", "6.0", map[string]any{"i": i}))
		if a.Error != nil || !strings.Contains(string(a.Result), `"version"`) { // Go's echo says its version, Python's does not
			t.Errorf("call %d to the host = %s %+v, want Go's answer", i, a.Result, a.Error)
		}
	}
	rows := listQueues(t, vh)
	if r := rows["compute.excl-b"]; r.consumers != 1 || r.exclusiveTag == "" {
		t.Errorf("compute.excl-b = %+v, want one exclusive consumer (ferry's)", r)
	}
	if r := rows["compute"]; r.exclusiveTag != "" {
		t.Errorf("the shared compute queue has an exclusive consumer: %+v", r)
	}
}

// Companion mode against the real peers: ferry consumes its own queue
// ferry.compute.<host> (bound to nova/compute.<host>) and forwards what it
// does not own, unchanged, to the queue of an oslo.messaging server whose
// control exchange is its own (ferry-<host>), as nova-compute's is in that
// mode. The Python client gets its reply straight from the Python server.
// When the target queue does not exist the broker returns the copy and
// the original is requeued, not lost: it goes through once the queue is
// there.
func TestForwardToPythonServer(t *testing.T) {
	vh := newVHost(t, "fwd")
	const host = "fwd-h"
	nova := startPy(t, "server", broker.URL(vh), host, "ferry-"+host)
	if l := nova.line(t); l != "READY" {
		t.Fatalf("python server said %q", l)
	}
	startForwarder(t, vh, host)
	client := startPy(t, "client", broker.URL(vh))
	a := client.do(t, call(host, "echo", "6.0", map[string]any{"x": 1}))
	if a.Error != nil || !strings.Contains(string(a.Result), `"version"`) {
		t.Errorf("owned call = %s %+v, want ferry's echo", a.Result, a.Error)
	}
	// Forwarded: a call longer than its monitor timeout, kept alive by the
	// Python server's heartbeats, which reach the caller without ferry.
	c := call(host, "sleep", "6.0", map[string]any{"seconds": 3})
	c["monitor"] = 2
	if a := client.do(t, c); a.Error != nil || string(a.Result) != "3" {
		t.Errorf("forwarded call = %s %+v, want the Python server's answer", a.Result, a.Error)
	}
	if a := client.do(t, map[string]any{"op": "cast", "server": host, "method": "record", "version": "6.0",
		"args": map[string]any{"n": 1}}); a.Error != nil {
		t.Fatal(a.Error)
	}
	if l := nova.line(t); !strings.Contains(l, `"n": 1`) {
		t.Errorf("python server recorded %q", l)
	}

	// The target missing: the original waits in ferry's queue.
	const gone = "fwd-gone"
	startForwarder(t, vh, gone)
	if a := client.do(t, map[string]any{"op": "cast", "server": gone, "method": "record", "version": "6.0",
		"args": map[string]any{"n": 2}}); a.Error != nil {
		t.Fatal(a.Error)
	}
	time.Sleep(3 * time.Second) // a few returns and requeues
	if r := listQueues(t, vh)["ferry.compute."+gone]; r.messages != 1 {
		t.Errorf("ferry.compute.%s with the target missing = %+v, want the message kept", gone, r)
	}
	late := startPy(t, "server", broker.URL(vh), gone, "ferry-"+gone)
	if l := late.line(t); l != "READY" {
		t.Fatalf("python server said %q", l)
	}
	if l := late.line(t); !strings.Contains(l, `"n": 2`) {
		t.Errorf("python server recorded %q, want the cast that waited in ferry's queue", l)
	}
	// The original is acked once ferry has the broker's confirm, which may
	// come a moment after the Python server had the copy.
	for deadline := time.Now().Add(10 * time.Second); listQueues(t, vh)["ferry.compute."+gone].messages != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("ferry.compute.%s after the forward = %+v, want it empty", gone, listQueues(t, vh)["ferry.compute."+gone])
		}
	}
}

// startForwarder is a companion-mode Go server for host: it owns "echo"
// and forwards the rest to compute.<host>.
func startForwarder(t *testing.T, vh, host string) *goServer {
	return startGoServer(t, vh, host, func(o *oslo.ServerOptions) {
		o.Queue = "ferry.compute." + host
		o.Forward = &oslo.Forward{To: "compute." + host, Owned: []string{"echo"}}
	})
}

// heartbeat_timeout_threshold 60 s asks RabbitMQ for a 30 s heartbeat (so
// amqp091 notices a dead broker within 45 s, under the threshold).
func TestHeartbeatNegotiated(t *testing.T) {
	vh := newVHost(t, "hb")
	startGoServer(t, vh, "hb", func(o *oslo.ServerOptions) { o.Heartbeat = 60 * time.Second })
	c, err := oslo.NewClient(context.Background(), oslo.ClientOptions{URL: mustURL(t, vh), Heartbeat: 60 * time.Second, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-c.Ready()
	out, err := rabbit.Ctl(context.Background(), "-q", "list_connections", "--no-table-headers", "vhost", "timeout", "client_properties")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == vh {
			n++
			if f[1] != "30" {
				t.Errorf("connection heartbeat %s s, want 30: %s", f[1], l)
			}
		}
	}
	if n != 4 { // the server's consumer and publisher, the client's reply consumer and publisher
		t.Errorf("%d connections in %s, want 4:\n%s", n, vh, out)
	}
}

// A clean stop deletes the server's fanout queue, as oslo's does.
func TestFanoutDeletedOnStop(t *testing.T) {
	vh := newVHost(t, "fanout")
	srv, err := oslo.NewServer(oslo.ServerOptions{URL: mustURL(t, vh), Server: "fan", Log: testLog(t)}, &oslo.Dispatcher{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background()) }()
	<-srv.Ready()
	fanouts := func() (names []string) {
		for name := range listQueues(t, vh) {
			if strings.HasPrefix(name, "compute_fanout_") {
				names = append(names, name)
			}
		}
		return names
	}
	if f := fanouts(); len(f) != 1 {
		t.Fatalf("fanout queues while serving: %v", f)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, oslo.ErrServerClosed) {
		t.Errorf("Serve = %v", err)
	}
	if f := fanouts(); len(f) != 0 {
		t.Errorf("fanout queues after a clean stop: %v", f)
	}
}

// NewClient does not wait for an unreachable broker (ferryd's engine runs
// without one), and a call then fails within its own timeout.
func TestClientWithoutBroker(t *testing.T) {
	u, err := oslo.ParseTransportURL("rabbit://guest:guest@127.0.0.1:1/")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := oslo.NewClient(context.Background(), oslo.ClientOptions{URL: u, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("NewClient took %s without a broker", d)
	}
	_, err = c.Call(context.Background(), oslo.Target{Topic: "conductor", Version: "3.0"}, "object_action", nil,
		oslo.CallOptions{Timeout: 2 * time.Second})
	if !oslo.IsTimeout(err) || !errors.Is(err, errdefs.ErrUnavailable) || time.Since(start) > 4*time.Second {
		t.Errorf("call without a broker = %v after %s, want ErrUnavailable after 2 s", err, time.Since(start))
	}
}
