package oslo_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"opendev.org/x/ferry/rpc/oslo"
	"opendev.org/x/ferry/rpc/oslo/oslotest"
)

// observed records what a Server reports.
type observed struct {
	mu        sync.Mutex
	rpcs      []string // method/kind/outcome
	took      map[string]time.Duration
	lost      map[string]int
	resumed   map[string]int
	forwarded map[string]int
	dups      int
}

func newObserved() *observed {
	return &observed{took: map[string]time.Duration{}, lost: map[string]int{}, resumed: map[string]int{}, forwarded: map[string]int{}}
}

func (o *observed) RPC(method string, call bool, took time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	kind, outcome := "cast", "ok"
	if call {
		kind = "call"
	}
	if err != nil {
		outcome = "error"
	}
	o.rpcs = append(o.rpcs, method+"/"+kind+"/"+outcome)
	o.took[method] = took
}

func (o *observed) Forwarded(outcome string) { o.mu.Lock(); o.forwarded[outcome]++; o.mu.Unlock() }
func (o *observed) Duplicate()               { o.mu.Lock(); o.dups++; o.mu.Unlock() }
func (o *observed) AMQPLost(link string)     { o.mu.Lock(); o.lost[link]++; o.mu.Unlock() }
func (o *observed) AMQPResumed(link string)  { o.mu.Lock(); o.resumed[link]++; o.mu.Unlock() }

// The Observer hears each request served (kind, outcome, the handler's
// time), a malformed call, and each session lost and resumed, by link.
func TestObserver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		obs := newObserved()
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"slow": func(context.Context, *oslo.Request) (any, error) { time.Sleep(3 * time.Second); return nil, nil },
			"bad":  func(context.Context, *oslo.Request) (any, error) { return nil, errors.New("refused") },
		}), func(o *oslo.ServerOptions) { o.Observer = obs })
		srv.waitReady(t)
		c := newCaller(t, b)
		send(t, b, "compute.h1", envelope(t, c.call("slow", "m1")))
		send(t, b, "compute.h1", envelope(t, cast("bad", "m2", nil)))
		m := c.call("nope", "m3")
		send(t, b, "compute.h1", envelope(t, m))
		bad := c.call("x", "m4")
		bad["args"] = "not an object"
		send(t, b, "compute.h1", envelope(t, bad))
		time.Sleep(5 * time.Second)
		synctest.Wait()
		b.KillConnections()
		time.Sleep(3 * time.Second) // the reconnect backoff
		synctest.Wait()
		obs.mu.Lock()
		defer obs.mu.Unlock()
		got := map[string]int{}
		for _, r := range obs.rpcs {
			got[r]++
		}
		want := map[string]int{"slow/call/ok": 1, "bad/cast/error": 1, "nope/call/error": 1, "x/call/error": 1}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("RPCs observed %v, want %v", got, want)
		}
		if d := obs.took["slow"]; d < 3*time.Second || d > 4*time.Second {
			t.Errorf("slow's time = %s, want its handler's 3s", d)
		}
		for _, l := range []string{oslo.LinkServerConsumer, oslo.LinkServerPublisher} {
			if obs.lost[l] != 1 || obs.resumed[l] != 1 {
				t.Errorf("%s: lost %d, resumed %d; want 1 and 1 (lost %v resumed %v)", l, obs.lost[l], obs.resumed[l], obs.lost, obs.resumed)
			}
		}
	})
}

// In companion mode the Observer hears each forward's outcome, a tapped
// message's handler as a cast, and duplicates dropped on either path.
func TestObserverForwards(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := oslotest.New()
		obs := newObserved()
		_, nova := listen(t, b, oslo.Declaration{Exchange: "ferry-h1", ExchangeKind: "topic", Queue: "compute.h1", Key: "compute.h1"},
			oslo.ConsumeOptions{Tag: "nova", AutoAck: true})
		srv := startServer(t, b, handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"live_migration":          func(context.Context, *oslo.Request) (any, error) { return nil, nil },
			"external_instance_event": func(context.Context, *oslo.Request) (any, error) { return nil, nil },
		}), func(o *oslo.ServerOptions) {
			o.Queue = "ferry.compute.h1"
			o.Forward = &oslo.Forward{To: "compute.h1", Owned: []string{"live_migration"}, Tapped: []string{"external_instance_event"}}
			o.Observer = obs
		})
		srv.waitReady(t)
		reboot := envelope(t, cast("reboot_instance", "r1", nil))
		for _, body := range [][]byte{reboot, reboot, envelope(t, cast("external_instance_event", "x1", nil)),
			envelope(t, cast("live_migration", "l1", nil)), envelope(t, cast("live_migration", "l1", nil))} {
			send(t, b, "compute.h1", body)
		}
		for range 2 {
			<-nova
		}
		synctest.Wait()
		b.DeleteQueue(vh, "compute.h1")
		<-nova // closed with its session
		send(t, b, "compute.h1", envelope(t, cast("stop_instance", "s1", nil)))
		time.Sleep(3 * time.Second)
		synctest.Wait()
		obs.mu.Lock()
		defer obs.mu.Unlock()
		if obs.forwarded[oslo.ForwardSent] != 2 || obs.forwarded[oslo.ForwardDuplicate] != 1 || obs.forwarded[oslo.ForwardReturned] < 1 {
			t.Errorf("forwards observed %v, want 2 forwarded, 1 duplicate, returned at least once", obs.forwarded)
		}
		if obs.dups != 1 {
			t.Errorf("duplicates of owned messages observed %d, want 1", obs.dups)
		}
		got := map[string]int{}
		for _, r := range obs.rpcs {
			got[r]++
		}
		if got["external_instance_event/cast/ok"] != 1 || got["live_migration/cast/ok"] != 1 || len(got) != 2 {
			t.Errorf("RPCs observed %v, want the tapped event and one live_migration", got)
		}
	})
}
