package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/qemuimg"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

// checkDestination is check_can_live_migrate_destination, on the
// destination: the inbound limit, the guest's CPU against this host, the
// volumes this host must already see, then the source's own checks.
func (c *Compute) checkDestination(ctx context.Context, r *oslo.Request) (any, error) {
	inst, err := objArg(r, "instance")
	if err != nil {
		return nil, err
	}
	uuid, src := inst.Str("uuid"), inst.Str("host")
	if n, ok := c.inbound.reserve(uuid); !ok {
		return nil, PreCheck("%d/%d inbound migrations already on %s", n, c.o.MaxInbound, c.o.Host)
	}
	answer, err := c.checkDestinationReserved(ctx, r, inst, uuid, src)
	if err != nil {
		c.inbound.release(uuid)
	}
	return answer, err
}

// sourceDomain opens the source host's libvirt and reads the instance's
// domain XML there; the caller closes the connection.
func (c *Compute) sourceDomain(ctx context.Context, uuid, src string) (Libvirt, string, error) {
	peer, err := c.dial(ctx, c.peerURI(src))
	if err != nil {
		return nil, "", PreCheck("cannot reach the source's libvirt on %s: %v", src, err)
	}
	xml, err := peer.DomainXML(ctx, uuid, false)
	if err != nil {
		peer.Close()
		return nil, "", PreCheck("instance %s not found on the source %s: %v", uuid, src, err)
	}
	return peer, xml, nil
}

func (c *Compute) checkDestinationReserved(ctx context.Context, r *oslo.Request, inst *Object, uuid, src string) (any, error) {
	peer, xml, err := c.sourceDomain(ctx, uuid, src)
	if err != nil {
		return nil, err
	}
	peer.Close()
	g, err := virt.ParseGuest(xml)
	if err != nil {
		return nil, err
	}
	local, err := c.local(ctx)
	if err != nil {
		return nil, err
	}
	defer local.Close()
	if g.CPUXML != "" {
		fit, err := local.CompareCPU(ctx, g.CPUXML, g.Type)
		if err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
			return nil, err
		}
		if err != nil || fit == virt.CPUIncompatible {
			return nil, InvalidCPU("the guest's CPU (%s) does not fit %s", g.Model, c.o.Host)
		}
	}
	for _, d := range g.Disks {
		if d.Serial != "" && d.Type == "block" {
			if _, err := os.Stat(d.Source); err != nil {
				return nil, PreCheck("volume %s (%s at %s) is not present on %s: it needs a host-side connector, which native mode does not provide",
					d.Serial, d.Target, d.Source, c.o.Host)
			}
		}
	}
	md := NewObject("LibvirtLiveMigrateData", "1.10")
	tmp, err := os.CreateTemp(c.o.InstancesPath, "ferry-shared-check-")
	if err != nil {
		return nil, fmt.Errorf("shared-storage test file: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	var st syscall.Statfs_t
	avail := int64(0)
	if syscall.Statfs(c.o.InstancesPath, &st) == nil {
		avail = int64(st.Bavail) * st.Bsize >> 20
	}
	var blockMig, overCommit any
	r.Arg("block_migration", &blockMig)
	r.Arg("disk_over_commit", &overCommit)
	fields := map[string]any{
		"filename": filepath.Base(tmp.Name()), "image_type": "default", "disk_available_mb": avail,
		"graphics_listen_addr_vnc": "127.0.0.1", "graphics_listen_addr_spice": "127.0.0.1", "serial_listen_addr": nil,
		"dst_wants_file_backed_memory": false, "vifs": []any{},
	}
	if blockMig != nil {
		fields["block_migration"] = blockMig
	}
	if overCommit != nil {
		fields["disk_over_commit"] = overCommit
	}
	for k, v := range fields {
		if err := md.Set(k, v); err != nil {
			return nil, err
		}
	}
	res, err := c.callCompute(ctx, requestContext(r), src, "check_can_live_migrate_source",
		map[string]any{"instance": json.RawMessage(r.Args["instance"]), "dest_check_data": md}, false)
	if err != nil {
		return nil, err // a *oslo.Failure from the source goes back to the conductor as it is
	}
	return res, nil
}

// preLiveMigration is pre_live_migration, on the destination: the instance
// directory and the pre-created disks (same format and virtual size), and
// this host's migration address.
func (c *Compute) preLiveMigration(ctx context.Context, r *oslo.Request) (any, error) {
	inst, err := objArg(r, "instance")
	if err != nil {
		return nil, err
	}
	md, err := objArg(r, "migrate_data")
	if err != nil {
		return nil, err
	}
	uuid := inst.Str("uuid")
	if n, ok := c.inbound.take(uuid); !ok {
		return nil, PreCheck("%d/%d inbound migrations already on %s", n, c.o.MaxInbound, c.o.Host)
	}
	dir := filepath.Join(c.o.InstancesPath, uuid)
	if !md.Bool("is_shared_instance_path") {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("instance directory: %w", err)
		}
		if err := c.carryOver(ctx, uuid, inst.Str("host"), dir); err != nil {
			return nil, err
		}
	}
	var diskJSON string
	if ok, _ := r.Arg("disk", &diskJSON); ok && md.Bool("block_migration") && !md.Bool("is_shared_block_storage") {
		if err := c.precreate(ctx, diskJSON); err != nil {
			return nil, err
		}
	}
	set := map[string]any{"bdms": []any{}, "serial_listen_ports": []any{}, "supported_perf_events": []any{},
		"wait_for_vif_plugged": false, "old_vol_attachment_ids": map[string]any{}}
	if c.o.InboundAddr != "" {
		set["target_connect_addr"] = c.o.InboundAddr
	} else {
		set["target_connect_addr"] = nil
	}
	for k, v := range set {
		if err := md.Set(k, v); err != nil {
			return nil, err
		}
	}
	return md, nil
}

// precreate creates the images the source described, before the copy: an
// overlay on this host's base where the source named a backing file, a flat
// image of the same format and virtual size otherwise. A missing base is a
// pre-check error the source answers by describing the disks flat.
func (c *Compute) precreate(ctx context.Context, diskJSON string) error {
	imgs, err := parseDiskInfo(diskJSON)
	if err != nil {
		return err
	}
	bases := func(name string) (string, bool) {
		info, err := qemuimg.Read(ctx, filepath.Join(c.imageCache(), name), "")
		return info.Format, err == nil && info.ChainDepth == 0
	}
	plan, err := disks.Precreate(imgs, c.o.InstancesPath, c.imageCache(), bases)
	if err != nil {
		return PreCheck("%v", err)
	}
	for _, cr := range plan {
		if err := os.MkdirAll(filepath.Dir(cr.Path), 0o755); err != nil {
			return fmt.Errorf("instance directory: %w", err)
		}
		os.Remove(cr.Path)
		if err := qemuimg.Create(ctx, qemuimg.Spec(cr)); err != nil {
			return err
		}
	}
	return nil
}

// carryOver copies the guest's read-only local disks (a config drive),
// which a block migration does not copy, from the source host through its
// libvirt, each to a temporary file renamed into place once complete.
func (c *Compute) carryOver(ctx context.Context, uuid, src, dir string) error {
	peer, xml, err := c.sourceDomain(ctx, uuid, src)
	if err != nil {
		return err
	}
	defer peer.Close()
	all, err := virt.ParseDisks(xml)
	if err != nil {
		return err
	}
	carry, refuse := disks.CarryOver(all, dir)
	if len(refuse) > 0 {
		return PreCheck("read-only local disks cannot be carried over: %s", strings.Join(refuse, "; "))
	}
	for _, d := range carry {
		tmp, err := os.CreateTemp(dir, ".carry-"+d.Target+"-")
		if err != nil {
			return fmt.Errorf("carry over %s: %w", d.Source, err)
		}
		n, err := peer.ReadDisk(ctx, uuid, d.Target, tmp, disks.MaxCarry)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), d.Source)
		}
		if err != nil {
			os.Remove(tmp.Name())
			return fmt.Errorf("carry over %s (%s) from %s: %w", d.Target, d.Source, src, err)
		}
		c.o.Log.WithFields(logrus.Fields{"instance_uuid": uuid, "disk": d.Target, "path": d.Source, "bytes": n}).Info("read-only disk carried over from the source")
	}
	return nil
}

// postAtDestination is post_live_migration_at_destination: the Instance
// now lives here.
func (c *Compute) postAtDestination(ctx context.Context, r *oslo.Request) (any, error) {
	inst, err := objArg(r, "instance")
	if err != nil {
		return nil, err
	}
	rctx := requestContext(r)
	if _, err := c.cond.Action(ctx, rctx, inst, "drop_migration_context", nil, nil); err != nil {
		return nil, err
	}
	for k, v := range map[string]any{"host": c.o.Host, "node": c.o.Host, "power_state": 1, "task_state": nil, "progress": 0} {
		if err := inst.Set(k, v); err != nil {
			return nil, err
		}
	}
	if err := c.cond.Save(ctx, rctx, inst, map[string]any{"expected_task_state": "migrating"}); err != nil {
		return nil, err
	}
	c.inbound.release(inst.Str("uuid"))
	return nil, nil
}

// rollbackAtDestination is rollback_live_migration_at_destination (a cast):
// nothing of the guest may stay here.
func (c *Compute) rollbackAtDestination(ctx context.Context, r *oslo.Request) (any, error) {
	inst, err := objArg(r, "instance")
	if err != nil {
		return nil, err
	}
	uuid := inst.Str("uuid")
	defer c.inbound.release(uuid)
	if local, err := c.local(ctx); err == nil {
		if st, err := local.DomainState(ctx, uuid); err == nil {
			if st.State != virt.StateShutoff {
				c.o.Log.WithField("instance_uuid", uuid).Error("rollback: the guest runs on this host; left alone for an operator")
				return nil, nil
			} else if err := local.Control(ctx, uuid, virt.Control{Op: virt.OpUndefine}); err != nil {
				c.o.Log.WithError(err).Warn("rollback: undefine")
			}
		}
		local.Close()
	}
	md := &Object{}
	shared := false
	if ok, _ := r.Arg("migrate_data", md); ok {
		shared = md.Bool("is_shared_instance_path")
	}
	if !shared {
		if err := os.RemoveAll(filepath.Join(c.o.InstancesPath, uuid)); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// removeVolumeConnection: native mode carries only volumes that need no
// host-side connection (network disks, pre-presented block devices), so
// there is nothing to disconnect.
func (c *Compute) removeVolumeConnection(ctx context.Context, r *oslo.Request) (any, error) {
	return nil, nil
}

// dropMoveClaim: native mode makes no resource-tracker claims.
func (c *Compute) dropMoveClaim(ctx context.Context, r *oslo.Request) (any, error) {
	inst, err := objArg(r, "instance")
	if err == nil {
		c.inbound.release(inst.Str("uuid"))
	}
	return nil, nil
}
