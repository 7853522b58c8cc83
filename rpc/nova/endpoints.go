package nova

import (
	"context"
	"fmt"
	"slices"
	"sort"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/rpc/oslo"
)

// Native is the ownership table of native mode: ferryd answers every
// live-migration method of both roles itself.
var Native = []string{
	"check_can_live_migrate_source", "live_migration", "live_migration_force_complete", "live_migration_abort",
	"check_can_live_migrate_destination", "pre_live_migration", "post_live_migration_at_destination",
	"rollback_live_migration_at_destination", "remove_volume_connection", "drop_move_claim_at_destination",
	"get_host_uptime",
}

// Handler is the dispatcher for the compute topic, built from the methods
// ferryd owns (an ownership table, by method name) and the endpoint sets
// that implement them: compute RPC 6.0–6.4, the 5.x forms a Zed conductor
// may send, and baseapi ping. A method not owned gets oslo's NoSuchMethod.
// An owned method no endpoint set implements is a configuration error.
// With events set, the methods nova-compute decorates with
// wrap_instance_event record their action event the same way.
func Handler(owned []string, events *Events, sets ...map[string]oslo.HandlerFunc) (oslo.Handler, error) {
	all := map[string]oslo.HandlerFunc{}
	for _, s := range sets {
		for name, h := range s {
			all[name] = h
		}
	}
	methods := map[string]oslo.Handler{}
	var missing []string
	for _, name := range owned {
		h, ok := all[name]
		if !ok {
			missing = append(missing, name)
			continue
		}
		if events != nil && slices.Contains(eventMethods, name) {
			h = events.wrap(name, h)
		}
		methods[name] = h
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("compute handler: no endpoint implements %v", missing)
	}
	return &oslo.Dispatcher{Endpoints: []oslo.Endpoint{
		{Version: "6.4", Methods: methods},
		{Namespace: "baseapi", Version: "1.1", Methods: map[string]oslo.Handler{
			"ping": oslo.HandlerFunc(func(_ context.Context, r *oslo.Request) (any, error) {
				return map[string]any{"service": "compute", "arg": r.Args["arg"]}, nil
			}),
		}},
		{Version: "5.13", Methods: methods},
	}}, nil
}

// eventMethods are the compute manager methods nova-compute wraps with
// wrap_instance_event(prefix='compute') (Zed); live_migration's own event
// is one of the engine's reports, since it ends when the migration is queued.
var eventMethods = []string{
	"check_can_live_migrate_destination", "check_can_live_migrate_source", "pre_live_migration",
	"live_migration_force_complete", "live_migration_abort", "post_live_migration_at_destination",
	"rollback_live_migration_at_destination",
}

// Events records an RPC's action event as nova-compute's EventReporter does:
// compute_<method> starts before the method runs on this host and finishes
// after it, with the failure's message (a Nova exception's, else its class)
// when it failed. A conductor that cannot record the event does not fail
// the RPC; it is logged.
type Events struct {
	Host string
	Cond *Conductor
	Log  *logrus.Entry
}

func (e *Events) wrap(method string, h oslo.HandlerFunc) oslo.HandlerFunc {
	name := "compute_" + method
	return func(ctx context.Context, r *oslo.Request) (any, error) {
		_, uuid, err := instanceArg(r)
		if err != nil {
			return h(ctx, r) // no instance to record it on; the method refuses it
		}
		rctx := requestContext(r)
		log := e.Log.WithFields(rctx.LogFields()).WithFields(logrus.Fields{"instance_uuid": uuid, "event": name})
		if err := e.Cond.EventStart(ctx, rctx, uuid, name, e.Host); err != nil {
			log.WithError(err).Warn("action event not started")
		}
		res, herr := h(ctx, r)
		failure := ""
		if herr != nil {
			f := Failure(herr)
			failure = f.Class
			if f.Module == "nova.exception" && f.Message != "" {
				failure = f.Message
			}
		}
		if err := e.Cond.EventFinish(context.WithoutCancel(ctx), rctx, uuid, name, failure); err != nil {
			log.WithError(err).Warn("action event not finished")
		}
		return res, herr
	}
}
