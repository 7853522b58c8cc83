package main

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/status"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/nova"
)

// planner answers the status API's /v1/plan from this host's libvirt, the
// source endpoints' disk rules and the configuration. It dials no other
// host: the destination only names URIs.
type planner struct {
	cfg    config.Config
	policy migration.Policy
	source *nova.Source
	dial   func(ctx context.Context) (*virt.Conn, error)
	engine interface{ List() []migration.Migration }
}

var _ status.Planner = (*planner)(nil)

func (p *planner) Plan(ctx context.Context, r status.PlanRequest) (status.Plan, error) {
	inst, dest, sample := r.Instance, r.Dest, r.Sample
	out := status.Plan{InstanceUUID: inst, Source: p.cfg.Host, SourceSlots: p.cfg.Migration.MaxConcurrent}
	dest, out.DestNote = p.destination(dest)
	if dest == p.cfg.Host {
		return out, fmt.Errorf("plan: %w: the destination %s is this host", errdefs.ErrInvalidArgument, dest)
	}
	out.Dest = dest
	dp, err := p.source.PlanDisks(ctx, inst)
	if err != nil {
		return out, err
	}
	diskBytes := p.disks(&out, dp, dest)
	conn, err := p.dial(ctx)
	if err != nil {
		return out, err
	}
	defer conn.Close()
	dr, err := conn.DirtyRate(ctx, inst, sample)
	if err != nil {
		return out, err
	}
	out.Memory = status.PlanMemory{RAMBytes: dp.Guest.Memory, ResidentBytes: dr.RSS, DirtyBps: dr.Bps, SampleSeconds: dr.Period.Seconds(), Mode: dr.Mode}
	ram := dp.Guest.Memory
	if g, err := virt.ResidentRAM("/proc", inst, dp.Guest.Memory); err == nil {
		out.Memory.GuestResidentBytes, ram = g, g
	} else if dr.RSS > 0 && (ram == 0 || dr.RSS < ram) {
		// QEMU is not visible from here (another PID namespace): its whole
		// resident size, an upper bound.
		ram = dr.RSS
	}
	out.Memory.FirstPassBytes = ram
	out.Network = p.network(dest)
	out.BandwidthBps, out.BandwidthSource = p.bandwidth(r.BandwidthBps)
	pr := migration.Predict(p.policy, ram, diskBytes, dr.Bps, out.BandwidthBps)
	out.Verdict = status.PlanVerdict{Known: pr.Known, Converges: pr.Converges, Verdict: pr.Verdict, AutoConverge: pr.AutoConverge,
		TotalSeconds: pr.Total.Seconds(), DiskSeconds: pr.DiskTime.Seconds(), DowntimeSeconds: pr.Downtime.Seconds(),
		MaxDowntimeSeconds: pr.MaxDowntime.Seconds(), Passes: pr.Passes, FloorBytes: pr.Floor, Reason: pr.Reason}
	if pr.Known {
		out.Verdict.Lever = pr.Lever.String()
	}
	return out, nil
}

// destination is the host asked for, else the only configured peer.
func (p *planner) destination(dest string) (string, string) {
	if dest == "" {
		if len(p.cfg.Peers) != 1 {
			return "", "no destination given: the scheduler chooses one"
		}
		for h := range p.cfg.Peers {
			dest = h
		}
	}
	if _, ok := p.cfg.Peers[dest]; ok {
		return dest, "a configured peer"
	}
	return dest, "not a configured peer: a migration there is checked against Nova's records when it starts"
}

// disks fills the disk lines and returns the bytes the mirror would copy.
func (p *planner) disks(out *status.Plan, dp nova.DiskPlan, dest string) uint64 {
	var total uint64
	out.Copy, out.Disks = "none", []status.PlanDisk{}
	for _, d := range dp.Disks {
		pd := status.PlanDisk{Target: d.Target, Source: d.Source, Copy: "skip", Note: d.Reason, Backing: d.Image.Backing}
		if d.Copied {
			pd.Copy, pd.Bytes = "full", uint64(max(d.Image.ActualSize, 0))
			switch {
			case dp.Incremental && d.Image.Backing != "":
				pd.Copy = "incremental"
				pd.Note = fmt.Sprintf("incremental if %s has base %s, else full", orScheduler(dest), d.Image.Backing)
			case d.Image.Backing != "":
				pd.Bytes = uint64(max(d.Image.VirtualSize, 0)) // the whole chain, at most its virtual size
				pd.Note = "full: " + dp.Why
			default:
				pd.Note = "full: a flat image"
			}
			pd.Note += "; unless the instances path is shared with the destination"
			total += pd.Bytes
		}
		out.Disks = append(out.Disks, pd)
	}
	switch {
	case dp.Incremental:
		out.Copy, out.CopyNote = "incremental", fmt.Sprintf("incremental if %s has every base in its image cache, else full", orScheduler(dest))
	case slices.ContainsFunc(dp.Disks, func(d nova.PlannedDisk) bool { return d.Copied }):
		out.Copy, out.CopyNote = "full", dp.Why
	}
	sort.SliceStable(out.Disks, func(i, j int) bool { return out.Disks[i].Target < out.Disks[j].Target })
	return total
}

func orScheduler(dest string) string {
	if dest == "" {
		return "the destination"
	}
	return dest
}

// network is where the streams would go; the migration address is the
// destination's to report (pre_live_migration), so the URIs name its
// management address until then.
func (p *planner) network(dest string) status.PlanNetwork {
	m := p.cfg.Migration
	n := status.PlanNetwork{TLS: m.NativeTLS}
	if dest == "" {
		n.Note = "no destination: the URIs follow the scheduler's choice"
		return n
	}
	peer := p.cfg.Peers[dest]
	u, err := hostnet.For(hostnet.Dest{Host: dest, Mgmt: peer.Management, TLSName: peer.TLSName, Scheme: m.Scheme}, m.NativeTLS)
	if err != nil {
		n.Note = err.Error()
		return n
	}
	n.ControlURI, n.MigrationURI, n.DisksURI, n.TLSDestination = u.Control, u.Migrate, u.Disks, u.TLSDestination
	n.Note = "memory and disks go to the migration address " + dest + " reports when prepared (its live_migration_inbound_addr); shown: its management address"
	return n
}

// bandwidth is the one the operator gave, else the configured cap, else
// the newest bandwidth this ferryd measured, else unknown.
func (p *planner) bandwidth(given uint64) (uint64, string) {
	if given > 0 {
		return given, "given"
	}
	if bw := p.cfg.Migration.Bandwidth; bw > 0 {
		return uint64(bw) << 20, "configured"
	}
	var best migration.Migration
	for _, m := range p.engine.List() {
		if m.Record.Bandwidth > 0 && m.Record.Ended.After(best.Record.Ended) {
			best = m
		}
	}
	if best.Record.Bandwidth > 0 {
		return uint64(best.Record.Bandwidth), fmt.Sprintf("measured (migration %s, ended %s)", best.ID, best.Record.Ended.UTC().Format(time.RFC3339))
	}
	return 0, "unknown"
}
