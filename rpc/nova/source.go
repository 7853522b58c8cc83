package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/qemuimg"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

// checkSource is check_can_live_migrate_source, on the source: shared
// storage, what native mode cannot carry, disk space.
func (c *Compute) checkSource(ctx context.Context, r *oslo.Request) (any, error) {
	inst, err := objArg(r, "instance")
	if err != nil {
		return nil, err
	}
	md, err := objArg(r, "dest_check_data")
	if err != nil {
		return nil, err
	}
	uuid := inst.Str("uuid")
	if ports := neutronPorts(inst); len(ports) > 0 {
		return nil, PreCheck("instance %s has Neutron ports (%s): native mode cannot move port bindings; run ferry in companion mode beside nova-compute",
			uuid, strings.Join(ports, ", "))
	}
	g, err := c.localGuest(ctx, uuid)
	if errors.Is(err, errNoGuest) {
		return nil, PreCheck("instance %s is not running on %s: %v", uuid, c.o.Host, err)
	}
	if err != nil {
		return nil, err
	}
	for _, d := range g.Disks {
		if d.Serial != "" && d.Type == "file" {
			return nil, PreCheck("volume %s (%s at %s) is a file on this host: it needs a host-side connector, which native mode does not provide",
				d.Serial, d.Target, d.Source)
		}
	}
	volumes := volumesOf(g)
	sharedPath := false
	if f := md.Str("filename"); f != "" {
		_, err := os.Stat(filepath.Join(c.o.InstancesPath, f))
		sharedPath = err == nil
	}
	sel := disks.Select(g.Disks, volumes, func(p string) bool { return sharedPath && strings.HasPrefix(p, c.o.InstancesPath+"/") })
	if !sharedPath {
		// The destination carries read-only local disks (a config drive) over
		// before the migration; refuse the ones it cannot.
		carry, refuse := disks.CarryOver(g.Disks, filepath.Join(c.o.InstancesPath, uuid))
		for _, d := range carry {
			if st, err := os.Stat(d.Source); err != nil || st.Size() > disks.MaxCarry {
				refuse = append(refuse, fmt.Sprintf("%s (%s) is missing or larger than %d MiB", d.Target, d.Source, disks.MaxCarry>>20))
			}
		}
		if len(refuse) > 0 {
			return nil, PreCheck("read-only local disks cannot be carried over: %s", strings.Join(refuse, "; "))
		}
	}
	sharedBlock := len(sel.Copy) == 0
	block := !(sharedPath || sharedBlock)
	if md.Has("block_migration") && md.Bool("block_migration") && sharedPath {
		return nil, &Exception{Class: "InvalidLocalStorage", Message: fmt.Sprintf("Block migration can not be used with shared storage. %s", uuid),
			Kwargs: map[string]any{"path": c.o.InstancesPath, "reason": "block migration with shared storage"}}
	}
	if md.Has("block_migration") {
		block = md.Bool("block_migration")
	}
	if block {
		need, err := c.diskNeedMiB(ctx, g, sel.Copy)
		if err != nil {
			return nil, err
		}
		if avail := md.Int("disk_available_mb"); md.Has("disk_available_mb") && need > avail {
			return nil, PreCheck("unable to migrate %s: disks need %d MiB, the destination has %d MiB", uuid, need, avail)
		}
	}
	for k, v := range map[string]any{
		"is_volume_backed": false, "is_shared_instance_path": sharedPath, "is_shared_block_storage": sharedBlock,
		"block_migration": block, "instance_relative_path": uuid,
	} {
		if err := md.Set(k, v); err != nil {
			return nil, err
		}
	}
	return md, nil
}

func neutronPorts(inst *Object) []string {
	cache, err := inst.Child("info_cache")
	if err != nil {
		return nil
	}
	var nwJSON string
	if !cache.Get("network_info", &nwJSON) {
		return nil
	}
	var vifs []struct{ ID string }
	_ = json.Unmarshal([]byte(nwJSON), &vifs)
	var ids []string
	for _, v := range vifs {
		ids = append(ids, v.ID)
	}
	return ids
}

// diskNeedMiB sums the virtual sizes of the disks to copy.
func (c *Compute) diskNeedMiB(ctx context.Context, g virt.Guest, copySet []string) (int64, error) {
	imgs, err := images(ctx, g, copySet)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, im := range imgs {
		total += im.VirtualSize
	}
	return total >> 20, nil
}

// images reads the copied disks' images: format, sizes, backing file.
func images(ctx context.Context, g virt.Guest, copySet []string) ([]disks.Image, error) {
	var out []disks.Image
	for _, d := range copied(g, copySet) {
		f := d.Format
		if f == "" {
			f = "raw"
		}
		info, err := qemuimg.Read(ctx, d.Source, f)
		if err != nil {
			return nil, err
		}
		im := disks.Image{Path: d.Source, Format: f, VirtualSize: info.VirtualSize, ActualSize: info.ActualSize, ChainDepth: info.ChainDepth}
		if info.Backing != "" {
			im.Backing, im.BackingPath = filepath.Base(info.Backing), info.Backing
		}
		out = append(out, im)
	}
	return out, nil
}

// imageCache is where this host keeps backing files.
func (c *Compute) imageCache() string {
	if c.o.ImageCache != "" {
		return c.o.ImageCache
	}
	return filepath.Join(c.o.InstancesPath, disks.CacheSubdir)
}

// errNoGuest: this host's libvirt has no such domain (or cannot show it).
var errNoGuest = errors.New("guest not found on this host")

// localGuest reads a guest's domain XML from this host's libvirt.
func (c *Compute) localGuest(ctx context.Context, uuid string) (virt.Guest, error) {
	local, err := c.local(ctx)
	if err != nil {
		return virt.Guest{}, err
	}
	defer local.Close()
	xml, err := local.DomainXML(ctx, uuid, false)
	if err != nil {
		return virt.Guest{}, fmt.Errorf("%w: %w", errNoGuest, err)
	}
	return virt.ParseGuest(xml)
}

// volumesOf lists the guest's volumes: Nova sets a volume disk's serial to
// its volume id.
func volumesOf(g virt.Guest) []disks.Volume {
	var vs []disks.Volume
	for _, d := range g.Disks {
		if d.Serial != "" {
			vs = append(vs, disks.Volume{ID: d.Serial, Dev: d.Target})
		}
	}
	return vs
}

// copied returns the guest's disks named in the copy set.
func copied(g virt.Guest, copySet []string) []virt.Disk {
	var out []virt.Disk
	for _, d := range g.Disks {
		if slices.Contains(copySet, d.Target) {
			out = append(out, d)
		}
	}
	return out
}

// liveMigration is the live_migration cast: the migration is journalled
// (then the cast is acked) and the engine runs it.
func (c *Compute) liveMigration(ctx context.Context, r *oslo.Request) (any, error) {
	inst, err := objArg(r, "instance")
	if err != nil {
		return nil, err
	}
	mig, err := objArg(r, "migration")
	if err != nil {
		return nil, err
	}
	md, err := objArg(r, "migrate_data")
	if err != nil {
		return nil, err
	}
	var dest string
	if _, err := r.Arg("dest", &dest); err != nil || dest == "" {
		return nil, fmt.Errorf("live_migration: %w: no dest", errdefs.ErrInvalidArgument)
	}
	var blockArg any
	r.Arg("block_migration", &blockArg)
	req, err := c.request(ctx, requestContext(r), inst, mig, md, dest, blockArg)
	if err != nil {
		return nil, err
	}
	if _, err := c.engine.Start(ctx, req); err != nil {
		if errors.Is(err, errdefs.ErrConflict) {
			c.o.Log.WithField("migration_id", req.ID).Info("live_migration re-sent for a known migration; nothing started")
			return nil, r.Ack()
		}
		return nil, err
	}
	return nil, r.Ack()
}

// request builds the engine's request: the copy set, the URIs, the policy.
func (c *Compute) request(ctx context.Context, rctx Context, inst, mig, md *Object, dest string, blockArg any) (migration.Request, error) {
	uuid := inst.Str("uuid")
	g, err := c.localGuest(ctx, uuid)
	if err != nil {
		return migration.Request{}, fmt.Errorf("live_migration %s: %w", uuid, err)
	}
	shared := md.Bool("is_shared_instance_path")
	sel := disks.Select(g.Disks, volumesOf(g), func(p string) bool { return shared && strings.HasPrefix(p, c.o.InstancesPath+"/") })
	peer := c.o.Peers[dest]
	uris, err := hostnet.For(hostnet.Dest{Host: dest, Mgmt: peer.Management, TLSName: peer.TLSName, Scheme: c.o.Scheme}, c.o.NativeTLS)
	if err != nil {
		return migration.Request{}, err
	}
	spec := virt.MigrateSpec{DestURI: uris.Control, MigrateURI: uris.Migrate, DisksURI: uris.Disks, Bandwidth: c.o.Bandwidth,
		TLS: c.o.NativeTLS, TLSDestination: uris.TLSDestination, Parallel: c.o.Parallel}
	if md.Bool("block_migration") && len(sel.Copy) > 0 {
		spec.Copy, spec.Disks = virt.CopyFull, sel.Copy
	}
	policy := c.o.Policy
	if c.o.CompletionPerGiB > 0 {
		var memMB int64
		if f, err := inst.Child("flavor"); err == nil {
			memMB = f.Int("memory_mb")
		}
		gib := max(memMB/1024, 2) + 2*int64(len(sel.Copy)) // Nova counts each disk as at least 2 GiB
		policy.CompletionTimeout = time.Duration(gib) * c.o.CompletionPerGiB
	}
	ns := &novaState{Instance: inst, Migration: mig, MigrateData: md, BlockMig: blockArg, Context: rctx, NovaID: mig.Int("id")}
	if spec.Copy != virt.CopyNone {
		imgs, err := images(ctx, g, sel.Copy)
		if err != nil {
			return migration.Request{}, err
		}
		offer, inc, why := disks.Offer(imgs, c.imageCache())
		disk, err := diskInfo(offer)
		if err != nil {
			return migration.Request{}, err
		}
		ns.Disk, ns.CopyWhy = &disk, why
		if inc {
			flat, err := diskInfo(disks.Flat(imgs))
			if err != nil {
				return migration.Request{}, err
			}
			ns.FlatDisk = &flat
		}
	}
	extra, err := json.Marshal(ns)
	if err != nil {
		return migration.Request{}, err
	}
	id := mig.Str("uuid")
	if id == "" {
		id = fmt.Sprintf("migration-%d", mig.Int("id"))
	}
	return migration.Request{ID: id, Domain: uuid, InstanceUUID: uuid, DestHost: dest, DestCheckURI: c.peerURI(dest),
		Spec: spec, Policy: policy, Extra: extra}, nil
}

// diskEntry is one element of pre_live_migration's disk argument, a JSON
// string in the shape of Nova's get_instance_disk_info.
type diskEntry struct {
	Type        string `json:"type"`
	Path        string `json:"path"`
	VirtualSize int64  `json:"virt_disk_size"`
	BackingFile string `json:"backing_file"`
	DiskSize    int64  `json:"disk_size"`
	Over        int64  `json:"over_committed_disk_size"`
}

func diskInfo(imgs []disks.Image) (string, error) {
	out := make([]diskEntry, 0, len(imgs))
	for _, im := range imgs {
		out = append(out, diskEntry{Type: im.Format, Path: im.Path, VirtualSize: im.VirtualSize, BackingFile: im.Backing,
			DiskSize: im.ActualSize, Over: max(im.VirtualSize-im.ActualSize, 0)})
	}
	b, err := json.Marshal(out)
	return string(b), err
}

func parseDiskInfo(s string) ([]disks.Image, error) {
	var es []diskEntry
	if err := json.Unmarshal([]byte(s), &es); err != nil {
		return nil, fmt.Errorf("%w: disk info: %w", errdefs.ErrInvalidArgument, err)
	}
	out := make([]disks.Image, 0, len(es))
	for _, e := range es {
		out = append(out, disks.Image{Path: e.Path, Format: e.Type, VirtualSize: e.VirtualSize, ActualSize: e.DiskSize, Backing: e.BackingFile})
	}
	return out, nil
}

// activeFor finds the running migration of an instance.
func (c *Compute) activeFor(instance string, novaID int64) (migration.Migration, bool) {
	for _, m := range c.engine.List() {
		if m.InstanceUUID != instance || m.Phase.Terminal() {
			continue
		}
		if novaID != 0 {
			var ns novaState
			if json.Unmarshal(m.Extra, &ns) == nil && ns.NovaID != novaID {
				continue
			}
		}
		return m, true
	}
	return migration.Migration{}, false
}

func (c *Compute) forceComplete(ctx context.Context, r *oslo.Request) (any, error) {
	inst, err := objArg(r, "instance")
	if err != nil {
		return nil, err
	}
	m, ok := c.activeFor(inst.Str("uuid"), 0)
	if !ok {
		return nil, &Exception{Class: "NoActiveMigrationForInstance",
			Message: fmt.Sprintf("Active live migration for instance %s not found", inst.Str("uuid")),
			Kwargs:  map[string]any{"instance_id": inst.Str("uuid")}}
	}
	r.Ack()
	return nil, c.engine.ForceComplete(ctx, m.ID)
}

func (c *Compute) abort(ctx context.Context, r *oslo.Request) (any, error) {
	inst, err := objArg(r, "instance")
	if err != nil {
		return nil, err
	}
	var novaID int64
	r.Arg("migration_id", &novaID)
	m, ok := c.activeFor(inst.Str("uuid"), novaID)
	if !ok {
		return nil, &Exception{Class: "InvalidMigrationState",
			Message: fmt.Sprintf("Migration %d state of instance %s is not active", novaID, inst.Str("uuid"))}
	}
	r.Ack()
	return nil, c.engine.Abort(ctx, m.ID)
}

func hostnetFor(host string, p Peer, migAddr, scheme string, tls bool) (hostnet.URIs, error) {
	return hostnet.For(hostnet.Dest{Host: host, Mgmt: p.Management, Migration: migAddr, TLSName: p.TLSName, Scheme: scheme}, tls)
}

func castOptions(rctx Context) oslo.CallOptions { return oslo.CallOptions{Context: rctx.JSON()} }
