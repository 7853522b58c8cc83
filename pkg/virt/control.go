package virt

import (
	"context"
	"fmt"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Op is a run-time lever on a migration job (or on its guest).
type Op int

const (
	// OpSetDowntime sets the job's max downtime to Control.Downtime.
	OpSetDowntime Op = iota + 1
	// OpStartPostCopy switches a job started with PostCopy to post-copy.
	OpStartPostCopy
	// OpAbort aborts the job.
	OpAbort
	// OpSuspend pauses the guest's vCPUs (the job then finishes as stop-and-copy).
	OpSuspend
	// OpResume resumes the guest's vCPUs.
	OpResume
	// OpUndefine removes the domain's persistent definition.
	OpUndefine
	// OpPostcopyPause breaks a stalled post-copy stream on purpose, so that
	// the job enters PAUSED_POSTCOPY_FAILED and can be resumed.
	OpPostcopyPause
)

func (o Op) String() string {
	switch o {
	case OpSetDowntime:
		return "set-max-downtime"
	case OpStartPostCopy:
		return "start-post-copy"
	case OpAbort:
		return "abort"
	case OpSuspend:
		return "suspend"
	case OpResume:
		return "resume"
	case OpUndefine:
		return "undefine"
	case OpPostcopyPause:
		return "post-copy-pause"
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// Control is one run-time action.
type Control struct {
	Op       Op
	Downtime time.Duration // OpSetDowntime
}

// Control applies a run-time action to the named domain.
func (c *Conn) Control(ctx context.Context, name string, ctl Control) error {
	d, err := c.lookup(ctx, name)
	if err != nil {
		return err
	}
	var f func() error
	switch ctl.Op {
	case OpSetDowntime:
		if ctl.Downtime <= 0 {
			return fmt.Errorf("%s %s: %w: downtime %v", ctl.Op, name, errdefs.ErrInvalidArgument, ctl.Downtime)
		}
		f = func() error { return c.l.DomainMigrateSetMaxDowntime(d, uint64(ctl.Downtime.Milliseconds()), 0) }
	case OpStartPostCopy:
		f = func() error { return c.l.DomainMigrateStartPostCopy(d, 0) }
	case OpAbort:
		f = func() error { return c.l.DomainAbortJob(d) }
	case OpPostcopyPause:
		f = func() error { return c.l.DomainAbortJobFlags(d, uint32(libvirt.DomainAbortJobPostcopy)) }
	case OpSuspend:
		f = func() error { return c.l.DomainSuspend(d) }
	case OpResume:
		f = func() error { return c.l.DomainResume(d) }
	case OpUndefine:
		f = func() error { return c.l.DomainUndefineFlags(d, libvirt.DomainUndefineKeepNvram) }
	default:
		return fmt.Errorf("control %s: %w: unknown op %d", name, errdefs.ErrInvalidArgument, ctl.Op)
	}
	_, err = do(c, ctx, c.timeouts.Control, ctl.Op.String(), fmt.Sprintf("%s %s", ctl.Op, name), func() (struct{}, error) {
		return struct{}{}, f()
	})
	return err
}

// CPUFit is how a guest CPU definition compares with this host's CPU.
type CPUFit int

// CPU comparison results.
const (
	CPUIncompatible CPUFit = iota
	CPUIdentical
	CPUSuperset
)

// CompareCPU compares a <cpu> definition (from the guest's domain XML or
// Nova's cpu_info) with what this host's hypervisor can run.
func (c *Conn) CompareCPU(ctx context.Context, cpuXML, virtType string) (CPUFit, error) {
	r, err := do(c, ctx, c.timeouts.Query, "compare-cpu", "compare cpu", func() (int32, error) {
		return c.l.ConnectCompareHypervisorCPU(nil, libvirt.OptString{"x86_64"}, nil, libvirt.OptString{virtType}, cpuXML, 0)
	})
	if err != nil {
		return CPUIncompatible, err
	}
	switch libvirt.CPUCompareResult(r) {
	case libvirt.CPUCompareIdentical:
		return CPUIdentical, nil
	case libvirt.CPUCompareSuperset:
		return CPUSuperset, nil
	}
	return CPUIncompatible, nil
}

// Versions returns the connected libvirt's and QEMU's versions, for the
// capability table.
func (c *Conn) Versions(ctx context.Context) (Versions, error) {
	lib, hv, err := c.Version(ctx)
	return Versions{Libvirt: lib, QEMU: hv}, err
}
