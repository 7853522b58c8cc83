package nova

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/qemuimg"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

// DestOptions configure the destination endpoints.
type DestOptions struct {
	Host          string
	InstancesPath string
	ImageCache    string // where backing files live; default InstancesPath/_base
	InboundAddr   string // live_migration_inbound_addr: target_connect_addr in pre_live_migration
	StateDir      string // the inbound slots are saved here; "" keeps them in memory
	MaxInbound    int
	InboundHold   time.Duration // a pre-check's reservation
	InboundTaken  time.Duration // a slot pre_live_migration took
	// Images is Glance, where an instance's kernel and ramdisk images are
	// fetched from (nil: such an instance is refused in pre_live_migration).
	Images Images
	Log    *logrus.Entry
}

// Images is Glance as a destination reads it.
type Images interface {
	// Fetch copies the image's data into w; it returns the disk format
	// Glance records for it and the bytes copied.
	Fetch(ctx context.Context, id string, w io.Writer, max int64) (format string, n int64, err error)
}

// maxBootFile bounds a fetched kernel or ramdisk image.
const maxBootFile = 512 << 20

// Destination serves the destination's side of Nova's live-migration flow:
// the pre-check, pre_live_migration (instance directory, disks, config
// drive), and post_ or rollback_live_migration_at_destination. It creates
// and deletes files only inside the instance's own directory, a direct
// child of the instances path, and deletes only a directory it created
// itself, for a guest this host's libvirt says is not defined here.
type Destination struct {
	o       DestOptions
	local   func(ctx context.Context) (Libvirt, error)
	dial    LibvirtDialer
	compute Computes
	cond    *Conductor
	peers   Peers
	inbound *inbound
}

// preparedMark, inside an instance directory, says ferry created the
// directory in pre_live_migration; only such a directory may be removed
// by a rollback. post_live_migration_at_destination removes the mark.
const preparedMark = ".ferry-prepared"

// NewDestination builds the destination endpoints; local opens this host's
// libvirt, dial another host's.
func NewDestination(o DestOptions, peers Peers, local func(ctx context.Context) (Libvirt, error), dial LibvirtDialer,
	compute Computes, cond *Conductor) (*Destination, error) {
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if o.ImageCache == "" {
		o.ImageCache = filepath.Join(o.InstancesPath, disks.CacheSubdir)
	}
	if o.MaxInbound <= 0 {
		o.MaxInbound = 2
	}
	if o.InboundHold <= 0 {
		o.InboundHold = 5 * time.Minute
	}
	if o.InboundTaken <= 0 {
		o.InboundTaken = time.Hour
	}
	in, err := newInbound(o.StateDir, o.MaxInbound, o.InboundHold, o.InboundTaken)
	if err != nil && in == nil {
		return nil, err
	}
	if err != nil {
		o.Log.WithError(err).Warn("inbound slots")
	}
	return &Destination{o: o, local: local, dial: dial, compute: compute, cond: cond, peers: peers, inbound: in}, nil
}

// log is the logger for an instance's migration here: its lines carry the
// request's ids (Context.LogFields).
func (d *Destination) log(rctx Context, uuid string) *logrus.Entry {
	return d.o.Log.WithFields(rctx.LogFields()).WithField("instance_uuid", uuid)
}

// Inbound is how many inbound migrations hold a slot here now (reserved by
// a pre-check or taken by pre_live_migration, not expired).
func (d *Destination) Inbound() int { return d.inbound.count() }

// Methods are the destination's endpoints by RPC method name.
func (d *Destination) Methods() map[string]oslo.HandlerFunc {
	return map[string]oslo.HandlerFunc{
		"check_can_live_migrate_destination":     d.checkDestination,
		"pre_live_migration":                     d.preLiveMigration,
		"post_live_migration_at_destination":     d.postAtDestination,
		"rollback_live_migration_at_destination": d.rollbackAtDestination,
		"remove_volume_connection":               d.removeVolumeConnection,
		"drop_move_claim_at_destination":         d.dropMoveClaim,
	}
}

// checkDestination is check_can_live_migrate_destination: the inbound
// limit, the guest's CPU against this host, the volumes this host must
// already see, then the source's own checks.
func (d *Destination) checkDestination(ctx context.Context, r *oslo.Request) (any, error) {
	inst, uuid, err := instanceArg(r)
	if err != nil {
		return nil, err
	}
	src, err := Need[string](inst, "host")
	if err != nil {
		return nil, err
	}
	if n, ok := d.inbound.reserve(uuid); !ok {
		return nil, PreCheck("%d/%d inbound migrations already on %s", n, d.o.MaxInbound, d.o.Host)
	}
	answer, err := d.checkReserved(ctx, r, uuid, src)
	if err != nil {
		d.inbound.release(uuid)
	}
	return answer, err
}

// sourceDomain opens the source host's libvirt, once Nova's records confirm
// it is the instance's host, and reads the instance's domain XML there; the
// caller closes the connection.
func (d *Destination) sourceDomain(ctx context.Context, rctx Context, uuid, src string) (Libvirt, string, error) {
	if err := sourceOf(ctx, d.peers, d.cond, rctx, uuid, src); err != nil {
		return nil, "", PreCheck("%v", err)
	}
	uri, err := d.peers.libvirtURI(src)
	if err != nil {
		return nil, "", PreCheck("the source %s: %v", src, err)
	}
	peer, err := d.dial(ctx, uri)
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

func (d *Destination) checkReserved(ctx context.Context, r *oslo.Request, uuid, src string) (any, error) {
	rctx := requestContext(r)
	peer, xml, err := d.sourceDomain(ctx, rctx, uuid, src)
	if err != nil {
		return nil, err
	}
	peer.Close()
	g, err := virt.ParseGuest(xml)
	if err != nil {
		return nil, err
	}
	if err := d.fits(ctx, g); err != nil {
		return nil, err
	}
	md := NewObject("LibvirtLiveMigrateData", "1.10")
	tmp, err := os.CreateTemp(d.o.InstancesPath, "ferry-shared-check-")
	if err != nil {
		return nil, fmt.Errorf("shared-storage test file: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	var st syscall.Statfs_t
	avail := int64(0)
	if syscall.Statfs(d.o.InstancesPath, &st) == nil {
		avail = int64(st.Bavail) * st.Bsize >> 20
	}
	fields := map[string]any{
		"filename": filepath.Base(tmp.Name()), "image_type": "default", "disk_available_mb": avail,
		"graphics_listen_addr_vnc": "127.0.0.1", "graphics_listen_addr_spice": "127.0.0.1", "serial_listen_addr": nil,
		"dst_wants_file_backed_memory": false, "vifs": []any{},
	}
	for _, name := range []string{"block_migration", "disk_over_commit"} {
		v, present, err := boolArg(r, name)
		if err != nil {
			return nil, err
		}
		if present {
			fields[name] = v
		}
	}
	if err := md.SetAll(fields); err != nil {
		return nil, err
	}
	// A *oslo.Failure from the source goes back to the conductor as it is.
	return d.compute.call(ctx, rctx, src, "check_can_live_migrate_source",
		map[string]any{"instance": json.RawMessage(r.Args["instance"]), "dest_check_data": md}, false)
}

// fits checks the guest against this host: its CPU, and the volumes this
// host must already see (native mode connects none).
func (d *Destination) fits(ctx context.Context, g virt.Guest) error {
	local, err := d.local(ctx)
	if err != nil {
		return err
	}
	defer local.Close()
	if g.CPUXML != "" {
		fit, err := local.CompareCPU(ctx, g.CPUXML, g.Type)
		if err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
			return err
		}
		if err != nil || fit == virt.CPUIncompatible {
			return InvalidCPU("the guest's CPU (%s) does not fit %s", g.Model, d.o.Host)
		}
	}
	for _, disk := range g.Disks {
		if disk.Serial != "" && disk.Type == "block" {
			if _, err := os.Stat(disk.Source); err != nil {
				return PreCheck("volume %s (%s at %s) is not present on %s: it needs a host-side connector, which native mode does not provide",
					disk.Serial, disk.Target, disk.Source, d.o.Host)
			}
		}
	}
	return nil
}

// defined asks this host's libvirt whether the guest is defined here; an
// error means the answer is unknown.
func (d *Destination) defined(ctx context.Context, uuid string) (bool, error) {
	local, err := d.local(ctx)
	if err != nil {
		return false, err
	}
	defer local.Close()
	_, err = local.DomainState(ctx, uuid)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, errdefs.ErrNotFound):
		return false, nil
	}
	return false, err
}

// preLiveMigration is pre_live_migration: the instance directory (which
// must not exist yet, as Nova requires), the carried-over config drive, the
// pre-created disks (same format and virtual size), and this host's
// migration address.
func (d *Destination) preLiveMigration(ctx context.Context, r *oslo.Request) (_ any, err error) {
	a, err := preLiveArgsOf(r)
	if err != nil {
		return nil, err
	}
	if n, ok := d.inbound.take(a.uuid); !ok {
		return nil, PreCheck("%d/%d inbound migrations already on %s", n, d.o.MaxInbound, d.o.Host)
	}
	defer func() {
		if err != nil {
			d.inbound.release(a.uuid)
		}
	}()
	switch def, err := d.defined(ctx, a.uuid); {
	case err != nil:
		return nil, fmt.Errorf("pre_live_migration %s: is the guest defined here? %w", a.uuid, err)
	case def:
		return nil, PreCheck("instance %s is already defined on %s", a.uuid, d.o.Host)
	}
	copyDisks := a.hasDisk && a.block && !a.sharedBlock
	if a.shared {
		if copyDisks {
			return nil, PreCheck("a block migration into a shared instance path is not supported")
		}
	} else {
		dir, err := d.prepareDir(a.uuid)
		if err != nil {
			return nil, err
		}
		if err := d.carryOver(ctx, a.rctx, a.uuid, a.src, dir); err != nil {
			return nil, err
		}
		if err := d.fetchBootFiles(ctx, a, dir); err != nil {
			return nil, err
		}
		if copyDisks {
			if err := d.precreate(ctx, a.rctx, dir, a.disk, a.image); err != nil {
				return nil, err
			}
		}
	}
	var target any
	if d.o.InboundAddr != "" {
		target = d.o.InboundAddr
	}
	if err := a.md.SetAll(map[string]any{"bdms": []any{}, "serial_listen_ports": []any{}, "supported_perf_events": []any{},
		"wait_for_vif_plugged": false, "old_vol_attachment_ids": map[string]any{}, "target_connect_addr": target}); err != nil {
		return nil, err
	}
	return a.md, nil
}

// preLiveArgs are pre_live_migration's arguments, read and checked before
// anything is touched.
type preLiveArgs struct {
	uuid, src, disk            string
	rctx                       Context // the request's, sanitized
	kernel, ramdisk, image     string  // Glance image ids; "" for none
	md                         *Object
	shared, block, sharedBlock bool
	hasDisk                    bool
}

func preLiveArgsOf(r *oslo.Request) (preLiveArgs, error) {
	var a preLiveArgs
	inst, uuid, err := instanceArg(r)
	if err != nil {
		return a, err
	}
	a.uuid, a.rctx = uuid, requestContext(r)
	if a.src, err = Need[string](inst, "host"); err != nil {
		return a, err
	}
	for _, f := range []struct {
		name string
		id   *string
	}{{"kernel_id", &a.kernel}, {"ramdisk_id", &a.ramdisk}, {"image_ref", &a.image}} {
		if *f.id, _, err = Opt[string](inst, f.name); err != nil {
			return a, err
		}
		if *f.id != "" {
			if err := disks.ValidUUID(*f.id); err != nil {
				return a, fmt.Errorf("%s.%s: %w", inst.Name, f.name, err)
			}
		}
	}
	if a.md, err = objArg(r, "migrate_data"); err != nil {
		return a, err
	}
	if a.shared, err = Need[bool](a.md, "is_shared_instance_path"); err != nil {
		return a, err
	}
	if a.block, _, err = Opt[bool](a.md, "block_migration"); err != nil {
		return a, err
	}
	if a.sharedBlock, _, err = Opt[bool](a.md, "is_shared_block_storage"); err != nil {
		return a, err
	}
	a.hasDisk, err = r.Arg("disk", &a.disk)
	return a, err
}

// prepareDir creates the instance's directory, marked as ferry's. One that
// exists already is refused (Nova's DestinationDiskExists), unless ferry's
// own mark says an earlier pre_live_migration of this migration made it
// (the source asks again for a flat copy).
func (d *Destination) prepareDir(uuid string) (string, error) {
	dir, err := disks.InstanceDir(d.o.InstancesPath, uuid)
	if err != nil {
		return "", err
	}
	switch err := disks.RealDir(dir); {
	case errors.Is(err, errdefs.ErrNotFound):
		if err := os.Mkdir(dir, 0o755); err != nil {
			return "", fmt.Errorf("instance directory: %w", err)
		}
	case err != nil:
		return "", err
	default:
		if _, err := os.Lstat(filepath.Join(dir, preparedMark)); err != nil {
			return "", &Exception{Class: "DestinationDiskExists",
				Message: fmt.Sprintf("The supplied disk path (%s) already exists, it is expected not to exist.", dir),
				Kwargs:  map[string]any{"path": dir}}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, preparedMark), nil, 0o600); err != nil {
		return "", fmt.Errorf("instance directory: %w", err)
	}
	return dir, nil
}

// precreate creates the images the source described, before the copy: an
// overlay on this host's base where the source named a backing file, a flat
// image of the same format and virtual size otherwise. A missing base is a
// pre-check error the source answers by describing the disks flat.
func (d *Destination) precreate(ctx context.Context, rctx Context, dir, diskJSON, image string) error {
	imgs, err := parseDiskInfo(diskJSON)
	if err != nil {
		return err
	}
	for _, im := range imgs {
		if err := d.fetchBase(ctx, rctx, image, im.Backing, im.VirtualSize); err != nil {
			return err
		}
	}
	bases := func(name string) (string, bool) {
		info, err := qemuimg.Read(ctx, filepath.Join(d.o.ImageCache, name), "")
		return info.Format, err == nil && info.ChainDepth == 0
	}
	plan, err := disks.Precreate(imgs, dir, d.o.ImageCache, bases)
	if err != nil {
		return PreCheck("%v", err)
	}
	for _, cr := range plan {
		if err := os.Remove(cr.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pre-create %s: %w", cr.Path, err)
		}
		if err := qemuimg.Create(ctx, qemuimg.Spec(cr)); err != nil {
			return err
		}
	}
	return nil
}

// fetchBase puts the instance's image into this host's image cache when a
// disk's backing file is its cache entry (Nova names it by the sha1 of the
// image id) and the cache lacks it, as nova-compute's pre_live_migration
// does: fetched from Glance, read as the format Glance records (raw or a
// qcow2 without a backing file of its own), stored raw, renamed into place
// once complete. Any other missing backing file stays missing: the
// pre-check refuses it and the source falls back to a full copy.
func (d *Destination) fetchBase(ctx context.Context, rctx Context, image, name string, virtualSize int64) error {
	if d.o.Images == nil || image == "" || name == "" || virtualSize <= 0 || name != cacheName(image) {
		return nil
	}
	path := filepath.Join(d.o.ImageCache, name)
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(d.o.ImageCache, 0o755); err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	tmp, err := os.CreateTemp(d.o.ImageCache, ".fetch-"+name+"-")
	if err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	format, n, err := d.o.Images.Fetch(ctx, image, tmp, virtualSize+maxBootFile)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fetch image %s into the image cache: %w", image, err)
	}
	raw := tmp.Name()
	switch format {
	case "raw":
	case "qcow2":
		info, err := qemuimg.Read(ctx, tmp.Name(), "qcow2")
		switch {
		case err != nil:
			return err
		case info.ChainDepth > 0 || info.Backing != "":
			return PreCheck("image %s is a qcow2 with a backing file (%s); not fetched", image, info.Backing)
		case info.VirtualSize > virtualSize:
			return PreCheck("image %s has %d bytes virtual, more than the disk's %d", image, info.VirtualSize, virtualSize)
		}
		raw = tmp.Name() + ".raw"
		defer os.Remove(raw)
		if err := qemuimg.ConvertRaw(ctx, tmp.Name(), "qcow2", raw); err != nil {
			return err
		}
	default:
		return PreCheck("image %s has disk format %q; the image cache takes raw and qcow2", image, format)
	}
	if err := os.Rename(raw, path); err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	d.o.Log.WithFields(rctx.LogFields()).WithFields(logrus.Fields{"image_id": image, "path": path, "bytes": n, "disk_format": format}).Info("base image fetched from Glance into the image cache")
	return nil
}

// cacheName is the image cache's file name for an image: the sha1 of its
// id, as Nova's imagecache names it.
func cacheName(image string) string {
	sum := sha1.Sum([]byte(image))
	return hex.EncodeToString(sum[:])
}

// carryOver copies the guest's read-only local disks (a config drive),
// which a block migration does not copy, from the source host through its
// libvirt, each to a temporary file renamed into place once complete.
func (d *Destination) carryOver(ctx context.Context, rctx Context, uuid, src, dir string) error {
	peer, xml, err := d.sourceDomain(ctx, rctx, uuid, src)
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
	for _, disk := range carry {
		tmp, err := os.CreateTemp(dir, ".carry-"+disk.Target+"-")
		if err != nil {
			return fmt.Errorf("carry over %s: %w", disk.Source, err)
		}
		n, err := peer.ReadDisk(ctx, uuid, disk.Target, tmp, disks.MaxCarry)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), disk.Source)
		}
		if err != nil {
			os.Remove(tmp.Name())
			return fmt.Errorf("carry over %s (%s) from %s: %w", disk.Target, disk.Source, src, err)
		}
		d.log(rctx, uuid).WithFields(logrus.Fields{"disk": disk.Target, "path": disk.Source, "bytes": n}).Info("read-only disk carried over from the source")
	}
	return nil
}

// fetchBootFiles fetches the instance's kernel and ramdisk images from
// Glance into its directory (as nova-compute's pre_live_migration does:
// they are files the guest's XML names and no migration stream carries),
// each to a temporary file renamed into place once complete.
func (d *Destination) fetchBootFiles(ctx context.Context, a preLiveArgs, dir string) error {
	for _, f := range []struct{ name, id string }{{"kernel", a.kernel}, {"ramdisk", a.ramdisk}} {
		if f.id == "" {
			continue
		}
		if d.o.Images == nil {
			return PreCheck("instance %s boots from %s image %s and this host has no Glance configured (glance)", a.uuid, f.name, f.id)
		}
		path := filepath.Join(dir, f.name)
		tmp, err := os.CreateTemp(dir, ".fetch-"+f.name+"-")
		if err != nil {
			return fmt.Errorf("fetch %s: %w", path, err)
		}
		_, n, err := d.o.Images.Fetch(ctx, f.id, tmp, maxBootFile)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), path)
		}
		if err != nil {
			os.Remove(tmp.Name())
			return fmt.Errorf("pre_live_migration %s: %s image %s: %w", a.uuid, f.name, f.id, err)
		}
		d.log(a.rctx, a.uuid).WithFields(logrus.Fields{"image_id": f.id, "path": path, "bytes": n}).Info(f.name + " image fetched from Glance")
	}
	return nil
}

// postAtDestination is post_live_migration_at_destination: the Instance
// now lives here. A re-sent call after it was applied (the source restarted
// before it learned the answer) is answered as the first one was.
func (d *Destination) postAtDestination(ctx context.Context, r *oslo.Request) (any, error) {
	inst, uuid, err := instanceArg(r)
	if err != nil {
		return nil, err
	}
	rctx := requestContext(r)
	node, err := d.cond.NodeOf(ctx, rctx, d.o.Host)
	if err != nil {
		return nil, fmt.Errorf("post_live_migration_at_destination: this host's compute node: %w", err)
	}
	if _, err := d.cond.Action(ctx, rctx, inst, "drop_migration_context", nil, nil); err != nil {
		return nil, err
	}
	if err := inst.SetAll(map[string]any{"host": d.o.Host, "node": node, "power_state": 1, "task_state": nil, "progress": 0}); err != nil {
		return nil, err
	}
	err = d.cond.Save(ctx, rctx, inst, map[string]any{"expected_task_state": "migrating"})
	if isUnexpectedTaskState(err) {
		err = d.alreadyHere(ctx, rctx, uuid, err)
	}
	if err != nil {
		return nil, err
	}
	if dir, err := disks.InstanceDir(d.o.InstancesPath, uuid); err == nil {
		os.Remove(filepath.Join(dir, preparedMark))
	}
	d.inbound.release(uuid)
	return nil, nil
}

// alreadyHere reads the instance back: a save refused for its task state
// counts as done when Nova's record already says the instance is here.
func (d *Destination) alreadyHere(ctx context.Context, rctx Context, uuid string, saveErr error) error {
	cur, err := d.cond.InstanceByUUID(ctx, rctx, uuid)
	if err != nil {
		return fmt.Errorf("%w (and reading it back: %w)", saveErr, err)
	}
	host, herr := Need[string](cur, "host")
	_, busy, terr := Opt[string](cur, "task_state")
	if herr == nil && terr == nil && host == d.o.Host && !busy {
		d.log(rctx, uuid).Info("post_live_migration_at_destination re-sent: Nova's record already has the instance here")
		return nil
	}
	return saveErr
}

// rollbackAtDestination is rollback_live_migration_at_destination (a
// cast): the instance directory ferry prepared here goes, and only that.
// Whenever the answer to "is the guest defined here, is this storage shared,
// did ferry make this directory" is unknown, everything stays, and the log
// says why.
func (d *Destination) rollbackAtDestination(ctx context.Context, r *oslo.Request) (any, error) {
	_, uuid, err := instanceArg(r)
	if err != nil {
		return nil, err
	}
	defer d.inbound.release(uuid)
	log := d.log(requestContext(r), uuid)
	keep := func(format string, a ...any) (any, error) {
		log.Warnf("rollback_live_migration_at_destination: instance %s: files kept: %s", uuid, fmt.Sprintf(format, a...))
		return nil, nil
	}
	dir, err := disks.InstanceDir(d.o.InstancesPath, uuid)
	if err != nil {
		return nil, err
	}
	switch def, err := d.defined(ctx, uuid); {
	case err != nil:
		return keep("libvirt did not say whether the guest is defined here: %v", err)
	case def:
		log.Errorf("rollback_live_migration_at_destination: instance %s is defined on this host; nothing removed, an operator must check where it runs", uuid)
		return nil, nil
	}
	destroy, present, err := boolArg(r, "destroy_disks")
	if err != nil {
		return keep("%v", err)
	}
	if !present || !destroy {
		return keep("destroy_disks is not true")
	}
	md := &Object{}
	ok, err := r.Arg("migrate_data", md)
	if err != nil || !ok {
		return keep("no readable migrate_data: whether the instance path is shared is unknown (%v)", err)
	}
	shared, err := Need[bool](md, "is_shared_instance_path")
	if err != nil {
		return keep("whether the instance path is shared is unknown: %v", err)
	}
	if shared {
		log.Info("rollback_live_migration_at_destination: the instance path is shared; nothing to remove")
		return nil, nil
	}
	if err := disks.RealDir(dir); err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, nil
		}
		return keep("%v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, preparedMark)); err != nil {
		return keep("%s was not created by ferry's pre_live_migration", dir)
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("rollback_live_migration_at_destination: %w", err)
	}
	log.WithField("path", dir).Info("rollback_live_migration_at_destination: the prepared instance directory removed")
	return nil, nil
}

// removeVolumeConnection: native mode carries only volumes that need no
// host-side connection (network disks, pre-presented block devices), so
// there is nothing to disconnect.
func (d *Destination) removeVolumeConnection(ctx context.Context, r *oslo.Request) (any, error) {
	if _, _, err := instanceArg(r); err != nil {
		return nil, err
	}
	return nil, nil
}

// dropMoveClaim: native mode makes no resource-tracker claims; the inbound
// slot goes.
func (d *Destination) dropMoveClaim(ctx context.Context, r *oslo.Request) (any, error) {
	_, uuid, err := instanceArg(r)
	if err != nil {
		return nil, err
	}
	d.inbound.release(uuid)
	return nil, nil
}
