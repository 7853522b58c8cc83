package virt

import (
	"context"
	"fmt"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"

	"opendev.org/x/ferry/pkg/errdefs"
)

// DiskCopy says whether and how local disks are copied.
type DiskCopy int

const (
	// CopyNone: no disk is copied (all storage shared or on volumes).
	CopyNone DiskCopy = iota
	// CopyFull: the listed disks are copied whole onto pre-created empty images.
	CopyFull
	// CopyIncremental: only the top layer is copied; the backing file exists on
	// the destination.
	CopyIncremental
)

// MigrateSpec is everything a peer-to-peer live migration is started with.
// Fields left zero are not sent to libvirt.
type MigrateSpec struct {
	DestURI    string   // control connection the source libvirtd opens, e.g. qemu+tcp://mgmt-addr/system
	MigrateURI string   // where QEMU streams RAM, e.g. tcp://migration-addr
	DisksURI   string   // where the NBD disk mirror goes, e.g. tcp://migration-addr
	Disks      []string // target devs to copy (migrate_disks); must be non-empty with Copy != CopyNone
	Copy       DiskCopy
	Bandwidth  uint64 // MiB/s; 0 = unlimited

	PersistDest     bool // define the domain on the destination
	UndefineSource  bool // undefine the source domain once the migration succeeded
	AutoConverge    bool
	AutoConvergeIni int // % initial throttle; 0 = QEMU default
	AutoConvergeInc int // % increment; 0 = QEMU default
	PostCopy        bool
	TLS             bool
	TLSDestination  string   // name in the destination's certificate
	Compression     []string // compression methods (xbzrle, mt, zlib, zstd); the capability table refuses what the stack lacks
	Parallel        int      // multifd connections; 0 or 1 = single stream
	PostcopyResume  bool     // recover a failed post-copy migration (same spec as the original, plus this)
	// DestXML is the domain as the destination runs it (Nova's updated
	// guest XML: its bridges, listen addresses); it is also the persistent
	// definition there, so a later restart does not bring back the
	// source's devices. "" runs the source's definition unchanged.
	DestXML string
}

// Validate refuses specs that libvirt would misread. The one that matters
// most: copying with an empty disk list makes libvirt copy every writable
// disk, Cinder volumes included.
func (s MigrateSpec) Validate() error {
	switch {
	case s.DestURI == "":
		return fmt.Errorf("migrate spec: %w: no destination URI", errdefs.ErrInvalidArgument)
	case s.Copy != CopyNone && len(s.Disks) == 0:
		return fmt.Errorf("migrate spec: %w: disk copy requested with an empty disk list (libvirt would copy every disk, volumes included)", errdefs.ErrInvalidArgument)
	case s.Copy == CopyNone && len(s.Disks) > 0:
		return fmt.Errorf("migrate spec: %w: disks listed without a copy mode", errdefs.ErrInvalidArgument)
	case s.TLSDestination != "" && !s.TLS:
		return fmt.Errorf("migrate spec: %w: tls.destination without TLS", errdefs.ErrInvalidArgument)
	}
	return nil
}

// Flags returns the libvirt migration flags for the spec.
func (s MigrateSpec) Flags() libvirt.DomainMigrateFlags {
	f := libvirt.MigrateLive | libvirt.MigratePeer2peer
	set := func(on bool, flag libvirt.DomainMigrateFlags) {
		if on {
			f |= flag
		}
	}
	set(s.PersistDest, libvirt.MigratePersistDest)
	set(s.UndefineSource, libvirt.MigrateUndefineSource)
	set(s.Copy == CopyFull, libvirt.MigrateNonSharedDisk)
	set(s.Copy == CopyIncremental, libvirt.MigrateNonSharedInc)
	set(s.AutoConverge, libvirt.MigrateAutoConverge)
	set(s.PostCopy, libvirt.MigratePostcopy)
	set(s.TLS, libvirt.MigrateTLS)
	set(len(s.Compression) > 0, libvirt.MigrateCompressed)
	set(s.Parallel > 1, libvirt.MigrateParallel)
	set(s.PostcopyResume, libvirt.MigratePostcopyResume|libvirt.MigratePostcopy)
	return f
}

// Params returns the typed parameters for the spec. Each value has the type
// libvirt's QEMU driver requires; migrate_disks repeats once per disk.
func (s MigrateSpec) Params() []libvirt.TypedParam {
	var p []libvirt.TypedParam
	str := func(k, v string) {
		if v != "" {
			p = append(p, libvirt.TypedParam{Field: k, Value: *libvirt.NewTypedParamValueString(v)})
		}
	}
	integer := func(k string, v int) {
		if v > 0 {
			p = append(p, libvirt.TypedParam{Field: k, Value: *libvirt.NewTypedParamValueInt(int32(v))})
		}
	}
	str(libvirt.MigrateParamURI, s.MigrateURI)
	str(libvirt.MigrateParamDestXML, s.DestXML)
	if s.PersistDest {
		str(libvirt.MigrateParamPersistXML, s.DestXML)
	}
	if s.Copy != CopyNone {
		str(libvirt.MigrateParamDisksURI, s.DisksURI)
		for _, d := range s.Disks {
			str(libvirt.MigrateParamMigrateDisks, d)
		}
	}
	if s.Bandwidth > 0 {
		p = append(p, libvirt.TypedParam{Field: libvirt.MigrateParamBandwidth, Value: *libvirt.NewTypedParamValueUllong(s.Bandwidth)})
	}
	if s.AutoConverge {
		integer(libvirt.MigrateParamAutoConvergeInitial, s.AutoConvergeIni)
		integer(libvirt.MigrateParamAutoConvergeIncrement, s.AutoConvergeInc)
	}
	if s.TLS {
		str(libvirt.MigrateParamTLSDestination, s.TLSDestination)
	}
	for _, m := range s.Compression {
		str(libvirt.MigrateParamCompression, m)
	}
	if s.Parallel > 1 {
		integer(libvirt.MigrateParamParallelConnections, s.Parallel)
	}
	return p
}

// Migrate runs a peer-to-peer live migration of the named domain and blocks
// until libvirt's job ends. It has no timeout: the caller's monitor decides
// when to abort, on another connection. Cancelling ctx stops waiting but does
// not abort the job (the call's goroutine finishes when libvirt answers or the
// connection closes).
func (c *Conn) Migrate(ctx context.Context, name string, s MigrateSpec) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("migrate %s: %w", name, err)
	}
	v, err := c.Versions(ctx)
	if err != nil {
		return err
	}
	if err := CheckCapabilities(v, s); err != nil {
		return fmt.Errorf("migrate %s: %w", name, err)
	}
	d, err := c.lookup(ctx, name)
	if err != nil {
		return err
	}
	_, err = do(c, ctx, noTimeout, "migrate", "migrate "+name, func() ([]byte, error) {
		return c.l.DomainMigratePerform3Params(d, libvirt.OptString{s.DestURI}, s.Params(), nil, s.Flags())
	})
	return err
}

// JobStats is one sample of a domain's migration job, decoded from
// virDomainGetJobStats. Sizes are bytes, rates bytes/s.
type JobStats struct {
	Type            JobType
	Operation       int
	Elapsed         time.Duration
	Downtime        time.Duration // completed jobs: the achieved downtime
	SetupTime       time.Duration
	DataTotal       uint64
	DataProcessed   uint64
	DataRemaining   uint64
	MemTotal        uint64
	MemProcessed    uint64
	MemRemaining    uint64
	MemBps          uint64
	MemDirtyRate    uint64 // pages/s as libvirt reports it (unreliable; never decide on it alone)
	MemIteration    uint64
	MemPageSize     uint64
	PostcopyReqs    uint64
	DiskTotal       uint64
	DiskProcessed   uint64
	DiskRemaining   uint64
	DiskBps         uint64
	AutoConvergePct int
	ErrMsg          string
	// Busy: a libvirt job holds the domain although no migration statistics
	// exist yet (a peer-to-peer migration preparing the destination).
	Busy bool
}

// JobType is libvirt's job type.
type JobType int

// Job types.
const (
	JobNone      = JobType(libvirt.DomainJobNone)
	JobBounded   = JobType(libvirt.DomainJobBounded)
	JobUnbounded = JobType(libvirt.DomainJobUnbounded)
	JobCompleted = JobType(libvirt.DomainJobCompleted)
	JobFailed    = JobType(libvirt.DomainJobFailed)
	JobCancelled = JobType(libvirt.DomainJobCancelled)
)

// JobStats returns the named domain's current job, or with completed=true the
// statistics of its last completed job (kept, so it can be read again).
func (c *Conn) JobStats(ctx context.Context, name string, completed bool) (JobStats, error) {
	d, err := c.lookup(ctx, name)
	if err != nil {
		return JobStats{}, err
	}
	var flags libvirt.DomainGetJobStatsFlags
	if completed {
		flags = libvirt.DomainJobStatsCompleted | libvirt.DomainJobStatsKeepCompleted
	}
	type res struct {
		t int32
		p []libvirt.TypedParam
	}
	r, err := do(c, ctx, c.timeouts.Query, "job-stats", "job stats of "+name, func() (res, error) {
		t, p, err := c.l.DomainGetJobStats(d, flags)
		return res{t, p}, err
	})
	if err != nil {
		if !completed && isCode(err, libvirt.ErrOperationInvalid) { // "domain is not running": no job
			return JobStats{Type: JobNone}, nil
		}
		return JobStats{}, err
	}
	js := decodeJobStats(r.t, r.p)
	if !completed && js.Type == JobNone {
		state, err := do(c, ctx, c.timeouts.Query, "control-info", "control info of "+name, func() (uint32, error) {
			st, _, _, err := c.l.DomainGetControlInfo(d, 0)
			return st, err
		})
		if err != nil {
			return JobStats{}, err
		}
		js.Busy = libvirt.DomainControlState(state) == libvirt.DomainControlJob
	}
	return js, nil
}

func decodeJobStats(typ int32, ps []libvirt.TypedParam) JobStats {
	s := JobStats{Type: JobType(typ)}
	ms := func(v uint64) time.Duration { return time.Duration(v) * time.Millisecond }
	for _, p := range ps {
		if p.Field == libvirt.DomainJobErrmsg {
			if v, ok := p.Value.I.(string); ok {
				s.ErrMsg = v
			}
			continue
		}
		v, ok := asU64(p.Value.I)
		if !ok {
			continue
		}
		switch p.Field {
		case libvirt.DomainJobOperationStr:
			s.Operation = int(v)
		case libvirt.DomainJobTimeElapsed:
			s.Elapsed = ms(v)
		case libvirt.DomainJobDowntime:
			s.Downtime = ms(v)
		case libvirt.DomainJobSetupTime:
			s.SetupTime = ms(v)
		case libvirt.DomainJobDataTotal:
			s.DataTotal = v
		case libvirt.DomainJobDataProcessed:
			s.DataProcessed = v
		case libvirt.DomainJobDataRemaining:
			s.DataRemaining = v
		case libvirt.DomainJobMemoryTotal:
			s.MemTotal = v
		case libvirt.DomainJobMemoryProcessed:
			s.MemProcessed = v
		case libvirt.DomainJobMemoryRemaining:
			s.MemRemaining = v
		case libvirt.DomainJobMemoryBps:
			s.MemBps = v
		case libvirt.DomainJobMemoryDirtyRate:
			s.MemDirtyRate = v
		case libvirt.DomainJobMemoryIteration:
			s.MemIteration = v
		case libvirt.DomainJobMemoryPageSize:
			s.MemPageSize = v
		case libvirt.DomainJobMemoryPostcopyReqs:
			s.PostcopyReqs = v
		case libvirt.DomainJobDiskTotal:
			s.DiskTotal = v
		case libvirt.DomainJobDiskProcessed:
			s.DiskProcessed = v
		case libvirt.DomainJobDiskRemaining:
			s.DiskRemaining = v
		case libvirt.DomainJobDiskBps:
			s.DiskBps = v
		case libvirt.DomainJobAutoConvergeThrottle:
			s.AutoConvergePct = int(v)
		}
	}
	return s
}

// asU64 reads any integer typed-param value (libvirt's int, uint, llong,
// ullong and boolean all arrive as different Go types).
func asU64(v any) (uint64, bool) {
	switch n := v.(type) {
	case int32:
		return uint64(n), n >= 0
	case uint32:
		return uint64(n), true
	case int64:
		return uint64(n), n >= 0
	case uint64:
		return n, true
	}
	return 0, false
}
