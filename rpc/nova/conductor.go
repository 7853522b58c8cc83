package nova

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"opendev.org/x/ferry/rpc/oslo"
)

// Caller is the part of an oslo client the Nova side uses.
type Caller interface {
	Call(ctx context.Context, t oslo.Target, method string, args any, o oslo.CallOptions) (json.RawMessage, error)
	Cast(ctx context.Context, t oslo.Target, method string, args any, o oslo.CallOptions) error
}

// Conductor persists Nova objects the way nova-compute does: remotable
// methods become object_action calls, class methods
// object_class_action_versions, to topic "conductor", version 3.0.
type Conductor struct {
	c       Caller
	Timeout time.Duration // rpc_response_timeout; default 60s
}

// NewConductor wraps an oslo client.
func NewConductor(c Caller) *Conductor { return &Conductor{c: c, Timeout: 60 * time.Second} }

var conductorTarget = oslo.Target{Topic: "conductor", Version: "3.0"}

// Action runs a remotable method of o (e.g. "save") and applies the updates
// the conductor answers with; it returns the method's own result.
func (c *Conductor) Action(ctx context.Context, rctx Context, o *Object, method string, args []any, kwargs map[string]any) (json.RawMessage, error) {
	if args == nil {
		args = []any{}
	}
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	res, err := c.c.Call(ctx, conductorTarget, "object_action",
		map[string]any{"objinst": o, "objmethod": method, "args": args, "kwargs": kwargs},
		oslo.CallOptions{Timeout: c.Timeout, Context: rctx.JSON()})
	if err != nil {
		return nil, fmt.Errorf("%s.%s: %w", o.Name, method, err)
	}
	var pair []json.RawMessage
	if err := json.Unmarshal(res, &pair); err != nil || len(pair) != 2 {
		return nil, fmt.Errorf("%s.%s: conductor answered %.200s, want [updates, result]", o.Name, method, res)
	}
	var updates map[string]json.RawMessage
	if err := json.Unmarshal(pair[0], &updates); err != nil {
		return nil, fmt.Errorf("%s.%s: updates: %w", o.Name, method, err)
	}
	o.Apply(updates)
	return pair[1], nil
}

// Save is o.save(**kwargs): only the fields in o.Changes are stored.
func (c *Conductor) Save(ctx context.Context, rctx Context, o *Object, kwargs map[string]any) error {
	_, err := c.Action(ctx, rctx, o, "save", nil, kwargs)
	return err
}

// ClassAction runs a remotable class method.
func (c *Conductor) ClassAction(ctx context.Context, rctx Context, objname, method string, versions map[string]string,
	args []any, kwargs map[string]any) (json.RawMessage, error) {
	if args == nil {
		args = []any{}
	}
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	res, err := c.c.Call(ctx, conductorTarget, "object_class_action_versions",
		map[string]any{"objname": objname, "objmethod": method, "object_versions": versions, "args": args, "kwargs": kwargs},
		oslo.CallOptions{Timeout: c.Timeout, Context: rctx.JSON()})
	if err != nil {
		return nil, fmt.Errorf("%s.%s: %w", objname, method, err)
	}
	return res, nil
}

// MigrationByID is Migration.get_by_id.
func (c *Conductor) MigrationByID(ctx context.Context, rctx Context, id int64, version string) (*Object, error) {
	res, err := c.ClassAction(ctx, rctx, "Migration", "get_by_id", map[string]string{"Migration": version}, []any{id}, nil)
	if err != nil {
		return nil, err
	}
	o := &Object{}
	if err := json.Unmarshal(res, o); err != nil {
		return nil, fmt.Errorf("Migration.get_by_id: %w", err)
	}
	return o, nil
}

// InstanceByUUID is Instance.get_by_uuid: Nova's own record of an instance
// (its host, task state), read back to verify a message or a re-sent save.
func (c *Conductor) InstanceByUUID(ctx context.Context, rctx Context, uuid string) (*Object, error) {
	return c.InstanceWith(ctx, rctx, uuid, nil)
}

// InstanceWith is Instance.get_by_uuid with expected_attrs: the fields
// nova-compute lazy-loads (flavor, metadata, info_cache…) loaded too.
func (c *Conductor) InstanceWith(ctx context.Context, rctx Context, uuid string, attrs []string) (*Object, error) {
	if attrs == nil {
		attrs = []string{}
	}
	res, err := c.ClassAction(ctx, rctx, "Instance", "get_by_uuid", map[string]string{"Instance": "2.7"}, []any{uuid},
		map[string]any{"expected_attrs": attrs})
	if err != nil {
		return nil, err
	}
	o := &Object{}
	if err := json.Unmarshal(res, o); err != nil {
		return nil, fmt.Errorf("Instance.get_by_uuid: %w", err)
	}
	return o, nil
}

// NodeOf is the hypervisor host name of host's compute node, as
// nova-compute takes it for instance.node after a live migration
// (ComputeNode.get_first_node_by_host_for_old_compat): it differs from
// Nova's host name wherever the hypervisor calls itself otherwise.
func (c *Conductor) NodeOf(ctx context.Context, rctx Context, host string) (string, error) {
	res, err := c.ClassAction(ctx, rctx, "ComputeNode", "get_first_node_by_host_for_old_compat",
		map[string]string{"ComputeNode": "1.19", "HVSpec": "1.2", "PciDevicePoolList": "1.1", "PciDevicePool": "1.1"}, []any{host}, nil)
	if err != nil {
		return "", err
	}
	o := &Object{}
	if err := json.Unmarshal(res, o); err != nil {
		return "", fmt.Errorf("ComputeNode.get_first_node_by_host_for_old_compat: %w", err)
	}
	return Need[string](o, "hypervisor_hostname")
}

// EventStart is InstanceActionEvent.event_start, as nova-compute's
// wrap_instance_event sends it.
func (c *Conductor) EventStart(ctx context.Context, rctx Context, instance, event, host string) error {
	_, err := c.ClassAction(ctx, rctx, "InstanceActionEvent", "event_start", map[string]string{"InstanceActionEvent": "1.4"},
		[]any{instance, event}, map[string]any{"want_result": false, "host": host})
	return err
}

// EventFinish is InstanceActionEvent.event_finish_with_failure; failure
// "" means success.
func (c *Conductor) EventFinish(ctx context.Context, rctx Context, instance, event, failure string) error {
	var exc, tb any
	if failure != "" {
		exc, tb = failure, "ferry: "+failure
	}
	_, err := c.ClassAction(ctx, rctx, "InstanceActionEvent", "event_finish_with_failure",
		map[string]string{"InstanceActionEvent": "1.4"}, []any{instance, event},
		map[string]any{"exc_val": exc, "exc_tb": tb, "want_result": false})
	return err
}

// Fault records an InstanceFault (InstanceFault.create).
func (c *Conductor) Fault(ctx context.Context, rctx Context, instance, host, message string) error {
	f := NewObject("InstanceFault", "1.2")
	for k, v := range map[string]any{"instance_uuid": instance, "code": 500, "message": message, "details": "", "host": host} {
		if err := f.Set(k, v); err != nil {
			return err
		}
	}
	_, err := c.Action(ctx, rctx, f, "create", nil, nil)
	return err
}
