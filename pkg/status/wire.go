package status

import (
	"time"

	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

// List is GET /v1/migrations.
type List struct {
	Migrations []Migration `json:"migrations"`
}

// Migration is one migration as the API shows it. Fields are only ever
// added. Durations are seconds.
type Migration struct {
	ID              string    `json:"id"`
	InstanceUUID    string    `json:"instance_uuid"`
	Phase           string    `json:"phase"`
	Role            string    `json:"role"` // source: the engine runs outbound migrations
	Dest            string    `json:"dest"`
	Reason          string    `json:"reason,omitempty"`
	RequestID       string    `json:"request_id,omitempty"`
	GlobalRequestID string    `json:"global_request_id,omitempty"`
	Started         time.Time `json:"started"`
	Ended           time.Time `json:"ended,omitzero"`
	Updated         time.Time `json:"updated"`
	AbortRequested  bool      `json:"abort_requested,omitempty"`
	Detached        bool      `json:"detached,omitempty"`
	ReportsPending  int       `json:"reports_pending"`
	Record          Record    `json:"record"`
	Actions         []Action  `json:"actions"`
	// Progress is the job's latest sample while it runs (running or in
	// post-copy); absent otherwise. The record is filled when it ends.
	Progress *Progress `json:"progress,omitempty"`
	// Job is how the libvirt job runs, once the destination is prepared.
	Job *Job `json:"job,omitempty"`
	// Series is the job's samples once it ended (at most
	// migration.MaxPoints, evenly spaced): the picture of the migration.
	Series []Point `json:"series,omitempty"`
}

// Point is one sample of a migration's series.
type Point struct {
	AtSeconds          float64 `json:"at_seconds"`
	MemoryRemaining    uint64  `json:"memory_remaining_bytes"`
	DiskRemaining      uint64  `json:"disk_remaining_bytes,omitempty"`
	Bps                uint64  `json:"bps"`
	MaxDowntimeSeconds float64 `json:"max_downtime_seconds,omitempty"`
}

// Job is the libvirt job as ferry started it: what is copied and how, and
// over which network.
type Job struct {
	Disks         []string `json:"disks"` // the copy set (target devs); volumes are never in it
	Copy          string   `json:"copy"`  // none, full or incremental
	CopyNote      string   `json:"copy_note,omitempty"`
	MigrationURI  string   `json:"migration_uri,omitempty"` // where memory streams ("" = libvirt's choice)
	DisksURI      string   `json:"disks_uri,omitempty"`     // where the disk mirror goes
	TLS           bool     `json:"tls"`
	PostCopy      bool     `json:"post_copy"`
	AutoConverge  bool     `json:"auto_converge"`
	Parallel      int      `json:"parallel_connections,omitempty"`
	Compression   []string `json:"compression,omitempty"`
	BandwidthMiBs uint64   `json:"bandwidth_mibs,omitempty"` // 0: unlimited
}

func copyName(c virt.DiskCopy) string {
	switch c {
	case virt.CopyFull:
		return "full"
	case virt.CopyIncremental:
		return "incremental"
	}
	return "none"
}

func jobOf(m migration.Migration) *Job {
	if m.Prep == nil {
		return nil
	}
	s, err := migration.JobSpec(m)
	if err != nil {
		return nil
	}
	disks := s.Disks
	if disks == nil {
		disks = []string{}
	}
	return &Job{Disks: disks, Copy: copyName(s.Copy), CopyNote: m.Prep.CopyNote, MigrationURI: s.MigrateURI, DisksURI: s.DisksURI,
		TLS: s.TLS, PostCopy: s.PostCopy, AutoConverge: s.AutoConverge, Parallel: s.Parallel, Compression: s.Compression,
		BandwidthMiBs: s.Bandwidth}
}

// Progress is one job-stats sample of a running job.
type Progress struct {
	SampledAt            time.Time `json:"sampled_at"`
	ElapsedSeconds       float64   `json:"elapsed_seconds"`
	Iteration            uint64    `json:"iteration"`
	MemoryTotalBytes     uint64    `json:"memory_total_bytes"`
	MemoryProcessedBytes uint64    `json:"memory_processed_bytes"`
	MemoryRemainingBytes uint64    `json:"memory_remaining_bytes"`
	MemoryBps            uint64    `json:"memory_bps"`
	DiskTotalBytes       uint64    `json:"disk_total_bytes"`
	DiskProcessedBytes   uint64    `json:"disk_processed_bytes"`
	DiskRemainingBytes   uint64    `json:"disk_remaining_bytes"`
	DiskBps              uint64    `json:"disk_bps"`
	AutoConvergePercent  int       `json:"auto_converge_percent,omitempty"`
	PostcopyRequests     uint64    `json:"postcopy_requests,omitempty"`
}

func progressOf(js virt.JobStats, at time.Time) *Progress {
	return &Progress{SampledAt: at, ElapsedSeconds: js.Elapsed.Seconds(), Iteration: js.MemIteration,
		MemoryTotalBytes: js.MemTotal, MemoryProcessedBytes: js.MemProcessed, MemoryRemainingBytes: js.MemRemaining,
		MemoryBps: js.MemBps, DiskTotalBytes: js.DiskTotal, DiskProcessedBytes: js.DiskProcessed,
		DiskRemainingBytes: js.DiskRemaining, DiskBps: js.DiskBps, AutoConvergePercent: js.AutoConvergePct,
		PostcopyRequests: js.PostcopyReqs}
}

// Record is what the migration measured (the journal's record).
type Record struct {
	TotalSeconds        float64 `json:"total_seconds"`
	DowntimeSeconds     float64 `json:"downtime_seconds"`
	MaxDowntimeSeconds  float64 `json:"max_downtime_seconds,omitempty"` // the max downtime last set on the job
	MemoryBytes         uint64  `json:"memory_bytes"`
	FirstPassBytes      uint64  `json:"first_pass_bytes"`
	DiskBytes           uint64  `json:"disk_bytes"`
	Iterations          uint64  `json:"iterations"`
	BandwidthBps        float64 `json:"bandwidth_bps"`
	FloorBytes          uint64  `json:"floor_bytes"`
	Stalls              int     `json:"stalls"`
	LongestStallSeconds float64 `json:"longest_stall_seconds"`
	Attaches            int     `json:"attaches,omitempty"`
}

// Action is one action the monitor took.
type Action struct {
	AtSeconds       float64 `json:"at_seconds"` // since the job started (or the engine re-attached)
	Action          string  `json:"action"`
	DowntimeSeconds float64 `json:"downtime_seconds,omitempty"`
	Reason          string  `json:"reason,omitempty"`
}

// Wire is a journalled migration as the API shows it (without a running
// job's latest sample, which only the engine holds).
func Wire(m migration.Migration) Migration {
	r := m.Record
	out := Migration{ID: m.ID, InstanceUUID: m.InstanceUUID, Phase: string(m.Phase), Role: "source", Dest: m.Dest.Host,
		Reason: m.Reason, RequestID: m.RequestID, GlobalRequestID: m.GlobalRequestID, Started: r.Started, Ended: r.Ended,
		Updated: m.Updated, AbortRequested: m.AbortRequested, Detached: m.Detached, ReportsPending: m.Pending(),
		Record: Record{TotalSeconds: r.Total.Seconds(), DowntimeSeconds: r.Downtime.Seconds(), MaxDowntimeSeconds: m.Downtime.Seconds(),
			MemoryBytes: r.MemBytes, FirstPassBytes: r.FirstPass, DiskBytes: r.DiskBytes, Iterations: r.Iterations,
			BandwidthBps: r.Bandwidth, FloorBytes: r.Floor, Stalls: r.Stalls, LongestStallSeconds: r.LongestStall.Seconds(),
			Attaches: r.Attaches},
		Actions: make([]Action, 0, len(r.Actions)), Job: jobOf(m)}
	for _, p := range r.Series {
		out.Series = append(out.Series, Point{AtSeconds: p.At.Seconds(), MemoryRemaining: p.MemRemaining, DiskRemaining: p.DiskRemaining,
			Bps: p.Bps, MaxDowntimeSeconds: p.MaxDowntime.Seconds()})
	}
	for _, a := range r.Actions {
		out.Actions = append(out.Actions, Action{AtSeconds: a.At.Seconds(), Action: a.Action, DowntimeSeconds: a.Downtime.Seconds(), Reason: a.Reason})
	}
	return out
}
