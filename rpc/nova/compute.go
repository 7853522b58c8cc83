package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

// Libvirt is the part of a libvirt connection the endpoints use.
type Libvirt interface {
	DomainXML(ctx context.Context, name string, inactive bool) (string, error)
	MigratableXML(ctx context.Context, name string) (string, error)
	DomainState(ctx context.Context, name string) (virt.DomainState, error)
	CompareCPU(ctx context.Context, cpuXML, virtType string) (virt.CPUFit, error)
	ReadDisk(ctx context.Context, dom, target string, w io.Writer, max int64) (int64, error)
	Close() error
}

// LibvirtDialer opens a libvirt connection to a URI.
type LibvirtDialer func(ctx context.Context, uri string) (Libvirt, error)

// Computes calls and casts to other compute hosts with Nova's timeouts.
type Computes struct {
	rpc         Caller
	callTimeout time.Duration // rpc_response_timeout
	longTimeout time.Duration // long_rpc_timeout, for the calls Nova makes long
}

// NewComputes wraps an oslo client; zero timeouts take Nova's defaults
// (60s, 1800s).
func NewComputes(c Caller, callTimeout, longTimeout time.Duration) Computes {
	if callTimeout <= 0 {
		callTimeout = 60 * time.Second
	}
	if longTimeout <= 0 {
		longTimeout = 1800 * time.Second
	}
	return Computes{rpc: c, callTimeout: callTimeout, longTimeout: longTimeout}
}

func computeTarget(host string) oslo.Target {
	return oslo.Target{Topic: "compute", Server: host, Version: "6.0"}
}

// call calls another compute host; long calls use long_rpc_timeout with
// call-monitor heartbeats every rpc_response_timeout, as Nova's are.
func (c Computes) call(ctx context.Context, rctx Context, host, method string, args map[string]any, long bool) (json.RawMessage, error) {
	o := oslo.CallOptions{Timeout: c.callTimeout, Context: rctx.JSON()}
	if long {
		o.Timeout, o.MonitorTimeout = c.longTimeout, c.callTimeout
	}
	return c.rpc.Call(ctx, computeTarget(host), method, args, o)
}

func (c Computes) cast(ctx context.Context, rctx Context, host, method string, args map[string]any) error {
	return c.rpc.Cast(ctx, computeTarget(host), method, args, oslo.CallOptions{Context: rctx.JSON()})
}

// objArg decodes a named object argument; a missing one is a malformed call.
func objArg(r *oslo.Request, name string) (*Object, error) {
	o := &Object{}
	ok, err := r.Arg(name, o)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.Method, err)
	}
	if !ok {
		return nil, fmt.Errorf("%s: %w: argument %q missing", r.Method, errdefs.ErrInvalidArgument, name)
	}
	return o, nil
}

// instanceArg decodes the "instance" argument and its canonical uuid.
func instanceArg(r *oslo.Request) (*Object, string, error) {
	inst, err := objArg(r, "instance")
	if err != nil {
		return nil, "", err
	}
	uuid, err := UUID(inst, "uuid")
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", r.Method, err)
	}
	return inst, uuid, nil
}

// boolArg decodes an optional boolean argument.
func boolArg(r *oslo.Request, name string) (v, present bool, err error) {
	present, err = r.Arg(name, &v)
	if err != nil {
		return false, false, fmt.Errorf("%s: %w", r.Method, err)
	}
	return v, present, nil
}

func requestContext(r *oslo.Request) Context { return Context(r.Context).Sanitized() }

// callContext is the context the calls made for m carry: the request's
// own with its token while ferryd holds it in memory (m.Credentials; a
// stock destination nova-compute fetches the instance's images from
// Glance with it, and fails without), the journalled one otherwise.
func callContext(m migration.Migration, st *State) Context {
	var c Context
	if len(m.Credentials) > 0 && json.Unmarshal(m.Credentials, &c) == nil && len(c) > 0 {
		return c
	}
	return st.Context
}

// isPreCheck tells a MigrationPreCheckError answer.
func isPreCheck(err error) bool {
	f, ok := errors.AsType[*oslo.Failure](err)
	return ok && f.Class == "MigrationPreCheckError"
}

// isUnexpectedTaskState tells Nova's answer to a save whose
// expected_task_state no longer holds.
func isUnexpectedTaskState(err error) bool {
	f, ok := errors.AsType[*oslo.Failure](err)
	return ok && f.Class == "UnexpectedTaskStateError"
}
