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

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/qemuimg"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

// Engine is the part of migration.Manager the source endpoints use.
type Engine interface {
	Start(ctx context.Context, req migration.Request) (migration.Migration, error)
	Refuse(ctx context.Context, req migration.Request, reason string) (migration.Migration, error)
	Abort(ctx context.Context, id string) error
	ForceComplete(ctx context.Context, id string) error
	List() []migration.Migration
}

// SourceOptions configure the source endpoints.
type SourceOptions struct {
	Host             string
	InstancesPath    string
	ImageCache       string // Nova's image cache, where backing files live; default InstancesPath/_base
	Bandwidth        uint64 // MiB/s
	NativeTLS        bool
	Parallel         int
	Compression      []string
	Policy           migration.Policy // budgets and permits
	CompletionPerGiB time.Duration    // live_migration_completion_timeout; 0 = none
	// Companion: the destinations are stock nova-computes (companion
	// mode): instances with Neutron ports are carried, what only Nova's XML
	// rewrite carries is refused.
	Companion bool
	Log       *logrus.Entry
}

// Source serves the source's side of Nova's live-migration flow: the
// source pre-check, and the live_migration, _force_complete and _abort
// casts, which it turns into the engine's requests and commands.
type Source struct {
	o      SourceOptions
	local  func(ctx context.Context) (Libvirt, error)
	peers  Peers
	cond   *Conductor
	engine Engine
}

// NewSource builds the source endpoints.
func NewSource(o SourceOptions, peers Peers, local func(ctx context.Context) (Libvirt, error), cond *Conductor, engine Engine) *Source {
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if o.ImageCache == "" {
		o.ImageCache = filepath.Join(o.InstancesPath, disks.CacheSubdir)
	}
	return &Source{o: o, local: local, peers: peers, cond: cond, engine: engine}
}

// Methods are the source's endpoints by RPC method name.
func (s *Source) Methods() map[string]oslo.HandlerFunc {
	return map[string]oslo.HandlerFunc{
		"check_can_live_migrate_source": s.checkSource,
		"live_migration":                s.liveMigration,
		"live_migration_force_complete": s.forceComplete,
		"live_migration_abort":          s.abort,
	}
}

// errNoGuest: this host's libvirt has no such domain (or cannot show it).
var errNoGuest = errors.New("guest not found on this host")

// localGuest reads a guest's domain XML from this host's libvirt.
func (s *Source) localGuest(ctx context.Context, uuid string) (virt.Guest, error) {
	g, _, err := s.localDomain(ctx, uuid)
	return g, err
}

// localDomain reads a guest's domain XML from this host's libvirt, parsed
// and as it is.
func (s *Source) localDomain(ctx context.Context, uuid string) (virt.Guest, string, error) {
	local, err := s.local(ctx)
	if err != nil {
		return virt.Guest{}, "", err
	}
	defer local.Close()
	xml, err := local.DomainXML(ctx, uuid, false)
	if err != nil {
		return virt.Guest{}, "", fmt.Errorf("%w: %w", errNoGuest, err)
	}
	g, err := virt.ParseGuest(xml)
	return g, xml, err
}

// checkSource is check_can_live_migrate_source, on the source: shared
// storage, what native mode cannot carry, disk space.
func (s *Source) checkSource(ctx context.Context, r *oslo.Request) (any, error) {
	inst, uuid, err := instanceArg(r)
	if err != nil {
		return nil, err
	}
	md, err := objArg(r, "dest_check_data")
	if err != nil {
		return nil, err
	}
	if ports := neutronPorts(inst); len(ports) > 0 {
		return nil, PreCheck("instance %s has Neutron ports (%s): native mode cannot move port bindings; run ferry in companion mode beside nova-compute",
			uuid, strings.Join(ports, ", "))
	}
	g, err := s.localGuest(ctx, uuid)
	if errors.Is(err, errNoGuest) {
		return nil, PreCheck("instance %s is not running on %s: %v", uuid, s.o.Host, err)
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
	sharedPath, err := s.sharedTestFile(md)
	if err != nil {
		return nil, err
	}
	sel := disks.Select(g.Disks, volumesOf(g), s.sharedFn(sharedPath))
	if !sharedPath {
		if err := s.checkCarryOver(g, uuid); err != nil {
			return nil, err
		}
	}
	sharedBlock := len(sel.Copy) == 0
	block := !(sharedPath || sharedBlock)
	asked, askedOK, err := Opt[bool](md, "block_migration")
	if err != nil {
		return nil, err
	}
	if askedOK && asked && sharedPath {
		return nil, &Exception{Class: "InvalidLocalStorage", Message: fmt.Sprintf("Block migration can not be used with shared storage. %s", uuid),
			Kwargs: map[string]any{"path": s.o.InstancesPath, "reason": "block migration with shared storage"}}
	}
	if askedOK {
		block = asked
	}
	if block {
		if err := checkSpace(ctx, g, sel.Copy, md, uuid); err != nil {
			return nil, err
		}
	}
	if err := md.SetAll(map[string]any{
		"is_volume_backed": false, "is_shared_instance_path": sharedPath, "is_shared_block_storage": sharedBlock,
		"block_migration": block, "instance_relative_path": uuid,
	}); err != nil {
		return nil, err
	}
	return md, nil
}

// checkCarryOver refuses the read-only local disks (a config drive) the
// destination cannot carry over before the migration.
func (s *Source) checkCarryOver(g virt.Guest, uuid string) error {
	dir, err := disks.InstanceDir(s.o.InstancesPath, uuid)
	if err != nil {
		return err
	}
	carry, refuse := disks.CarryOver(g.Disks, dir)
	for _, d := range carry {
		if st, err := os.Stat(d.Source); err != nil || st.Size() > disks.MaxCarry {
			refuse = append(refuse, fmt.Sprintf("%s (%s) is missing or larger than %d MiB", d.Target, d.Source, disks.MaxCarry>>20))
		}
	}
	if len(refuse) > 0 {
		return PreCheck("read-only local disks cannot be carried over: %s", strings.Join(refuse, "; "))
	}
	return nil
}

// checkSpace refuses a block migration whose disks the destination has no
// room for (disk_available_mb of its check data).
func checkSpace(ctx context.Context, g virt.Guest, copySet []string, md *Object, uuid string) error {
	imgs, err := images(ctx, g, copySet)
	if err != nil {
		return err
	}
	var need int64
	for _, im := range imgs {
		need += im.VirtualSize >> 20
	}
	avail, ok, err := Opt[int64](md, "disk_available_mb")
	if err != nil {
		return err
	}
	if ok && need > avail {
		return PreCheck("unable to migrate %s: disks need %d MiB, the destination has %d MiB", uuid, need, avail)
	}
	return nil
}

// sharedTestFile tells whether the destination's shared-storage test file
// is visible here. Its name comes from the message: only a plain file name
// directly in the instances path is looked at.
func (s *Source) sharedTestFile(md *Object) (bool, error) {
	f, ok, err := Opt[string](md, "filename")
	if err != nil || !ok {
		return false, err
	}
	p := filepath.Join(s.o.InstancesPath, f)
	if disks.ChildOf(s.o.InstancesPath, p) != nil || f != filepath.Base(f) {
		return false, fmt.Errorf("dest_check_data.filename: %w: %q is not a file name", errdefs.ErrInvalidArgument, f)
	}
	_, err = os.Lstat(p)
	return err == nil, nil
}

// sharedFn says which disk paths are on the shared instance path.
func (s *Source) sharedFn(shared bool) func(string) bool {
	root := filepath.Clean(s.o.InstancesPath) + "/"
	return func(p string) bool { return shared && strings.HasPrefix(filepath.Clean(p), root) }
}

func neutronPorts(inst *Object) []string {
	cache, err := inst.Child("info_cache")
	if err != nil {
		return nil
	}
	nwJSON, ok, err := Opt[string](cache, "network_info")
	if err != nil || !ok {
		return nil
	}
	var vifs []struct{ ID string }
	if json.Unmarshal([]byte(nwJSON), &vifs) != nil {
		return []string{"(unreadable network_info)"}
	}
	var ids []string
	for _, v := range vifs {
		ids = append(ids, v.ID)
	}
	return ids
}

// images reads the copied disks' images: format, sizes, backing file.
func images(ctx context.Context, g virt.Guest, copySet []string) ([]disks.Image, error) {
	var out []disks.Image
	for _, d := range g.Disks {
		if !slices.Contains(copySet, d.Target) {
			continue
		}
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

// liveMigration is the live_migration cast. A message that does not name
// an instance and a migration by their uuids cannot be reported to Nova and
// is logged with the reason. Anything else either starts a migration (the
// cast is acked once it is journalled) or is refused: the refusal is
// journalled and reported to Nova like any outcome, so the instance never
// stays MIGRATING.
func (s *Source) liveMigration(ctx context.Context, r *oslo.Request) (any, error) {
	inst, uuid, err := instanceArg(r)
	if err != nil {
		return nil, err
	}
	mig, err := objArg(r, "migration")
	if err != nil {
		return nil, err
	}
	migUUID, err := UUID(mig, "uuid")
	if err != nil {
		return nil, fmt.Errorf("live_migration: %w", err)
	}
	novaID, err := Need[int64](mig, "id")
	if err != nil {
		return nil, fmt.Errorf("live_migration: %w", err)
	}
	st := &State{Instance: inst, Migration: mig, Context: requestContext(r), NovaID: novaID}
	req := migration.Request{ID: migUUID, InstanceUUID: uuid, Credentials: Context(r.Context).JSON(),
		RequestID: st.Context.Str("request_id"), GlobalRequestID: st.Context.Str("global_request_id")}
	req, err = s.plan(ctx, r, req, st)
	if err == nil {
		_, err = s.engine.Start(ctx, req)
		if errors.Is(err, errdefs.ErrConflict) {
			s.o.Log.WithFields(req.LogFields()).Info("live_migration re-sent for a known migration; nothing started")
			return nil, r.Ack()
		}
	}
	if err != nil {
		if req.State == nil {
			var eerr error
			if req.State, eerr = st.encode(); eerr != nil {
				return nil, eerr
			}
		}
		s.o.Log.WithFields(req.LogFields()).WithError(err).Warn("live_migration refused")
		if _, rerr := s.engine.Refuse(ctx, req, err.Error()); rerr != nil {
			return nil, fmt.Errorf("live_migration refused (%w), and the refusal not recorded: %w", err, rerr)
		}
	}
	return nil, r.Ack()
}

// plan turns the cast into the engine's request: the destination (a
// configured peer or the one Nova's records name), the copy set, how the
// disks are described to the destination, the policy.
func (s *Source) plan(ctx context.Context, r *oslo.Request, req migration.Request, st *State) (migration.Request, error) {
	md, err := objArg(r, "migrate_data")
	if err != nil {
		return req, err
	}
	st.MigrateData = md
	shared, err := Need[bool](md, "is_shared_instance_path")
	if err != nil {
		return req, err
	}
	block, _, err := Opt[bool](md, "block_migration")
	if err != nil {
		return req, err
	}
	var dest string
	if ok, err := r.Arg("dest", &dest); err != nil || !ok || dest == "" {
		return req, fmt.Errorf("live_migration: %w: no destination host (%v)", errdefs.ErrInvalidArgument, err)
	}
	if _, err := r.Arg("block_migration", &st.BlockMig); err != nil {
		return req, err
	}
	if err := s.verifyDest(ctx, st, dest); err != nil {
		return req, err
	}
	g, doc, err := s.localDomain(ctx, req.InstanceUUID)
	if err != nil {
		return req, fmt.Errorf("instance %s: %w", req.InstanceUUID, err)
	}
	if s.o.Companion {
		if err := companionCheck(st, g, doc); err != nil {
			return req, err
		}
	} else if ports := neutronPorts(st.Instance); len(ports) > 0 {
		return req, PreCheck("instance %s has Neutron ports (%s): native mode cannot move port bindings", req.InstanceUUID, strings.Join(ports, ", "))
	}
	sel := disks.Select(g.Disks, volumesOf(g), s.sharedFn(shared))
	req.Dest = s.peers.dest(dest)
	if req.DestCheckURI, err = s.peers.libvirtURI(dest); err != nil {
		return req, err
	}
	req.Job = migration.Job{Bandwidth: s.o.Bandwidth, NativeTLS: s.o.NativeTLS, Parallel: s.o.Parallel, Compression: s.o.Compression}
	var imgs []disks.Image
	if block && len(sel.Copy) > 0 {
		req.Job.Disks = sel.Copy
		if imgs, err = s.describeDisks(ctx, g, sel.Copy, st); err != nil {
			return req, err
		}
	}
	req.Policy = s.o.Policy
	if s.o.CompletionPerGiB > 0 {
		req.Policy.CompletionTimeout = time.Duration(completionGiB(st.Instance, imgs)) * s.o.CompletionPerGiB
	}
	if req.State, err = st.encode(); err != nil {
		return req, err
	}
	return req, nil
}

// verifyDest checks the destination against the configured peers, or else
// against the destination Nova's own record of the migration names.
func (s *Source) verifyDest(ctx context.Context, st *State, dest string) error {
	record := ""
	if s.peers.needsRecord(dest) {
		m, err := s.cond.MigrationByID(ctx, st.Context, st.NovaID, st.Migration.Version)
		if err != nil {
			return fmt.Errorf("verify the destination %q with Nova's records: %w", dest, err)
		}
		if record, err = Need[string](m, "dest_compute"); err != nil {
			return err
		}
	}
	return s.peers.verify(dest, "destination", record)
}

// describeDisks reads the copied disks' images and describes them to the
// destination in Nova's disk format: with their bases when an incremental
// copy may work (and flat, for the retry when the destination lacks them).
func (s *Source) describeDisks(ctx context.Context, g virt.Guest, copySet []string, st *State) ([]disks.Image, error) {
	imgs, err := images(ctx, g, copySet)
	if err != nil {
		return nil, err
	}
	offer, inc, why := disks.Offer(imgs, s.o.ImageCache)
	disk, err := diskInfo(offer)
	if err != nil {
		return nil, err
	}
	st.Disk, st.CopyWhy = &disk, why
	if inc {
		flat, err := diskInfo(disks.Flat(imgs))
		if err != nil {
			return nil, err
		}
		st.FlatDisk = &flat
	}
	return imgs, nil
}

// completionGiB is what Nova's completion timeout is counted in: the
// guest's RAM and each copied disk, every one at least 2 GiB.
func completionGiB(inst *Object, imgs []disks.Image) int64 {
	var memMB int64
	if f, err := inst.Child("flavor"); err == nil {
		memMB, _, _ = Opt[int64](f, "memory_mb")
	}
	if memMB == 0 {
		memMB, _, _ = Opt[int64](inst, "memory_mb")
	}
	gib := max(memMB>>10, 2)
	for _, im := range imgs {
		gib += max(im.ActualSize>>30, 2)
	}
	return gib
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

// activeFor finds the migration of an instance that has not ended, the one
// with Nova's id novaID when that is not 0.
func (s *Source) activeFor(instance string, novaID int64) (migration.Migration, bool) {
	for _, m := range s.engine.List() {
		if m.InstanceUUID != instance || m.Phase.Terminal() {
			continue
		}
		if novaID != 0 {
			if st, err := decodeState(m.State); err != nil || st.NovaID != novaID {
				continue
			}
		}
		return m, true
	}
	return migration.Migration{}, false
}

func (s *Source) forceComplete(ctx context.Context, r *oslo.Request) (any, error) {
	_, uuid, err := instanceArg(r)
	if err != nil {
		return nil, err
	}
	m, ok := s.activeFor(uuid, 0)
	if !ok {
		return nil, &Exception{Class: "NoActiveMigrationForInstance",
			Message: fmt.Sprintf("Active live migration for instance %s not found", uuid), Kwargs: map[string]any{"instance_id": uuid}}
	}
	r.Ack()
	return nil, s.engine.ForceComplete(ctx, m.ID)
}

func (s *Source) abort(ctx context.Context, r *oslo.Request) (any, error) {
	_, uuid, err := instanceArg(r)
	if err != nil {
		return nil, err
	}
	var novaID int64
	if ok, err := r.Arg("migration_id", &novaID); err != nil || !ok || novaID <= 0 {
		return nil, fmt.Errorf("live_migration_abort: %w: migration_id must be Nova's integer migration id (%v)", errdefs.ErrInvalidArgument, err)
	}
	m, ok := s.activeFor(uuid, novaID)
	if !ok {
		return nil, &Exception{Class: "InvalidMigrationState",
			Message: fmt.Sprintf("Migration %d state of instance %s is not active", novaID, uuid)}
	}
	r.Ack()
	return nil, s.engine.Abort(ctx, m.ID)
}
