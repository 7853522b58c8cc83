package nova

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

// Libvirt is the part of a libvirt connection the endpoints use.
type Libvirt interface {
	DomainXML(ctx context.Context, name string, inactive bool) (string, error)
	DomainState(ctx context.Context, name string) (virt.DomainState, error)
	CompareCPU(ctx context.Context, cpuXML, virtType string) (virt.CPUFit, error)
	Control(ctx context.Context, dom string, c virt.Control) error
	ReadDisk(ctx context.Context, dom, target string, w io.Writer, max int64) (int64, error)
	Close() error
}

// Allocations settles a live migration's Placement allocations, as
// nova-compute does on the source: released when the guest moved, given back
// to the instance when it did not (pkg/openstack).
type Allocations interface {
	ReleaseMigration(ctx context.Context, migration string) error
	RevertMigration(ctx context.Context, migration, instance string) error
}

// Engine is the part of migration.Manager the endpoints use.
type Engine interface {
	Start(ctx context.Context, req migration.Request) (migration.Migration, error)
	Abort(ctx context.Context, id string) error
	ForceComplete(ctx context.Context, id string) error
	List() []migration.Migration
}

// Peer is what this host knows about another compute host.
type Peer struct {
	Management string // libvirt control address; default the host name
	TLSName    string // name in its certificate; default the host name
	LibvirtURI string // how ferry reaches its libvirtd to verify outcomes
}

// Options configure the compute endpoints (native mode).
type Options struct {
	Host             string
	InstancesPath    string
	ImageCache       string // Nova's image cache, where backing files live; default InstancesPath/_base
	InboundAddr      string // live_migration_inbound_addr: target_connect_addr in pre_live_migration
	Peers            map[string]Peer
	Scheme           string // libvirt transport to peers: tcp, tls
	NativeTLS        bool
	Bandwidth        uint64 // MiB/s
	Parallel         int
	Policy           migration.Policy // budgets and permits
	CompletionPerGiB time.Duration    // live_migration_completion_timeout; 0 = none
	MaxInbound       int
	InboundHold      time.Duration
	CallTimeout      time.Duration // rpc_response_timeout
	LongTimeout      time.Duration // long_rpc_timeout
	Log              *logrus.Entry
	// Placement settles allocations at the end of each migration; nil leaves
	// them to an operator (ferryd warns at start).
	Placement Allocations
	// SettleRetry is the first pause between attempts to reach Placement
	// (doubling, three attempts); default 2s.
	SettleRetry time.Duration
}

// Compute serves Nova's live-migration RPCs for one host, both roles. It
// implements migration.Hooks for the migrations it starts.
type Compute struct {
	o         Options
	local     func(ctx context.Context) (Libvirt, error)
	dial      func(ctx context.Context, uri string) (Libvirt, error)
	rpc       Caller
	cond      *Conductor
	engine    Engine
	inbound   *inbound
	mu        sync.Mutex
	synced    map[string]bool // migrations whose status was read back after a restart
	novaState map[string]*novaState
}

// novaState is a migration's Nova objects as the last save left them.
type novaState struct {
	Instance    *Object `json:"instance"`
	Migration   *Object `json:"migration"`
	MigrateData *Object `json:"migrate_data"`
	BlockMig    any     `json:"block_migration"`
	Context     Context `json:"context"`
	NovaID      int64   `json:"nova_id"`
	Disk        *string `json:"disk"`
	// FlatDisk describes the same disks without their backing files: sent
	// when the destination cannot pre-create the overlays Disk asks for.
	FlatDisk *string `json:"flat_disk,omitempty"`
	// CopyWhy says why the copy is not incremental ("" when it may be).
	CopyWhy string `json:"copy_why,omitempty"`
}

// NewCompute wires the endpoints. local opens this host's libvirt; dial a
// peer's (by URI).
func NewCompute(o Options, local func(ctx context.Context) (Libvirt, error), dial func(ctx context.Context, uri string) (Libvirt, error),
	rpc Caller) *Compute {
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = 60 * time.Second
	}
	if o.LongTimeout == 0 {
		o.LongTimeout = 1800 * time.Second
	}
	if o.MaxInbound <= 0 {
		o.MaxInbound = 2
	}
	if o.InboundHold <= 0 {
		o.InboundHold = 5 * time.Minute
	}
	c := &Compute{o: o, local: local, dial: dial, rpc: rpc, cond: NewConductor(rpc),
		inbound: &inbound{max: o.MaxInbound, hold: o.InboundHold, slots: map[string]slot{}},
		synced:  map[string]bool{}, novaState: map[string]*novaState{}}
	c.cond.Timeout = o.CallTimeout
	return c
}

// SetEngine attaches the migration engine (built with c as its Hooks).
func (c *Compute) SetEngine(e Engine) { c.engine = e }

// Handler returns the dispatcher for the compute topic: RPC 6.0–6.4, the
// 5.x forms, and baseapi ping.
func (c *Compute) Handler() oslo.Handler {
	h := func(f func(context.Context, *oslo.Request) (any, error)) oslo.Handler { return oslo.HandlerFunc(f) }
	methods := map[string]oslo.Handler{
		"check_can_live_migrate_destination":     h(c.checkDestination),
		"check_can_live_migrate_source":          h(c.checkSource),
		"pre_live_migration":                     h(c.preLiveMigration),
		"live_migration":                         h(c.liveMigration),
		"post_live_migration_at_destination":     h(c.postAtDestination),
		"rollback_live_migration_at_destination": h(c.rollbackAtDestination),
		"remove_volume_connection":               h(c.removeVolumeConnection),
		"drop_move_claim_at_destination":         h(c.dropMoveClaim),
		"live_migration_force_complete":          h(c.forceComplete),
		"live_migration_abort":                   h(c.abort),
	}
	return &oslo.Dispatcher{Endpoints: []oslo.Endpoint{
		{Version: "6.4", Methods: methods},
		{Namespace: "baseapi", Version: "1.1", Methods: map[string]oslo.Handler{
			"ping": h(func(_ context.Context, r *oslo.Request) (any, error) {
				return map[string]any{"service": "compute", "arg": r.Args["arg"]}, nil
			}),
		}},
		{Version: "5.13", Methods: methods},
	}}
}

// args decodes the named object arguments; a missing one is a malformed call.
func objArg(r *oslo.Request, name string) (*Object, error) {
	o := &Object{}
	ok, err := r.Arg(name, o)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s: %w: argument %q missing", r.Method, errdefs.ErrInvalidArgument, name)
	}
	return o, nil
}

func requestContext(r *oslo.Request) Context { return Context(r.Context) }

func (c *Compute) computeTarget(host string) oslo.Target {
	return oslo.Target{Topic: "compute", Server: host, Version: "6.0"}
}

// callCompute calls another compute host with Nova's long-call timeouts.
func (c *Compute) callCompute(ctx context.Context, rctx Context, host, method string, args map[string]any, long bool) (json.RawMessage, error) {
	o := oslo.CallOptions{Timeout: c.o.CallTimeout, Context: rctx.JSON()}
	if long {
		o.Timeout, o.MonitorTimeout = c.o.LongTimeout, c.o.CallTimeout
	}
	return c.rpc.Call(ctx, c.computeTarget(host), method, args, o)
}

// peerURI is how ferry itself reaches a peer's libvirtd.
func (c *Compute) peerURI(host string) string {
	p := c.o.Peers[host]
	if p.LibvirtURI != "" {
		return p.LibvirtURI
	}
	mgmt := p.Management
	if mgmt == "" {
		mgmt = host
	}
	return fmt.Sprintf("qemu+%s://%s/system", c.o.Scheme, mgmt)
}

// inbound counts migrations coming to this host: a pre-check reserves a
// slot that lapses unless pre_live_migration takes it.
type inbound struct {
	mu    sync.Mutex
	max   int
	hold  time.Duration
	slots map[string]slot // by instance uuid
}

type slot struct {
	expires time.Time // zero once taken
}

func (in *inbound) reserve(id string) (int, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	n := 0
	for k, s := range in.slots {
		if !s.expires.IsZero() && time.Now().After(s.expires) {
			delete(in.slots, k)
			continue
		}
		if k != id {
			n++
		}
	}
	if n >= in.max {
		return n, false
	}
	in.slots[id] = slot{expires: time.Now().Add(in.hold)}
	return n + 1, true
}

func (in *inbound) take(id string) (int, bool) {
	n, ok := in.reserve(id)
	if ok {
		in.mu.Lock()
		in.slots[id] = slot{}
		in.mu.Unlock()
	}
	return n, ok
}

func (in *inbound) release(id string) {
	in.mu.Lock()
	delete(in.slots, id)
	in.mu.Unlock()
}
