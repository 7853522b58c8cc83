package openstack

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"opendev.org/x/ferry/pkg/errdefs"
)

// fakeNeutron keeps bindings by "port/host" and answers the binding API's
// GET, PUT …/activate and DELETE as Neutron does (409 activating an active
// binding). It tests the client's logic; the stack tests run against the
// real neutron-server.
type fakeNeutron struct {
	mu       sync.Mutex
	bindings map[string]string // port/host → status
	calls    []string
	// activated runs after an activate is accepted (the other side racing).
	activateConflict bool
}

func (f *fakeNeutron) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	p := strings.Split(strings.TrimPrefix(r.URL.Path, "/v2.0/ports/"), "/") // port, "bindings", host[, "activate"]
	if len(p) < 3 || p[1] != "bindings" {
		http.NotFound(w, r)
		return
	}
	key := p[0] + "/" + p[2]
	st, ok := f.bindings[key]
	switch {
	case !ok:
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"NeutronError": {"type": "PortBindingNotFound"}}`))
	case r.Method == http.MethodGet:
		json.NewEncoder(w).Encode(map[string]any{"binding": map[string]any{"host": p[2], "status": st, "vif_type": "bridge"}})
	case r.Method == http.MethodPut && len(p) == 4 && p[3] == "activate":
		if st == "ACTIVE" || f.activateConflict {
			f.bindings[key] = "ACTIVE"
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"NeutronError": {"type": "PortBindingAlreadyActive"}}`))
			return
		}
		for k := range f.bindings {
			if strings.HasPrefix(k, p[0]+"/") {
				f.bindings[k] = "INACTIVE"
			}
		}
		f.bindings[key] = "ACTIVE"
		json.NewEncoder(w).Encode(map[string]any{"binding": map[string]any{"host": p[2], "status": "ACTIVE"}})
	case r.Method == http.MethodDelete:
		delete(f.bindings, key)
		w.WriteHeader(http.StatusNoContent)
	default:
		w.WriteHeader(http.StatusBadRequest)
	}
}

func newFakeNeutron(t *testing.T, b map[string]string) (*fakeNeutron, *Neutron) {
	f := &fakeNeutron{bindings: b}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, NewNeutron(Auth{AuthType: "noauth", EndpointOverride: srv.URL}, 0, nil)
}

func TestActivateBinding(t *testing.T) {
	ctx := context.Background()
	f, n := newFakeNeutron(t, map[string]string{"p1/a": "ACTIVE", "p1/b": "INACTIVE"})
	if err := n.ActivateBinding(ctx, "p1", "b"); err != nil {
		t.Fatal(err)
	}
	if f.bindings["p1/b"] != "ACTIVE" || f.bindings["p1/a"] != "INACTIVE" {
		t.Errorf("bindings %v", f.bindings)
	}
	calls := len(f.calls)
	if err := n.ActivateBinding(ctx, "p1", "b"); err != nil { // already active: done, no PUT
		t.Errorf("again: %v", err)
	}
	if got := f.calls[calls:]; len(got) != 1 || !strings.HasPrefix(got[0], "GET") {
		t.Errorf("second activation called %v", got)
	}
	if err := n.ActivateBinding(ctx, "p1", "c"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("no binding on c: %v", err)
	}
}

// The other side (nova-compute's libvirt event handler at a post-copy
// switch) activates between the read and the PUT: Neutron answers 409, and
// a re-read that shows it active is success.
func TestActivateBindingRace(t *testing.T) {
	f, n := newFakeNeutron(t, map[string]string{"p1/a": "ACTIVE", "p1/b": "INACTIVE"})
	f.activateConflict = true
	if err := n.ActivateBinding(context.Background(), "p1", "b"); err != nil {
		t.Fatal(err)
	}
}

func TestDeleteBinding(t *testing.T) {
	ctx := context.Background()
	f, n := newFakeNeutron(t, map[string]string{"p1/a": "ACTIVE", "p1/b": "INACTIVE"})
	if err := n.DeleteBinding(ctx, "p1", "a"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("deleting the active binding: %v", err)
	}
	if err := n.DeleteBinding(ctx, "p1", "b"); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.bindings["p1/b"]; ok || f.bindings["p1/a"] != "ACTIVE" {
		t.Errorf("bindings %v", f.bindings)
	}
	if err := n.DeleteBinding(ctx, "p1", "b"); err != nil {
		t.Errorf("gone already: %v", err)
	}
}
