package nova

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
)

// Plugs carries Neutron's external instance events to the migrations that
// wait for them. In companion mode Neutron's network-vif-plugged for a
// migrating instance arrives as an external_instance_event cast on this
// host's queue, which ferryd forwards to nova-compute: Plugs is shown each
// such cast first (oslo.Forward.Tapped), so a migration here waiting for
// its ports' plug-time events (nova-compute's
// get_live_migration_plug_time_events: hybrid-plugged OVS ports) gets them,
// and nova-compute still sees them too.
type Plugs struct {
	Log   *logrus.Entry
	mu    sync.Mutex
	waits map[string]*PlugWait // by instance uuid
}

// PlugWait is one migration's wait for its plug events.
type PlugWait struct {
	p        *Plugs
	instance string
	mu       sync.Mutex
	want     map[string]bool // "<name>-<tag>" not yet arrived
	failed   []string
	done     chan struct{} // closed when every wanted event arrived, or one failed
	closed   bool
}

// Expect registers a wait for events (e.g. "network-vif-plugged-<port>")
// of an instance, before the call that makes them happen, as nova-compute's
// wait_for_instance_event does. Cancel it when done.
func (p *Plugs) Expect(instance string, events []string) *PlugWait {
	w := &PlugWait{p: p, instance: instance, want: map[string]bool{}, done: make(chan struct{})}
	for _, e := range events {
		w.want[e] = true
	}
	if len(events) == 0 {
		w.finish()
		return w
	}
	p.mu.Lock()
	if p.waits == nil {
		p.waits = map[string]*PlugWait{}
	}
	p.waits[instance] = w
	p.mu.Unlock()
	return w
}

// Cancel ends the wait.
func (w *PlugWait) Cancel() {
	w.p.mu.Lock()
	if w.p.waits[w.instance] == w {
		delete(w.p.waits, w.instance)
	}
	w.p.mu.Unlock()
}

// Wait returns once every expected event arrived, with an error naming the
// ones that failed (status failed: the port did not plug), or with
// errdefs.ErrTimeout naming the missing ones after timeout.
func (w *PlugWait) Wait(ctx context.Context, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.failed) > 0 {
		sort.Strings(w.failed)
		return fmt.Errorf("VIFs failed to plug on the destination: %s", strings.Join(w.failed, ", "))
	}
	if len(w.want) > 0 {
		var missing []string
		for e := range w.want {
			missing = append(missing, e)
		}
		sort.Strings(missing)
		return fmt.Errorf("%w: no %s within %s", errdefs.ErrTimeout, strings.Join(missing, ", "), timeout)
	}
	return nil
}

func (w *PlugWait) finish() {
	if !w.closed {
		w.closed = true
		close(w.done)
	}
}

func (w *PlugWait) deliver(name, status string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.want[name] {
		return false
	}
	delete(w.want, name)
	if status == "failed" {
		w.failed = append(w.failed, name)
	}
	if len(w.want) == 0 || status == "failed" {
		w.finish()
	}
	return true
}

// externalEvent is one InstanceExternalEvent of the cast.
type externalEvent struct {
	Instance, Name, Tag, Status string
}

func externalEvents(r *oslo.Request) ([]externalEvent, error) {
	var objs []*Object
	ok, err := r.Arg("events", &objs)
	if err != nil || !ok {
		return nil, fmt.Errorf("external_instance_event: %w: events (%v)", errdefs.ErrInvalidArgument, err)
	}
	out := make([]externalEvent, 0, len(objs))
	for _, o := range objs {
		var e externalEvent
		if e.Instance, err = UUID(o, "instance_uuid"); err != nil {
			return nil, err
		}
		if e.Name, err = Need[string](o, "name"); err != nil {
			return nil, err
		}
		if e.Tag, _, err = Opt[string](o, "tag"); err != nil {
			return nil, err
		}
		if e.Status, _, err = Opt[string](o, "status"); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// Methods is the tapped endpoint: external_instance_event, whose events
// for waiting migrations are delivered here (the cast itself goes on to
// nova-compute).
func (p *Plugs) Methods() map[string]oslo.HandlerFunc {
	return map[string]oslo.HandlerFunc{"external_instance_event": p.observe}
}

func (p *Plugs) observe(_ context.Context, r *oslo.Request) (any, error) {
	evs, err := externalEvents(r)
	if err != nil {
		return nil, err
	}
	for _, e := range evs {
		name := e.Name
		if e.Tag != "" {
			name += "-" + e.Tag
		}
		p.mu.Lock()
		w := p.waits[e.Instance]
		p.mu.Unlock()
		if w != nil && w.deliver(name, e.Status) {
			p.Log.WithFields(requestContext(r).LogFields()).WithFields(logrus.Fields{"instance_uuid": e.Instance, "event": name, "status": e.Status}).
				Info("external event for a migration here")
		}
	}
	return nil, nil
}

// plugTimeEvents are the events nova-compute waits for before it starts a
// live migration: network-vif-plugged of each hybrid-plugged port
// (network_info's ovs_hybrid_plug), whose plug Neutron reports as soon as
// the destination wired it.
func plugTimeEvents(nw []netVIF) []string {
	var out []string
	for _, v := range nw {
		if hybrid, _ := v.Details["ovs_hybrid_plug"].(bool); hybrid {
			out = append(out, "network-vif-plugged-"+v.ID)
		}
	}
	return out
}
