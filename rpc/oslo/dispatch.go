package oslo

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// Request is one incoming RPC as a Handler sees it.
type Request struct {
	Message

	ack     func() error
	ackOnce sync.Once
	ackErr  error
}

// Ack acknowledges a cast to the broker. A cast handler calls it once it has
// persisted its intent (so a crash before that gets the cast redelivered);
// the server acks every cast whose handler returns without calling it. Calls
// are acked on receipt, before dispatch, as oslo does (a redelivered call
// would run twice), so Ack does nothing for them. An Ack whose channel has
// died is not sent on any other channel: the broker redelivers the cast and
// the handler must be idempotent.
func (r *Request) Ack() error {
	r.ackOnce.Do(func() {
		if r.ack != nil {
			r.ackErr = r.ack()
		}
	})
	return r.ackErr
}

// Arg decodes the named argument into v; a missing or null argument leaves
// v untouched and reports false.
func (r *Request) Arg(name string, v any) (bool, error) {
	raw, ok := r.Args[name]
	if !ok || isNull(raw) {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("%w: argument %q: %w", errMalformed, name, err)
	}
	return true, nil
}

// Handler serves RPCs. The result of a call is JSON-encoded into the reply
// (a json.RawMessage goes as is); an error becomes a failure reply through
// the server's failure mapping. Casts get no reply either way.
type Handler interface {
	ServeRPC(ctx context.Context, r *Request) (any, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, r *Request) (any, error)

// ServeRPC calls f.
func (f HandlerFunc) ServeRPC(ctx context.Context, r *Request) (any, error) { return f(ctx, r) }

// Endpoint is a set of methods under one namespace and version, like an
// oslo.messaging endpoint object with its target.
type Endpoint struct {
	Namespace string             // "" for none
	Version   string             // the highest version served, e.g. "6.4"
	Methods   map[string]Handler // by method name
}

// Dispatcher routes requests to endpoints with oslo's rules: the first
// endpoint whose namespace matches and whose version is compatible (same
// major, requested minor ≤ endpoint minor) and that has the method serves
// it; a compatible endpoint without the method means NoSuchMethod, no
// compatible endpoint UnsupportedVersion. Methods starting with "_" are
// never dispatched.
type Dispatcher struct {
	Endpoints []Endpoint
}

// ServeRPC dispatches r.
func (d *Dispatcher) ServeRPC(ctx context.Context, r *Request) (any, error) {
	if strings.HasPrefix(r.Method, "_") {
		return nil, NoSuchMethod(r.Method)
	}
	compatible := false
	for _, e := range d.Endpoints {
		if e.Namespace != r.Namespace || !VersionCompatible(e.Version, r.Version) {
			continue
		}
		compatible = true
		if h, ok := e.Methods[r.Method]; ok {
			return h.ServeRPC(ctx, r)
		}
	}
	if compatible {
		return nil, NoSuchMethod(r.Method)
	}
	return nil, UnsupportedVersion(r.Version, r.Method)
}

// VersionCompatible reports whether an endpoint at version have can serve a
// request for version want (oslo's version_is_compatible).
func VersionCompatible(have, want string) bool {
	h, ok1 := parseVersion(have)
	w, ok2 := parseVersion(want)
	if !ok1 || !ok2 || h[0] != w[0] {
		return false
	}
	if w[1] != h[1] {
		return w[1] < h[1]
	}
	return w[2] <= h[2]
}

func parseVersion(v string) ([3]int, bool) {
	var out [3]int
	parts := strings.Split(v, ".")
	if len(parts) < 1 || len(parts) > 3 {
		return out, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return out, false
		}
		out[i] = n
	}
	return out, true
}

// dedup remembers the last n _unique_ids; oslo keeps 16, ferry more, since
// a redelivered cast may come back after other traffic.
type dedup struct {
	mu   sync.Mutex
	seen map[string]struct{}
	ring []string
	next int
}

func newDedup(n int) *dedup {
	return &dedup{seen: make(map[string]struct{}, n), ring: make([]string, n)}
}

// first reports whether id was not seen before, and remembers it.
func (d *dedup) first(id string) bool {
	if id == "" {
		return true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.seen[id]; ok {
		return false
	}
	d.add(id)
	return true
}

// has reports whether id was remembered, without remembering it.
func (d *dedup) has(id string) bool {
	if id == "" {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.seen[id]
	return ok
}

// add remembers id; d.mu is held.
func (d *dedup) add(id string) {
	if old := d.ring[d.next]; old != "" {
		delete(d.seen, old)
	}
	d.ring[d.next] = id
	d.seen[id] = struct{}{}
	d.next = (d.next + 1) % len(d.ring)
}
