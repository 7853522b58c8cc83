package oslo_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"opendev.org/x/ferry/rpc/oslo"
	"opendev.org/x/ferry/rpc/oslo/oslotest"
)

// A call is acked on receipt, before its handler runs (oslo's rule: a
// redelivered call would run twice), and its reply goes to the caller's
// queue as oslo's: JSON, failure null, ending true.
func TestCallAckedOnReceiptAndAnswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		unackedWhileRunning := -1
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"echo": func(_ context.Context, r *oslo.Request) (any, error) {
				unackedWhileRunning = queueState(t, b, "compute.h1").Unacked
				return map[string]any{"version": r.Version, "n": r.Args["n"]}, nil
			},
		}), nil)
		srv.waitReady(t)
		c := newCaller(t, b)
		m := c.call("echo", "m1")
		m["args"] = map[string]any{"n": 7}
		send(t, b, "compute.h1", envelope(t, m))
		rs := c.pending(t)
		if unackedWhileRunning != 0 {
			t.Errorf("unacked deliveries while the handler ran = %d, want 0 (acked on receipt)", unackedWhileRunning)
		}
		if len(rs) != 1 {
			t.Fatalf("replies = %+v, want one", rs)
		}
		if r := rs[0]; !r.Ending || r.Failure != nil || r.MsgID != "m1" || string(r.Result) != `{"n":7,"version":"6.0"}` {
			t.Errorf("reply = %+v %s", r, r.Result)
		}
		if st := queueState(t, b, "compute.h1"); st.Ready != 0 || st.Unacked != 0 || !st.Exclusive || st.Consumers != 1 {
			t.Errorf("host queue after the call = %+v, want empty, one exclusive consumer", st)
		}
		if st := queueState(t, b, "compute"); st.Exclusive || st.Consumers != 1 {
			t.Errorf("topic queue = %+v, want one consumer, not exclusive (every compute shares it)", st)
		}
	})
}

// A cast is acked only once its handler has called Request.Ack, or has
// returned.
func TestCastAckedAfterAckOrReturn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		acked, release := make(chan struct{}), make(chan struct{})
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"early": func(_ context.Context, r *oslo.Request) (any, error) {
				if err := r.Ack(); err != nil {
					return nil, err
				}
				acked <- struct{}{}
				<-release
				return nil, nil
			},
			"late": func(context.Context, *oslo.Request) (any, error) {
				<-release
				return nil, errors.New("failed casts are acked too: they are logged, never redelivered")
			},
		}), nil)
		srv.waitReady(t)

		send(t, b, "compute.h1", envelope(t, cast("late", "c1", nil)))
		synctest.Wait()
		if st := queueState(t, b, "compute.h1"); st.Unacked != 1 {
			t.Errorf("while the handler runs: %+v, want the cast unacked", st)
		}
		release <- struct{}{}
		synctest.Wait()
		if st := queueState(t, b, "compute.h1"); st.Unacked != 0 || st.Ready != 0 {
			t.Errorf("after the handler returned: %+v, want it acked", st)
		}

		send(t, b, "compute.h1", envelope(t, cast("early", "c2", nil)))
		<-acked
		synctest.Wait()
		if st := queueState(t, b, "compute.h1"); st.Unacked != 0 {
			t.Errorf("after Request.Ack, handler still running: %+v, want it acked", st)
		}
		release <- struct{}{}
	})
}

// Handler errors become failure replies the Python caller re-raises.
func TestFailureReplies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"precheck": func(context.Context, *oslo.Request) (any, error) {
				return nil, &oslo.Failure{Class: "MigrationPreCheckError", Module: "nova.exception", Message: "no room",
					Kwargs: map[string]any{"reason": "no room"}}
			},
			"plain": func(context.Context, *oslo.Request) (any, error) { return nil, errors.New("plain go error") },
			"panics": func(context.Context, *oslo.Request) (any, error) {
				var m map[string]int
				m["boom"]++
				return nil, nil
			},
			"unencodable": func(context.Context, *oslo.Request) (any, error) { return func() {}, nil },
		}), nil)
		srv.waitReady(t)
		c := newCaller(t, b)
		for _, tc := range []struct{ method, class, module, message string }{
			{"precheck", "MigrationPreCheckError", "nova.exception", "no room"},
			{"plain", "RuntimeError", "builtins", "plain go error"},
			{"panics", "RuntimeError", "builtins", "handler for panics panicked"},
			{"unencodable", "RuntimeError", "builtins", "encode result of unencodable"},
			{"nosuch", "NoSuchMethod", "oslo_messaging.rpc.dispatcher", "Endpoint does not support RPC method nosuch"},
		} {
			send(t, b, "compute.h1", envelope(t, c.call(tc.method, tc.method)))
			rs := c.pending(t)
			if len(rs) != 1 || !rs[0].Ending || string(rs[0].Result) != "null" {
				t.Fatalf("%s: replies = %+v, want one final reply with a null result", tc.method, rs)
			}
			f := rs[0].failure(t)
			if f["class"] != tc.class || f["module"] != tc.module || !strings.Contains(f["message"].(string), tc.message) {
				t.Errorf("%s: failure = %v, want %s.%s %q", tc.method, f, tc.module, tc.class, tc.message)
			}
			for _, k := range []string{"tb", "args", "kwargs"} {
				if _, ok := f[k]; !ok {
					t.Errorf("%s: failure lacks %q", tc.method, k)
				}
			}
		}
	})
}

// While a call runs, the caller gets a heartbeat every _timeout/2 seconds
// (oslo's call monitor), and none when that is under a second.
func TestCallMonitorHeartbeats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"sleep": func(_ context.Context, r *oslo.Request) (any, error) {
				var secs float64
				if _, err := r.Arg("seconds", &secs); err != nil {
					return nil, err
				}
				time.Sleep(time.Duration(secs * float64(time.Second)))
				return secs, nil
			},
		}), nil)
		srv.waitReady(t)
		c := newCaller(t, b)
		for _, tc := range []struct {
			timeout   any
			seconds   float64
			beats     int
			firstBeat time.Duration
		}{
			{10, 12, 2, 5 * time.Second},         // heartbeats at 5 s and 10 s, the result at 12 s
			{7.9, 8, 2, 3500 * time.Millisecond}, // int(7.9)/2 = 3.5 s, as oslo computes it
			{2, 3.5, 3, time.Second},             // every 1 s, the shortest
			{1, 5, 0, 0},                         // every 0.5 s: under a second, none
			{nil, 5, 0, 0},                       // no call monitor
		} {
			m := c.call("sleep", "hb")
			m["_timeout"], m["args"] = tc.timeout, map[string]any{"seconds": tc.seconds}
			m["_unique_id"] = "hb" + time.Now().String()
			start := time.Now()
			send(t, b, "compute.h1", envelope(t, m))
			var got []reply
			for len(got) == 0 || !got[len(got)-1].Ending {
				got = append(got, c.next(t, time.Minute))
			}
			beats := got[:len(got)-1]
			if d := got[len(got)-1].at.Sub(start); d != time.Duration(tc.seconds*float64(time.Second)) {
				t.Errorf("_timeout %v: result after %s, want %vs", tc.timeout, d, tc.seconds)
			}
			if len(beats) != tc.beats {
				t.Errorf("_timeout %v, %v s call: %d heartbeats, want %d", tc.timeout, tc.seconds, len(beats), tc.beats)
			}
			for _, h := range beats {
				if h.Ending || string(h.Result) != "null" || h.Failure != nil || h.MsgID != "hb" {
					t.Errorf("heartbeat = %+v, want {result: null, failure: null, ending: false}", h)
				}
			}
			if tc.beats > 0 && beats[0].at.Sub(start) != tc.firstBeat {
				t.Errorf("_timeout %v: first heartbeat after %s, want %s", tc.timeout, beats[0].at.Sub(start), tc.firstBeat)
			}
		}
	})
}
