package migration

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/virt"
)

// Hypervisor is the part of a libvirt connection the engine drives.
// *virt.Conn implements it; unit tests use a virttest.World's connections.
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

// Destination is the work on the destination host the engine waits for
// (Nova's pre_live_migration). It must be idempotent: after a restart the
// engine may ask again.
type Destination interface {
	// Prepare readies the destination before the libvirt job starts and says
	// what it decided: the destination's migration address, how the disks
	// are copied, and the caller's records as they are now.
	Prepare(ctx context.Context, m Migration) (Preparation, error)
}

// Records is the caller's bookkeeping (Nova's records, Placement). The engine
// never waits on it: a phase change journals the reports it owes, in order,
// and a delivery loop beside the monitor hands them to Deliver until each is
// delivered, across restarts.
type Records interface {
	// Reports lists the reports a move from one phase to another owes, in
	// delivery order; from is "" for a migration refused before it was
	// queued. It is a pure function of m.
	Reports(m Migration, from, to Phase) []string
	// Deliver delivers one report. It returns nil when the report is
	// delivered, also when a re-read shows it was applied before (a re-send
	// after a crash); an error wrapping ErrSkipped when it must not be sent
	// (the records moved on without it, or the answer it needs stays
	// unknown: files are kept), and any other error to be retried.
	Deliver(ctx context.Context, m Migration, r Report) error
	// Progress saves the job's latest statistics; a newer sample replaces one
	// not yet saved.
	Progress(ctx context.Context, m Migration, js virt.JobStats) error
}

// Ender is implemented by Records whose other writers may end a migration
// themselves: in companion mode nova-compute's restart recovery
// (_reset_live_migration) aborts the job and sets Nova's records on its
// own. The engine asks when a job it did not abort was aborted.
type Ender interface {
	// EndedElsewhere waits, bounded, for the caller's records to show
	// whether someone else ended the migration: then it returns their
	// outcome as a phase, with a reason, and ended true; the engine adopts
	// it (Migration.External) and owes the records nothing more. jobErr
	// is how the job ended: an abort (errdefs.ErrAborted) is waited for
	// longer than another failure, which is also how an abort by another
	// client can show (the peer connection cut: "Broken pipe").
	EndedElsewhere(ctx context.Context, m Migration, jobErr error) (phase Phase, reason string, ended bool)
}

// Commander is implemented by Records that owe reports for an operator's
// command itself, besides those of the phase changes it causes: in
// companion mode the notifications nova-compute sends around its abort and
// force-complete casts. The engine journals them as soon as the command
// took effect, so they come before the reports of the outcome.
type Commander interface {
	// CommandReports lists the reports a command ("abort",
	// "force-complete") that took effect owes, in delivery order.
	CommandReports(m Migration, command string) []string
}

// ErrSkipped: the report is not sent and not retried (another service set
// the records already, or what it would do is unsafe to do); the journal
// says why.
var ErrSkipped = errors.New("skipped")

// Request is what a migration is started with. It is journalled whole, so
// that a restarted engine can finish it.
type Request struct {
	ID           string `json:"id"`            // Nova's migration uuid
	InstanceUUID string `json:"instance_uuid"` // canonical: also the libvirt domain's uuid
	// RequestID and GlobalRequestID are the ids of the request that
	// started the migration (Nova's request_id and global_request_id),
	// carried by every log line about it; journalled, so a restarted
	// engine's lines carry them too.
	RequestID       string       `json:"request_id,omitempty"`
	GlobalRequestID string       `json:"global_request_id,omitempty"`
	Dest            hostnet.Dest `json:"dest"` // the destination host and how to reach it
	// DestCheckURI is how ferry itself reaches the destination's libvirtd to
	// verify an outcome (configured, or the control URI).
	DestCheckURI string `json:"dest_check_uri"`
	Job          Job    `json:"job"`
	Policy       Policy `json:"policy"`
	// State is the caller's records (Nova's objects): the one copy, kept with
	// the journal and handed to every Prepare and Deliver.
	State json.RawMessage `json:"state,omitempty"`
	// Credentials are the caller's secrets for this request (Nova's request
	// context with its token), for the calls made on its behalf: in memory
	// only, never journalled, gone after a restart.
	Credentials json.RawMessage `json:"-"`
}

// Job is what the caller decided about the libvirt job before the
// destination is prepared; the engine's JobSpec turns it, with the
// Preparation and the policy's permits, into the libvirt call.
type Job struct {
	Disks     []string `json:"disks,omitempty"`           // the copy set (target devs); empty: no disk is copied
	Bandwidth uint64   `json:"bandwidth_mibps,omitempty"` // 0 = unlimited
	NativeTLS bool     `json:"native_tls,omitempty"`      // QEMU TLS for the data streams
	Parallel  int      `json:"parallel,omitempty"`        // multifd connections; 0 or 1 = one stream
	// Compression names libvirt's memory compression methods (xbzrle, mt;
	// zlib or zstd over parallel connections); the capability table refuses
	// a method the connected stack lacks.
	Compression []string `json:"compression,omitempty"`
}

// Preparation is what preparing the destination decided.
type Preparation struct {
	MigrationAddr string        `json:"migration_addr,omitempty"` // the destination's migration address; "" = its libvirtd chooses
	Copy          virt.DiskCopy `json:"copy"`                     // how the copy set is copied
	CopyNote      string        `json:"copy_note,omitempty"`      // and why, for operators
	// DestXML is the domain as the destination is to run and define it;
	// "" keeps the source's (native mode: the hosts are alike).
	DestXML string          `json:"dest_xml,omitempty"`
	State   json.RawMessage `json:"-"` // the caller's records after preparing; journalled as Request.State
}

// Migration is one migration's journalled state.
type Migration struct {
	Request
	Version        int           `json:"version"` // journal format; see journal.go
	Phase          Phase         `json:"phase"`
	Reason         string        `json:"reason,omitempty"`
	Steps          []string      `json:"steps,omitempty"` // named steps done, in order
	AbortRequested bool          `json:"abort_requested,omitempty"`
	PausedByUs     bool          `json:"paused_by_us,omitempty"`
	Downtime       time.Duration `json:"max_downtime,omitempty"` // the max downtime last set on the job
	Detached       bool          `json:"detached,omitempty"`
	// External: the caller's records ended the migration (Ender); its
	// phase is theirs, and nothing is reported back but ferry's own.
	External bool         `json:"external,omitempty"`
	Prep     *Preparation `json:"preparation,omitempty"` // once the destination is prepared
	Reports  []Report     `json:"reports,omitempty"`     // what the caller's records owe, in order
	Record   Record       `json:"record"`
	Updated  time.Time    `json:"updated"`
}

func (m Migration) done(step string) bool {
	for _, s := range m.Steps {
		if s == step {
			return true
		}
	}
	return false
}

// Pending counts the reports not yet delivered.
func (m Migration) Pending() int {
	n := 0
	for _, r := range m.Reports {
		if !r.Delivered {
			n++
		}
	}
	return n
}

// Report is one thing the caller's records must learn.
type Report struct {
	Seq       int       `json:"seq"`
	Name      string    `json:"name"`             // the caller's, from Records.Reports
	Phase     Phase     `json:"phase"`            // the phase that owed it
	Reason    string    `json:"reason,omitempty"` // that phase's reason
	Delivered bool      `json:"delivered,omitempty"`
	Outcome   string    `json:"outcome,omitempty"` // "delivered", or why it was not sent
	Attempts  int       `json:"attempts,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	At        time.Time `json:"at,omitzero"` // when it was delivered
	// Owed is when the phase change that owed it happened: a report that
	// stamps its message (a notification) stamps it with this, so every
	// re-send carries the moment of the event.
	Owed time.Time `json:"owed,omitzero"`
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
	SetupTime    time.Duration  `json:"setup_time,omitempty"` // libvirt's setup_time of the completed job
	Actions      []ActionRecord `json:"actions,omitempty"`
	Attaches     int            `json:"attaches,omitempty"` // times a restarted engine re-attached
	// Series is the job's samples, downsampled to at most MaxPoints (of the
	// latest run of the monitor: a re-attach starts a new series).
	Series []Point `json:"series,omitempty"`
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
