package status

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/hostnet"
)

// Planner makes the dry run of a live migration of one of this host's
// guests: ferryd's wiring, with the local libvirt and the configuration.
// It changes nothing and dials no other host. instance is a canonical
// uuid, dest a checked host name ("" when the scheduler would choose);
// ErrNotFound: no such guest here; ErrInvalidArgument: a destination the
// planner refuses.
type Planner interface {
	Plan(ctx context.Context, r PlanRequest) (Plan, error)
}

// PlanRequest is what a plan is asked for.
type PlanRequest struct {
	Instance string        // a canonical uuid
	Dest     string        // a checked host name; "" when the scheduler would choose
	Sample   time.Duration // how long the dirty rate is measured
	// BandwidthBps is the link's bandwidth as the operator knows it; 0: the
	// configured cap, else the newest bandwidth this ferryd measured.
	BandwidthBps uint64
}

// Plan is GET /v1/plan: what a live migration would do, and the physics'
// verdict. Fields are only ever added. Durations are seconds, rates
// bytes per second.
type Plan struct {
	InstanceUUID string `json:"instance_uuid"`
	Source       string `json:"source"`
	Dest         string `json:"dest,omitempty"`
	// DestNote says how the destination is known (a configured peer, or
	// not: Nova's records are checked when the migration starts).
	DestNote string      `json:"dest_note,omitempty"`
	Disks    []PlanDisk  `json:"disks"`
	Copy     string      `json:"copy"` // none, full or incremental (incremental: if the destination has the bases)
	CopyNote string      `json:"copy_note,omitempty"`
	Network  PlanNetwork `json:"network"`
	Memory   PlanMemory  `json:"memory"`
	// BandwidthBps is the bandwidth the verdict assumes; BandwidthSource
	// says where it comes from: configured (live_migration_bandwidth),
	// measured (the newest migration this ferryd recorded), or unknown.
	BandwidthBps    uint64      `json:"bandwidth_bps"`
	BandwidthSource string      `json:"bandwidth_source"`
	Verdict         PlanVerdict `json:"verdict"`
	// SourceSlots is how many of its outbound jobs this ferryd runs at
	// once (max_concurrent_live_migrations); the rest wait their turn, so
	// with 1 the link is never shared.
	SourceSlots int `json:"max_concurrent_live_migrations,omitempty"`
}

// PlanDisk is one disk of the guest.
type PlanDisk struct {
	Target string `json:"target"`
	Source string `json:"source,omitempty"`
	Copy   string `json:"copy"` // full, incremental, or skip
	Note   string `json:"note,omitempty"`
	// Bytes is what the mirror would copy: the allocated bytes of the
	// image (its top layer, incremental).
	Bytes   uint64 `json:"bytes,omitempty"`
	Backing string `json:"backing,omitempty"`
}

// PlanNetwork is where the streams would go.
type PlanNetwork struct {
	ControlURI     string `json:"control_uri,omitempty"`
	MigrationURI   string `json:"migration_uri,omitempty"`
	DisksURI       string `json:"disks_uri,omitempty"`
	TLS            bool   `json:"tls"`
	TLSDestination string `json:"tls_destination,omitempty"`
	Note           string `json:"note,omitempty"`
}

// PlanMemory is the guest's memory as measured for the plan.
type PlanMemory struct {
	RAMBytes      uint64 `json:"ram_bytes"`
	ResidentBytes uint64 `json:"resident_bytes,omitempty"` // QEMU's whole resident size (balloon.rss)
	// GuestResidentBytes is the resident part of the guest's RAM (its
	// QEMU's mapping of it): what the first pass sends; 0 when it could not
	// be read, and then the first pass is counted from min(RAM, resident).
	GuestResidentBytes uint64 `json:"guest_resident_bytes,omitempty"`
	// FirstPassBytes is what the verdict counts the first pass as.
	FirstPassBytes uint64  `json:"first_pass_bytes"`
	DirtyBps       uint64  `json:"dirty_bps"`
	SampleSeconds  float64 `json:"sample_seconds"`
	Mode           string  `json:"mode,omitempty"`
}

// PlanVerdict is migration.Predict's answer.
type PlanVerdict struct {
	Known              bool    `json:"known"` // false: no bandwidth to predict with
	Converges          bool    `json:"converges"`
	Verdict            string  `json:"verdict,omitempty"`
	Lever              string  `json:"lever,omitempty"`
	AutoConverge       bool    `json:"auto_converge,omitempty"`
	TotalSeconds       float64 `json:"total_seconds"`
	DiskSeconds        float64 `json:"disk_seconds,omitempty"`
	DowntimeSeconds    float64 `json:"downtime_seconds"`
	MaxDowntimeSeconds float64 `json:"max_downtime_seconds,omitempty"`
	Passes             int     `json:"passes,omitempty"`
	FloorBytes         uint64  `json:"floor_bytes,omitempty"`
	Reason             string  `json:"reason"`
}

// Sample bounds: QEMU measures 1 to 60 s; the reply must come within the
// server's write timeout.
const (
	DefaultSample = 5 * time.Second
	MaxSample     = 30 * time.Second
)

func (s *Server) plan(w http.ResponseWriter, r *http.Request) {
	if s.o.Planner == nil {
		writeError(w, http.StatusNotImplemented, "this ferryd does not plan migrations")
		return
	}
	q := r.URL.Query()
	inst, dest := q.Get("instance"), q.Get("dest")
	if u, err := uuid.Parse(inst); err != nil || u.String() != inst {
		writeError(w, http.StatusBadRequest, "instance must be a canonical lower-case uuid")
		return
	}
	if dest != "" && hostnet.CheckHost(dest) != nil {
		writeError(w, http.StatusBadRequest, "dest must be a host name")
		return
	}
	sample := DefaultSample
	if v := q.Get("sample"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > MaxSample {
			writeError(w, http.StatusBadRequest, "sample must be a duration from 1s to "+MaxSample.String())
			return
		}
		sample = d
	}
	var bw uint64
	if v := q.Get("bandwidth_mibs"); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 || n > 1<<20 {
			writeError(w, http.StatusBadRequest, "bandwidth_mibs must be a whole number of MiB/s from 1")
			return
		}
		bw = n << 20
	}
	p, err := s.o.Planner.Plan(r.Context(), PlanRequest{Instance: inst, Dest: dest, Sample: sample, BandwidthBps: bw})
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		writeError(w, http.StatusNotFound, "no such instance on this host")
	case errors.Is(err, errdefs.ErrInvalidArgument):
		writeError(w, http.StatusBadRequest, firstLine([]byte(err.Error())))
	case errors.Is(err, errdefs.ErrFailedPrecondition):
		writeError(w, http.StatusConflict, firstLine([]byte(err.Error())))
	case err != nil:
		s.o.Log.WithError(err).WithField("instance_uuid", inst).Warn("status API: plan failed")
		writeError(w, http.StatusServiceUnavailable, "the plan failed: "+firstLine([]byte(err.Error())))
	default:
		writeJSON(w, http.StatusOK, p)
	}
}
