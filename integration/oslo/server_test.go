//go:build integration

package oslo_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"opendev.org/x/ferry/rpc/oslo"
)

// goServer is a Go oslo server on topic "compute" with a test endpoint.
type goServer struct {
	srv      *oslo.Server
	host     string
	casts    chan map[string]json.RawMessage
	sleeping atomic.Int32
	started  chan struct{} // a sleep call has begun
	served   chan error
	stopOnce sync.Once
}

func startGoServer(t *testing.T, vh, host string, mutate func(*oslo.ServerOptions)) *goServer {
	t.Helper()
	g := &goServer{host: host, casts: make(chan map[string]json.RawMessage, 16), started: make(chan struct{}, 16),
		served: make(chan error, 1)}
	h := func(f func(ctx context.Context, r *oslo.Request) (any, error)) oslo.Handler {
		return oslo.HandlerFunc(f)
	}
	methods := map[string]oslo.Handler{
		"echo": h(func(_ context.Context, r *oslo.Request) (any, error) {
			var user string
			_ = json.Unmarshal(r.Context["user"], &user)
			return map[string]any{"args": r.Args, "context_user": user, "version": r.Version}, nil
		}),
		"sleep": h(func(ctx context.Context, r *oslo.Request) (any, error) {
			var secs float64
			if _, err := r.Arg("seconds", &secs); err != nil {
				return nil, err
			}
			g.sleeping.Add(1)
			defer g.sleeping.Add(-1)
			g.started <- struct{}{}
			select {
			case <-time.After(time.Duration(secs * float64(time.Second))):
			case <-ctx.Done():
			}
			return secs, nil
		}),
		"fail": h(func(_ context.Context, r *oslo.Request) (any, error) {
			var kind string
			_, _ = r.Arg("kind", &kind)
			if kind == "precheck" {
				return nil, &oslo.Failure{Class: "MigrationPreCheckError", Module: "nova.exception",
					Message: "Migration pre-check error: 2/2 inbound", Kwargs: map[string]any{"reason": "2/2 inbound"}}
			}
			return nil, errors.New("plain go error")
		}),
		"record": h(func(_ context.Context, r *oslo.Request) (any, error) {
			if err := r.Ack(); err != nil {
				return nil, err
			}
			g.casts <- r.Args
			return nil, nil
		}),
	}
	v5 := map[string]oslo.Handler{"echo": methods["echo"]}
	o := oslo.ServerOptions{URL: mustURL(t, vh), Server: host, Log: testLog(t)}
	if mutate != nil {
		mutate(&o)
	}
	srv, err := oslo.NewServer(o, &oslo.Dispatcher{Endpoints: []oslo.Endpoint{
		{Version: "6.4", Methods: methods},
		{Namespace: "baseapi", Version: "1.1", Methods: map[string]oslo.Handler{"ping": h(func(_ context.Context, r *oslo.Request) (any, error) {
			return map[string]any{"service": "compute", "arg": r.Args["arg"]}, nil
		})}},
		{Version: "5.13", Methods: v5},
	}})
	if err != nil {
		t.Fatal(err)
	}
	g.srv = srv
	go func() { g.served <- srv.Serve(context.Background()) }()
	t.Cleanup(func() { g.stop(t) })
	select {
	case <-srv.Ready():
	case err := <-g.served:
		t.Fatalf("Serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not consuming after 30s")
	}
	return g
}

// stop shuts the server down, once, and checks that Serve said so.
func (g *goServer) stop(t *testing.T) {
	g.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := g.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-g.served; !errors.Is(err, oslo.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
}

func (g *goServer) waitCast(t *testing.T, within time.Duration) map[string]json.RawMessage {
	t.Helper()
	select {
	case c := <-g.casts:
		return c
	case <-time.After(within):
		t.Fatalf("no cast handled within %s", within)
		return nil
	}
}

func (g *goServer) noCast(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case c := <-g.casts:
		t.Fatalf("unexpected cast %v", c)
	case <-time.After(within):
	}
}

func call(server, method, version string, args map[string]any) map[string]any {
	return map[string]any{"op": "call", "server": server, "method": method, "version": version, "args": args,
		"timeout": 20, "context": map[string]any{"user": "u-1", "request_id": "req-1"}}
}

func TestPythonClientCallsGoServer(t *testing.T) {
	g := startGoServer(t, vhost, "go-call", nil)
	py := startPy(t, "client", broker.URL(vhost))

	a := py.do(t, call(g.host, "echo", "6.0", map[string]any{"x": 1, "s": "é"}))
	if a.Error != nil {
		t.Fatalf("echo: %+v", a.Error)
	}
	var got struct {
		Args        map[string]any `json:"args"`
		ContextUser string         `json:"context_user"`
		Version     string         `json:"version"`
	}
	if err := json.Unmarshal(a.Result, &got); err != nil {
		t.Fatal(err)
	}
	if got.Args["x"] != float64(1) || got.Args["s"] != "é" || got.ContextUser != "u-1" || got.Version != "6.0" {
		t.Errorf("echo = %s", a.Result)
	}
	for _, v := range []string{"6.4", "5.0", "5.13"} {
		if a := py.do(t, call(g.host, "echo", v, nil)); a.Error != nil {
			t.Errorf("echo at %s: %+v", v, a.Error)
		}
	}
	ping := map[string]any{"op": "call", "server": g.host, "namespace": "baseapi", "version": "1.0", "method": "ping",
		"args": map[string]any{"arg": "hi"}}
	if a := py.do(t, ping); a.Error != nil || !strings.Contains(string(a.Result), `"service": "compute"`) && !strings.Contains(string(a.Result), `"service":"compute"`) {
		t.Errorf("baseapi ping = %s %+v", a.Result, a.Error)
	}
	refusals := []struct {
		method, version, excType string
	}{
		{"no_such_method_xyz", "6.0", "NoSuchMethod"},
		{"_private", "6.0", "NoSuchMethod"},
		{"echo", "7.0", "UnsupportedVersion"},
		{"echo", "6.5", "UnsupportedVersion"},
		{"sleep", "5.0", "NoSuchMethod"}, // the 5.x endpoint has no sleep
	}
	for _, r := range refusals {
		a := py.do(t, call(g.host, r.method, r.version, nil))
		if a.Error == nil || a.Error.Class != "RemoteError" || a.Error.ExcType != r.excType {
			t.Errorf("%s at %s: %s %+v, want RemoteError(%s)", r.method, r.version, a.Result, a.Error, r.excType)
		}
	}
	// Failures come back as the class the Python caller can catch.
	a = py.do(t, call(g.host, "fail", "6.0", map[string]any{"kind": "precheck"}))
	if a.Error == nil || !slices.Contains(a.Error.MRO, "nova.exception.MigrationPreCheckError") ||
		!strings.Contains(a.Error.Message, "2/2 inbound") {
		t.Errorf("precheck failure = %+v, want a nova.exception.MigrationPreCheckError", a.Error)
	}
	a = py.do(t, call(g.host, "fail", "6.0", map[string]any{"kind": "go"}))
	if a.Error == nil || !slices.Contains(a.Error.MRO, "builtins.RuntimeError") {
		t.Errorf("go error = %+v, want a RuntimeError", a.Error)
	}
}

func TestPythonCastAndFanout(t *testing.T) {
	g := startGoServer(t, vhost, "go-cast", nil)
	py := startPy(t, "client", broker.URL(vhost))
	if a := py.do(t, map[string]any{"op": "cast", "server": g.host, "method": "record", "version": "6.0",
		"args": map[string]any{"n": 1}}); a.Error != nil {
		t.Fatal(a.Error)
	}
	if c := g.waitCast(t, 10*time.Second); string(c["n"]) != "1" {
		t.Errorf("cast args = %v", c)
	}
	if a := py.do(t, map[string]any{"op": "cast", "fanout": true, "method": "record", "version": "6.0",
		"args": map[string]any{"n": 2}}); a.Error != nil {
		t.Fatal(a.Error)
	}
	if c := g.waitCast(t, 10*time.Second); string(c["n"]) != "2" {
		t.Errorf("fanout cast args = %v", c)
	}
}

// A call whose handler runs longer than the caller's call-monitor timeout
// stays alive through heartbeats.
func TestCallMonitorHeartbeats(t *testing.T) {
	g := startGoServer(t, vhost, "go-hb", nil)
	py := startPy(t, "client", broker.URL(vhost))
	c := call(g.host, "sleep", "6.0", map[string]any{"seconds": 5})
	c["monitor"] = 2
	c["timeout"] = 30
	if a := py.do(t, c); a.Error != nil || string(a.Result) != "5" {
		t.Fatalf("sleep 5 with call_monitor_timeout 2: %s %+v", a.Result, a.Error)
	}
	// The raw replies show what kept it alive: ending=false heartbeats, then the result.
	raw := py.rawCmd(vhost)
	raw["routing_key"] = "compute." + g.host
	raw["reply"] = true
	raw["timeout"] = 15
	raw["content_type"] = "application/json"
	raw["body"] = `{"method":"sleep","args":{"seconds":3},"version":"6.0","_msg_id":"hb1","_reply_q":"{{REPLY_Q}}","_timeout":2,"_unique_id":"hbu1"}`
	a := py.do(t, raw)
	if len(a.Replies) < 2 {
		t.Fatalf("replies = %s, want heartbeats then the result", a.Replies)
	}
	for i, r := range a.Replies {
		var m map[string]any
		_ = json.Unmarshal(r, &m)
		last := i == len(a.Replies)-1
		if m["ending"] != last || m["_msg_id"] != "hb1" || (!last && m["result"] != nil) || (last && m["result"] != float64(3)) {
			t.Errorf("reply %d = %s", i, r)
		}
		for _, k := range []string{"result", "failure", "ending", "_msg_id"} {
			if _, ok := m[k]; !ok {
				t.Errorf("reply %d lacks %q: %s", i, k, r)
			}
		}
	}
}

// A cast (e.g. an abort) is served while a long call runs.
func TestCastDuringLongCall(t *testing.T) {
	g := startGoServer(t, vhost, "go-long", nil)
	caller := startPy(t, "client", broker.URL(vhost))
	caster := startPy(t, "client", broker.URL(vhost))
	done := make(chan pyAnswer, 1)
	go func() {
		c := call(g.host, "sleep", "6.0", map[string]any{"seconds": 10})
		c["monitor"] = 4
		c["timeout"] = 60
		done <- caller.do(t, c)
	}()
	select {
	case <-g.started:
	case <-time.After(20 * time.Second):
		t.Fatal("the 10 s call never started")
	}
	start := time.Now()
	caster.do(t, map[string]any{"op": "cast", "server": g.host, "method": "record", "version": "6.0", "args": map[string]any{"abort": true}})
	g.waitCast(t, 5*time.Second)
	if g.sleeping.Load() == 0 {
		t.Error("the cast was served only after the call ended")
	}
	t.Logf("cast served %.2fs after it was sent, while the 10 s call ran", time.Since(start).Seconds())
	if a := <-done; a.Error != nil || string(a.Result) != "10" {
		t.Errorf("long call = %s %+v", a.Result, a.Error)
	}
}

// A repeated _unique_id is dropped: one handler run for two identical casts,
// no reply for the second copy of a call.
func TestDuplicateIgnored(t *testing.T) {
	g := startGoServer(t, vhost, "go-dup", nil)
	py := startPy(t, "client", broker.URL(vhost))
	raw := py.rawCmd(vhost)
	raw["routing_key"] = "compute." + g.host
	raw["content_type"] = "application/json"
	raw["times"] = 2
	raw["body"] = `{"oslo.version":"2.0","oslo.message":"{\"method\":\"record\",\"args\":{\"n\":7},\"version\":\"6.0\",\"_unique_id\":\"dup-cast-1\"}"}`
	py.do(t, raw)
	g.waitCast(t, 10*time.Second)
	g.noCast(t, 2*time.Second)

	raw["reply"] = true
	raw["timeout"] = 4
	raw["body"] = `{"method":"echo","args":{},"version":"6.0","_msg_id":"d1","_reply_q":"{{REPLY_Q}}","_unique_id":"dup-call-1"}`
	a := py.do(t, raw)
	if len(a.Replies) != 1 {
		t.Fatalf("replies = %s, want exactly one (for the first copy)", a.Replies)
	}
	// A later message with a fresh id is served as usual.
	raw["times"] = 1
	raw["body"] = `{"method":"echo","args":{},"version":"6.0","_msg_id":"d2","_reply_q":"{{REPLY_Q}}","_unique_id":"dup-call-2"}`
	if a := py.do(t, raw); len(a.Replies) != 1 {
		t.Fatalf("replies = %s, want one", a.Replies)
	}
}

// Bad input gets a failure reply (calls) or a logged rejection (casts), and
// the next good message is served.
func TestBadInput(t *testing.T) {
	g := startGoServer(t, vhost, "go-bad", nil)
	py := startPy(t, "client", broker.URL(vhost))
	raw := func(ctype *string, body string, reply bool) pyAnswer {
		r := py.rawCmd(vhost)
		r["routing_key"] = "compute." + g.host
		if ctype != nil {
			r["content_type"] = *ctype
		}
		r["body"] = body
		r["reply"] = reply
		// The wait ends at the failure reply; the bound only has to outlast a
		// loaded machine moving a 32 MiB body through the broker twice.
		r["timeout"] = 60
		return py.do(t, r)
	}
	js, text := "application/json", "text/plain"
	answerable := `"_msg_id":"bad1","_reply_q":"{{REPLY_Q}}"`
	tests := []struct {
		name  string
		ctype *string
		body  string
		reply bool
		class string // the failure's class; default ValueError
	}{
		{"non-JSON cast", &js, `this is not json`, false, ""},
		{"non-JSON call (no reply address to answer)", &js, `{"method": "echo", "_msg_id": `, false, ""},
		{"wrong content type", &text, `{"method":"echo","args":{},"version":"6.0",` + answerable + `}`, true, ""},
		{"no content type", nil, `{"method":"echo","args":{},"version":"6.0",` + answerable + `}`, true, ""},
		{"missing method", &js, `{"args":{},"version":"6.0",` + answerable + `}`, true, ""},
		{"args not an object", &js, `{"method":"echo","args":[1],"version":"6.0",` + answerable + `}`, true, ""},
		{"bad argument type", &js, `{"method":"sleep","args":{"seconds":"ten"},"version":"6.0",` + answerable + `}`, true, ""},
		{"huge call", &js, `{"method":"echo","args":{"pad":"` + strings.Repeat("x", oslo.MaxMessageSize) + `"},"version":"6.0",` + answerable + `}`, true, ""},
		{"huge cast", &js, `{"method":"record","args":{"pad":"` + strings.Repeat("x", oslo.MaxMessageSize) + `"},"version":"6.0"}`, false, ""},
		{"envelope from the future", &js, `{"oslo.version":"3.0","oslo.message":"{\"method\":\"echo\",\"_msg_id\":\"bad1\",\"_reply_q\":\"{{REPLY_Q}}\"}"}`,
			true, "UnsupportedRpcEnvelopeVersion"},
	}
	for _, tc := range tests {
		a := raw(tc.ctype, tc.body, tc.reply)
		if tc.reply {
			if len(a.Replies) != 1 {
				t.Errorf("%s: replies = %d, want one failure reply", tc.name, len(a.Replies))
				continue
			}
			var m struct {
				Failure *string `json:"failure"`
				Ending  bool    `json:"ending"`
			}
			_ = json.Unmarshal(a.Replies[0], &m)
			class := tc.class
			if class == "" {
				class = "ValueError"
			}
			if m.Failure == nil || !m.Ending || !strings.Contains(*m.Failure, `"`+class+`"`) {
				t.Errorf("%s: reply %.300s, want a %s failure", tc.name, a.Replies[0], class)
			}
		}
		// The consumer still serves good messages.
		if b := py.do(t, call(g.host, "echo", "6.0", map[string]any{"after": tc.name})); b.Error != nil {
			t.Fatalf("after %s: echo failed: %+v", tc.name, b.Error)
		}
	}
	g.noCast(t, 500*time.Millisecond)
}

func TestGoClientPythonServer(t *testing.T) {
	py := startPy(t, "server", broker.URL(vhost), "py-srv")
	if l := py.line(t); l != "READY" {
		t.Fatalf("python server said %q", l)
	}
	ctx := context.Background()
	c, err := oslo.NewClient(ctx, oslo.ClientOptions{URL: mustURL(t, vhost), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tgt := oslo.Target{Topic: "compute", Server: "py-srv", Version: "6.0"}
	rctx := json.RawMessage(`{"user":"u-9","request_id":"req-9","timestamp":"2026-11-26T05:00:00.000000","is_admin":true}`)

	res, err := c.Call(ctx, tgt, "echo", map[string]any{"a": []int{1, 2}}, oslo.CallOptions{Context: rctx, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Args        map[string]any `json:"args"`
		ContextUser string         `json:"context_user"`
		RequestID   string         `json:"request_id"`
	}
	if err := json.Unmarshal(res, &got); err != nil || got.ContextUser != "u-9" || got.RequestID != "req-9" || fmt.Sprint(got.Args["a"]) != "[1 2]" {
		t.Errorf("echo = %s (%v)", res, err)
	}

	if err := c.Cast(ctx, tgt, "record", map[string]any{"from": "go"}, oslo.CallOptions{Context: rctx}); err != nil {
		t.Fatal(err)
	}
	if l := py.line(t); !strings.Contains(l, `"from": "go"`) {
		t.Errorf("python server recorded %q", l)
	}

	_, err = c.Call(ctx, tgt, "fail", map[string]any{"message": "boom"}, oslo.CallOptions{Timeout: 20 * time.Second})
	var f *oslo.Failure
	if !errors.As(err, &f) || f.Class != "ValueError" || f.Module != "builtins" || f.Message != "boom" {
		t.Errorf("remote exception = %v, want builtins.ValueError: boom", err)
	}

	// Heartbeats from a Python server keep a call alive past its monitor timeout.
	res, err = c.Call(ctx, tgt, "sleep", map[string]any{"seconds": 3}, oslo.CallOptions{Timeout: 20 * time.Second, MonitorTimeout: 2 * time.Second})
	if err != nil || string(res) != "3" {
		t.Errorf("sleep 3 with monitor 2s = %s, %v", res, err)
	}

	start := time.Now()
	_, err = c.Call(ctx, tgt, "sleep", map[string]any{"seconds": 3}, oslo.CallOptions{Timeout: time.Second})
	if !oslo.IsTimeout(err) {
		t.Errorf("call past its timeout = %v, want a timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("timeout took %s", d)
	}
	_, err = c.Call(ctx, oslo.Target{Topic: "compute", Server: "nobody-home", Version: "6.0"}, "echo", nil, oslo.CallOptions{Timeout: time.Second})
	if !oslo.IsTimeout(err) {
		t.Errorf("call to a missing server = %v, want a timeout", err)
	}

	// A cast to an exchange nobody declared: RabbitMQ closes the channel
	// with a 404. That is the cast's answer, not a lost connection to send
	// it again on (which would fail the same way until the timeout).
	start = time.Now()
	err = c.Cast(ctx, oslo.Target{Topic: "nothing-here", Fanout: true}, "record", nil, oslo.CallOptions{Timeout: 20 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "404 NOT_FOUND - no exchange 'nothing-here_fanout'") || time.Since(start) > 5*time.Second {
		t.Errorf("cast to a missing exchange = %v after %s, want the broker's 404 at once", err, time.Since(start))
	}
	if _, err := c.Call(ctx, tgt, "echo", nil, oslo.CallOptions{Timeout: 20 * time.Second}); err != nil {
		t.Errorf("call after the 404: %v", err)
	}
}
