package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/virt"
)

// MigrationResult is what a lab migration measured.
type MigrationResult struct {
	From, To      string
	Spec          virt.MigrateSpec
	Skipped       []disks.Skipped
	Stats         virt.JobStats // the source's completed-job statistics
	DiskVirtual   uint64        // virtual size of the copied disk(s)
	Wall          time.Duration // Perform call, start to return
	MgmtTX, MigTX uint64        // source's bytes sent on each network during the migration
	LastSrc       Beat
	FirstDst      Beat
	Continuity    error // nil when the heartbeat continued with the same boot id
	TicksBefore   [2]Tick
	TicksAfter    [2]Tick // block (vdb) and network (vdc) volume counters, on the destination
	Destination   virt.DomainState
}

func (r MigrationResult) String() string {
	hb := "continuous"
	if r.Continuity != nil {
		hb = "broken: " + r.Continuity.Error()
	}
	return fmt.Sprintf("%s→%s migrate_disks=%v wall=%.1fs downtime=%dms memory=%dMiB disk_total=%dKiB (virtual %dKiB) "+
		"mig0_tx=%dMiB mgmt0_tx=%dKiB heartbeat=%s (src n=%d → dst n=%d, boot %s) "+
		"volume ticks vdb %d→%d vdc %d→%d",
		r.From, r.To, r.Spec.Disks, r.Wall.Seconds(), r.Stats.Downtime.Milliseconds(), r.Stats.MemProcessed>>20,
		r.Stats.DiskTotal>>10, r.DiskVirtual>>10, r.MigTX>>20, r.MgmtTX>>10, hb, r.LastSrc.N, r.FirstDst.N,
		r.LastSrc.Boot, r.TicksBefore[0].N, r.TicksAfter[0].N, r.TicksBefore[1].N, r.TicksAfter[1].N)
}

// Migrate live-migrates g from one host to another peer to peer through
// go-libvirt, copying only the guest's local disk over the migration
// network, and measures the outcome. It fails only when the migration
// itself fails; the caller judges the result.
func (l *Lab) Migrate(ctx context.Context, g *Guest, from, to *Host) (MigrationResult, error) {
	r := MigrationResult{From: from.Name, To: to.Name}
	ctl, err := from.Dial(ctx)
	if err != nil {
		return r, err
	}
	defer ctl.Close()
	xml, err := ctl.DomainXML(ctx, g.Spec.Name, false)
	if err != nil {
		return r, err
	}
	all, err := virt.ParseDisks(xml)
	if err != nil {
		return r, err
	}
	sel := disks.Select(all, []disks.Volume{{ID: g.LoopSerial}, {ID: g.NBDSerial}}, nil)
	r.Skipped = sel.Skip
	if err := l.PrecreateDisk(ctx, to, g); err != nil {
		return r, err
	}
	r.Spec = virt.MigrateSpec{
		DestURI:     to.TCPURI(),
		MigrateURI:  "tcp://" + to.Mig.String(),
		DisksURI:    "tcp://" + to.Mig.String(),
		Disks:       sel.Copy,
		Copy:        virt.CopyFull,
		PersistDest: true,
	}
	if len(sel.Copy) == 0 {
		r.Spec.Copy = virt.CopyNone
	}
	srcBeats, _ := g.Heartbeats(from)
	dstOffset := fileSize(g.SerialLog(to))
	r.TicksBefore[0], r.TicksBefore[1], _ = g.VolumeTicks()
	before, err := from.Counters(ctx)
	if err != nil {
		return r, err
	}

	mc, err := from.Dial(ctx) // the Perform call gets its own connection
	if err != nil {
		return r, err
	}
	t := time.Now()
	err = mc.Migrate(ctx, g.Spec.Name, r.Spec)
	r.Wall = time.Since(t)
	mc.Close()
	if err != nil {
		return r, fmt.Errorf("migrate %s %s→%s: %w", g.Spec.Name, from.Name, to.Name, err)
	}
	after, err := from.Counters(ctx)
	if err != nil {
		return r, err
	}
	r.MgmtTX = after["mgmt0"].TX - before["mgmt0"].TX
	r.MigTX = after["mig0"].TX - before["mig0"].TX
	if r.Stats, err = ctl.JobStats(ctx, g.Spec.Name, true); err != nil {
		return r, err
	}
	if err := ctl.Undefine(ctx, g.Spec.Name); err != nil {
		return r, err
	}
	if r.DiskVirtual, err = virtualSize(ctx, from.Path(g.LocalDisk)); err != nil {
		return r, err
	}
	dc, err := to.Dial(ctx)
	if err != nil {
		return r, err
	}
	defer dc.Close()
	if r.Destination, err = dc.DomainState(ctx, g.Spec.Name); err != nil {
		return r, err
	}

	// The guest must go on where it landed: 20 more beats (2 s), then the
	// volume counters must move on with the same boot id (ticks every 2 s).
	srcBeats, _ = g.Heartbeats(from)
	dstBeats, err := l.waitBeatsFrom(ctx, to, g, dstOffset, 20, time.Minute)
	if err != nil {
		r.Continuity = err
		return r, nil
	}
	r.Continuity = Continuity(srcBeats, dstBeats)
	if len(srcBeats) > 0 {
		r.LastSrc = srcBeats[len(srcBeats)-1]
	}
	r.FirstDst = dstBeats[0]
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		r.TicksAfter[0], r.TicksAfter[1], _ = g.VolumeTicks()
		if r.TicksAfter[0].N > r.TicksBefore[0].N+1 && r.TicksAfter[1].N > r.TicksBefore[1].N+1 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return r, nil
}

func (l *Lab) waitBeatsFrom(ctx context.Context, h *Host, g *Guest, off int64, n int, timeout time.Duration) ([]Beat, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := g.heartbeatsFrom(h, off)
		if err != nil {
			return nil, err
		}
		if len(b) >= n {
			return b, nil
		}
		if time.Now().After(deadline) {
			return b, fmt.Errorf("guest %s on %s: %d of %d heartbeats after the migration within %s", g.Spec.Name, h.Name, len(b), n, timeout)
		}
		select {
		case <-ctx.Done():
			return b, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func virtualSize(ctx context.Context, path string) (uint64, error) {
	out, err := run(ctx, "qemu-img", "info", "-U", "--output=json", path)
	if err != nil {
		return 0, err
	}
	var info struct {
		VirtualSize uint64 `json:"virtual-size"`
	}
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&info); err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info.VirtualSize, nil
}
