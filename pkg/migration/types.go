package migration

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"opendev.org/x/ferry/pkg/virt"
)

// Hypervisor is the part of a libvirt connection the engine drives.
// *virt.Conn implements it; unit tests use virttest.Fake.
type Hypervisor interface {
	// Migrate runs a peer-to-peer live migration and blocks until the job ends.
	Migrate(ctx context.Context, dom string, spec virt.MigrateSpec) error
	JobStats(ctx context.Context, dom string, completed bool) (virt.JobStats, error)
	DomainState(ctx context.Context, dom string) (virt.DomainState, error)
	Control(ctx context.Context, dom string, c virt.Control) error
	Close() error
}

// Dialer opens a Hypervisor connection to a libvirt URI.
type Dialer func(ctx context.Context, uri string) (Hypervisor, error)

// Hooks are the caller's side of a migration (Nova bookkeeping and the
// destination's preparation). Each must be idempotent: after a restart the
// engine may call one again if it cannot know whether it finished.
type Hooks interface {
	// Prepare readies the destination before the libvirt job starts. It may
	// change m.Spec (e.g. the destination's migration address) and m.Extra;
	// the engine journals both when it returns nil.
	Prepare(ctx context.Context, m *Migration) error
	// Rollback undoes Prepare after a failure; the guest runs on the source.
	Rollback(ctx context.Context, m *Migration, cause string)
	// Finish completes the bookkeeping after the guest moved.
	Finish(ctx context.Context, m *Migration) error
	// Phase reports a phase change (after it is journalled).
	Phase(ctx context.Context, m *Migration)
	// Progress reports the job's statistics every ProgressInterval.
	Progress(ctx context.Context, m *Migration, js virt.JobStats)
}

// Request is what a migration is started with. It is journalled whole, so
// that a restarted engine can finish it.
type Request struct {
	ID           string           `json:"id"` // Nova's migration uuid
	Domain       string           `json:"domain"`
	InstanceUUID string           `json:"instance_uuid"`
	DestHost     string           `json:"dest_host"`
	DestCheckURI string           `json:"dest_check_uri"` // how ferry reaches the destination's libvirtd to verify an outcome
	Spec         virt.MigrateSpec `json:"spec"`           // URIs, disks and transport; the engine adds the permits' flags
	Policy       Policy           `json:"policy"`
	Extra        json.RawMessage  `json:"extra,omitempty"` // the caller's own data, kept with the journal
}

// Migration is one migration's journalled state.
type Migration struct {
	Request
	Phase          Phase         `json:"phase"`
	Reason         string        `json:"reason,omitempty"`
	Steps          []string      `json:"steps,omitempty"` // named steps done, in order
	AbortRequested bool          `json:"abort_requested,omitempty"`
	PausedByUs     bool          `json:"paused_by_us,omitempty"`
	Downtime       time.Duration `json:"max_downtime,omitempty"` // the max downtime last set on the job
	Detached       bool          `json:"detached,omitempty"`
	CopyNote       string        `json:"copy_note,omitempty"` // how the disks are copied, and why
	Record         Record        `json:"record"`
	Updated        time.Time     `json:"updated"`
}

func (m Migration) done(step string) bool {
	for _, s := range m.Steps {
		if s == step {
			return true
		}
	}
	return false
}

// Record is what a finished migration measured.
type Record struct {
	Started      time.Time      `json:"started"`
	Ended        time.Time      `json:"ended,omitzero"`
	Total        time.Duration  `json:"total"`
	Downtime     time.Duration  `json:"downtime"` // achieved, from the source's completed-job stats
	MemBytes     uint64         `json:"memory_bytes"`
	FirstPass    uint64         `json:"first_pass_bytes"` // the first memory pass: the RAM that had to move
	DiskBytes    uint64         `json:"disk_bytes"`
	Iterations   uint64         `json:"iterations"`
	Bandwidth    float64        `json:"bandwidth_bps"` // B
	Floor        uint64         `json:"floor_bytes"`   // F
	Stalls       int            `json:"stalls"`
	LongestStall time.Duration  `json:"longest_stall"`
	Actions      []ActionRecord `json:"actions,omitempty"`
	Attaches     int            `json:"attaches,omitempty"` // times a restarted engine re-attached
}

// ActionRecord is one action the monitor took.
type ActionRecord struct {
	At       time.Duration `json:"at"` // since the Perform call (or the re-attach) began
	Action   string        `json:"action"`
	Downtime time.Duration `json:"downtime,omitempty"`
	Reason   string        `json:"reason,omitempty"`
}

// Errors callers branch on.
var (
	// ErrDetached is the cause of a runner's context when the engine closes:
	// monitoring stops, the libvirt job goes on.
	ErrDetached = errors.New("engine closed: detached from the migration")
	// ErrUnknownMigration: no migration with that id.
	ErrUnknownMigration = errors.New("no such migration")
)
