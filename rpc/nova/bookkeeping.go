package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

// Allocations settles a live migration's Placement allocations, as
// nova-compute does on the source: released when the guest moved, given back
// to the instance when it did not (pkg/openstack).
type Allocations interface {
	ReleaseMigration(ctx context.Context, migration string) error
	RevertMigration(ctx context.Context, migration, instance string) error
}

// BookOptions configure the bookkeeping.
type BookOptions struct {
	Host          string
	InstancesPath string
	// ReleaseInbound: the destination is a ferryd (native mode), whose
	// pre-check holds an inbound slot: a migration that ends without a
	// rollback cast (refused, cancelled while queued, a shared instance path)
	// releases it with drop_move_claim_at_destination.
	ReleaseInbound bool
	// Companion: the destination is a stock nova-compute (companion mode):
	// the guest's XML is rewritten for it from its pre_live_migration
	// answer, Ports moves the Neutron bindings, and the reports follow
	// nova-compute's source side.
	Companion bool
	Ports     Ports
	// Plugs delivers the plug events pre_live_migration causes; a
	// migration waits PlugTimeout (vif_plugging_timeout) for them, and
	// fails without them when PlugFatal (vif_plugging_is_fatal).
	Plugs       *Plugs
	PlugTimeout time.Duration
	PlugFatal   bool
	// Notify, in companion mode, sends the notifications nova-compute's
	// source would (notes.go); nil or without a driver: none.
	Notify *NotifyOptions
	Log    *logrus.Entry
}

// Bookkeeper is the engine's Nova side on the source host: it prepares the
// destination (pre_live_migration) and delivers what each phase owes to
// Nova's records, in nova-compute's order (Reports), each report idempotent
// so that a re-send after a crash or an outage is harmless.
type Bookkeeper struct {
	o         BookOptions
	cond      *Conductor
	compute   Computes
	placement Allocations // nil: allocations left to an operator
	local     func(ctx context.Context) (Libvirt, error)
}

var (
	_ migration.Destination = (*Bookkeeper)(nil)
	_ migration.Records     = (*Bookkeeper)(nil)
)

// NewBookkeeper builds the bookkeeping; placement may be nil.
func NewBookkeeper(o BookOptions, cond *Conductor, compute Computes, placement Allocations,
	local func(ctx context.Context) (Libvirt, error)) *Bookkeeper {
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Bookkeeper{o: o, cond: cond, compute: compute, placement: placement, local: local}
}

// Prepare calls pre_live_migration on the destination and takes its
// migration address for the data streams and its answer for the records.
// When the destination cannot put overlays on its own bases, it asks again
// with the disks described flat, and the copy is full.
func (b *Bookkeeper) Prepare(ctx context.Context, m migration.Migration) (migration.Preparation, error) {
	st, err := decodeState(m.State)
	if err != nil {
		return migration.Preparation{}, err
	}
	// Compute RPC 6.0's arguments, no more: nova-compute's manager takes
	// (instance, disk, migrate_data), and an extra one is a TypeError there.
	args := map[string]any{"instance": st.Instance, "migrate_data": st.MigrateData, "disk": nil}
	if st.Disk != nil {
		args["disk"] = *st.Disk
	}
	var plugs *PlugWait
	if b.o.Companion && b.o.Plugs != nil { // registered before the call that causes them, as nova-compute does
		nw, err := networkInfo(st.Instance)
		if err != nil {
			return migration.Preparation{}, err
		}
		plugs = b.o.Plugs.Expect(m.InstanceUUID, plugTimeEvents(nw))
		defer plugs.Cancel()
	}
	rc := callContext(m, st)
	res, err := b.compute.call(ctx, rc, m.Dest.Host, "pre_live_migration", args, true)
	// Only ferry's own destination refuses overlays on a base it lacks; a
	// stock nova-compute fetches the base, and a retry after its failure
	// would meet the instance directory it made (DestinationDiskExists).
	if err != nil && st.FlatDisk != nil && ctx.Err() == nil && !b.o.Companion && isPreCheck(err) {
		st.CopyWhy = fmt.Sprintf("the destination refused the overlays: %v", err)
		b.o.Log.WithFields(m.LogFields()).WithError(err).Warn("pre_live_migration with backing files refused; retrying for a full disk copy")
		args["disk"], st.Disk, st.FlatDisk = *st.FlatDisk, st.FlatDisk, nil
		res, err = b.compute.call(ctx, rc, m.Dest.Host, "pre_live_migration", args, true)
	}
	if err != nil {
		return migration.Preparation{}, err
	}
	md := &Object{}
	if err := json.Unmarshal(res, md); err != nil {
		return migration.Preparation{}, fmt.Errorf("pre_live_migration answered %.200s: %w", res, err)
	}
	md.Changes = nil
	st.MigrateData = md
	p := migration.Preparation{}
	if p.MigrationAddr, _, err = Opt[string](md, "target_connect_addr"); err != nil {
		return p, err
	}
	if len(m.Job.Disks) > 0 {
		p.Copy, p.CopyNote = virt.CopyFull, "full: "+st.CopyWhy
		if st.FlatDisk != nil {
			p.Copy, p.CopyNote = virt.CopyIncremental, "incremental: top layers only; the destination has the backing files"
		}
	}
	if plugs != nil {
		if err := b.waitPlugs(ctx, m, md, plugs); err != nil {
			return p, err
		}
	}
	if b.o.Companion {
		if err := b.stillMigrating(ctx, st); err != nil {
			return p, err
		}
		if p.DestXML, err = b.destinationXML(ctx, m, md); err != nil {
			return p, fmt.Errorf("the guest's XML for %s: %w", m.Dest.Host, err)
		}
	}
	p.State, err = st.encode()
	return p, err
}

// waitPlugs waits for the plug events when the destination asks for it
// (wait_for_vif_plugged); without them the migration fails if PlugFatal,
// as nova-compute's vif_plugging_is_fatal says, or goes on with a warning.
func (b *Bookkeeper) waitPlugs(ctx context.Context, m migration.Migration, md *Object, w *PlugWait) error {
	if want, _, _ := Opt[bool](md, "wait_for_vif_plugged"); !want {
		return nil
	}
	timeout := b.o.PlugTimeout
	if timeout <= 0 {
		timeout = 300 * time.Second
	}
	err := w.Wait(ctx, timeout)
	if err != nil && errors.Is(err, errdefs.ErrTimeout) && !b.o.PlugFatal {
		b.o.Log.WithFields(m.LogFields()).WithError(err).Warn("plug events missing; going on (vif_plugging_is_fatal is false)")
		return nil
	}
	return err
}

// stillMigrating re-reads the instance before the job starts: a
// nova-compute that restarted meanwhile reset its task state
// (_reset_live_migration), and a guest moved now would land on a host
// Nova's records do not name.
func (b *Bookkeeper) stillMigrating(ctx context.Context, st *State) error {
	uuid, err := UUID(st.Instance, "uuid")
	if err != nil {
		return err
	}
	cur, err := b.cond.InstanceByUUID(ctx, st.Context, uuid)
	if err != nil {
		return fmt.Errorf("re-read the instance before the job starts: %w", err)
	}
	if task, _, _ := Opt[string](cur, "task_state"); task != "migrating" {
		return fmt.Errorf("%w: the instance's task state is %q, not migrating: nova-compute reset it (a restart?); the guest stays here",
			errdefs.ErrFailedPrecondition, task)
	}
	return nil
}

// The reports, by name.
const (
	repEventStart  = "event-start"  // compute_live_migration starts (wrap_instance_event)
	repEventFinish = "event-finish" // … and finishes: at once when queued, with the reason when refused
	repFerryStart  = "ferry-start"  // ferry_live_migration: ferry's own event, with the outcome's reason
	repFerryFinish = "ferry-finish"
	repStatus      = "status"               // Migration.status
	repFault       = "fault"                // InstanceFault with the reason
	repClearTask   = "clear-task-state"     // Instance.task_state = None
	repInstError   = "instance-error"       // vm_state = error, task_state = None
	repRevert      = "placement-revert"     // allocations given back to the instance
	repRelease     = "placement-release"    // the migration's allocation removed
	repRollbackDst = "rollback-destination" // cast rollback_live_migration_at_destination
	repFinishDst   = "finish-destination"   // call post_live_migration_at_destination
	repCleanupSrc  = "cleanup-source"       // the source's instance directory
	repReleaseDst  = "release-destination"  // call drop_move_claim_at_destination (native mode)
	repActivate    = "activate-bindings"    // the destination's port bindings activated (companion mode)

	// The notifications nova-compute's source emits (companion mode, when
	// configured): each sends the legacy and the versioned one (notify.go).
	repNotePostStart     = "notify-post-start"     // _post_live_migration, before the bindings move
	repNotePostEnd       = "notify-post-end"       // … after post_live_migration_at_destination
	repNoteRollbackStart = "notify-rollback-start" // _rollback_live_migration, before the destination's rollback
	repNoteRollbackEnd   = "notify-rollback-end"   // … after the task state is cleared, before the status
	repNoteAbortStart    = "notify-abort-start"    // live_migration_abort
	repNoteAbortEnd      = "notify-abort-end"
	repNoteForceStart    = "notify-force-complete-start" // live_migration_force_complete
	repNoteForceEnd      = "notify-force-complete-end"
)

// Events ferry records on the instance's live-migration action.
const (
	eventLiveMigration  = "compute_live_migration"
	eventFerryMigration = "ferry_live_migration"
)

// Reports is what each move owes Nova, in nova-compute's (Zed's) order: a
// queued migration's compute_live_migration event ends as soon as it is
// queued; after a failure Placement is given back first, then the
// destination is rolled back, then the task state cleared, and the status
// comes last; after success the destination takes the instance, the
// source's files go, the status becomes completed, and then the
// allocations are released.
func (b *Bookkeeper) Reports(m migration.Migration, from, to migration.Phase) []string {
	if m.External { // Nova's records ended it (nova-compute's restart recovery): they are its
		return []string{repFerryFinish}
	}
	if b.o.Companion {
		return b.withNotes(companionReports(from, to), from, to)
	}
	switch to {
	case migration.PhaseQueued:
		return []string{repEventStart, repStatus, repEventFinish, repFerryStart}
	case migration.PhasePreparing, migration.PhaseRunning, migration.PhasePostCopy:
		return []string{repStatus}
	case migration.PhaseCompleted:
		return []string{repFinishDst, repCleanupSrc, repStatus, repRelease, repFerryFinish}
	case migration.PhaseFailed, migration.PhaseCancelled:
		if from == migration.PhaseQueued {
			return b.withRelease([]string{repRevert, repClearTask, repStatus, repFerryFinish})
		}
		return []string{repRevert, repRollbackDst, repClearTask, repStatus, repFerryFinish}
	case migration.PhaseError:
		if from == migration.PhaseNew { // refused before it was queued
			return b.withRelease([]string{repEventStart, repFault, repRevert, repClearTask, repStatus, repEventFinish})
		}
		// Where the guest runs is uncertain: both hosts' claims stay.
		return []string{repInstError, repFault, repStatus, repFerryFinish}
	}
	return nil
}

// companionReports are the reports of a migration to a stock
// nova-compute, in the order of nova-compute's source side (Zed): at the
// switch to post-copy the network follows the guest at once; after success
// the bindings are activated (migrate_instance_start), the source's files
// go, then the destination's post_live_migration_at_destination, the
// status, and Placement last; after a failure Placement is given back,
// the destination rolled back, the task state cleared, the status last.
func companionReports(from, to migration.Phase) []string {
	switch to {
	case migration.PhaseQueued:
		return []string{repEventStart, repStatus, repEventFinish, repFerryStart}
	case migration.PhasePreparing, migration.PhaseRunning:
		return []string{repStatus}
	case migration.PhasePostCopy:
		return []string{repStatus, repActivate}
	case migration.PhaseCompleted:
		return []string{repActivate, repCleanupSrc, repFinishDst, repStatus, repRelease, repFerryFinish}
	case migration.PhaseFailed, migration.PhaseCancelled:
		if from == migration.PhaseQueued {
			return []string{repRevert, repClearTask, repStatus, repFerryFinish}
		}
		return []string{repRevert, repRollbackDst, repClearTask, repStatus, repFerryFinish}
	case migration.PhaseError:
		if from == migration.PhaseNew {
			return []string{repEventStart, repFault, repRevert, repClearTask, repStatus, repEventFinish}
		}
		return []string{repInstError, repFault, repStatus, repFerryFinish}
	}
	return nil
}

// withRelease adds, in native mode, the release of the destination's
// inbound slot after Placement's revert.
func (b *Bookkeeper) withRelease(names []string) []string {
	if !b.o.ReleaseInbound {
		return names
	}
	i := slices.Index(names, repRevert) + 1
	return slices.Insert(names, i, repReleaseDst)
}

// Deliver delivers one report.
func (b *Bookkeeper) Deliver(ctx context.Context, m migration.Migration, r migration.Report) error {
	st, err := decodeState(m.State)
	if err != nil {
		return fmt.Errorf("%w: %w", migration.ErrSkipped, err)
	}
	rc := callContext(m, st)
	switch r.Name {
	case repEventStart:
		return b.cond.EventStart(ctx, rc, m.InstanceUUID, eventLiveMigration, b.o.Host)
	case repEventFinish:
		failure := ""
		if r.Phase == migration.PhaseError {
			failure = r.Reason
		}
		return b.cond.EventFinish(ctx, rc, m.InstanceUUID, eventLiveMigration, failure)
	case repFerryStart:
		return b.cond.EventStart(ctx, rc, m.InstanceUUID, eventFerryMigration, b.o.Host)
	case repFerryFinish:
		failure := ""
		if r.Phase == migration.PhaseFailed || r.Phase == migration.PhaseError {
			failure = r.Reason
		}
		return b.cond.EventFinish(ctx, rc, m.InstanceUUID, eventFerryMigration, failure)
	case repStatus:
		return b.status(ctx, st, r.Phase)
	case repFault:
		return b.cond.Fault(ctx, rc, m.InstanceUUID, b.o.Host, r.Reason)
	case repClearTask:
		return b.saveInstance(ctx, st, map[string]any{"task_state": nil, "progress": 0}, "")
	case repInstError:
		return b.saveInstance(ctx, st, map[string]any{"vm_state": "error", "task_state": nil}, "error")
	case repRevert, repRelease:
		return b.settle(ctx, m, st, r.Name)
	case repRollbackDst:
		return b.rollbackDestination(ctx, m, st)
	case repFinishDst:
		_, err := b.compute.call(ctx, rc, m.Dest.Host, "post_live_migration_at_destination",
			map[string]any{"instance": st.Instance, "block_migration": st.BlockMig}, true)
		return err
	case repCleanupSrc:
		return b.cleanupSource(ctx, m, st)
	case repReleaseDst:
		return b.releaseDestination(ctx, m, st)
	case repActivate:
		return b.activateBindings(ctx, m, st)
	case repNotePostStart, repNotePostEnd, repNoteRollbackStart, repNoteRollbackEnd,
		repNoteAbortStart, repNoteAbortEnd, repNoteForceStart, repNoteForceEnd:
		return b.deliverNote(ctx, m, st, r)
	}
	return fmt.Errorf("%w: unknown report %q", migration.ErrSkipped, r.Name)
}

var rank = map[migration.Phase]int{
	migration.PhaseQueued: 1, migration.PhasePreparing: 2, migration.PhaseRunning: 3, migration.PhasePostCopy: 4,
	migration.PhaseCompleted: 5, migration.PhaseFailed: 5, migration.PhaseCancelled: 5, migration.PhaseError: 5,
}

// status saves Migration.status, unless Nova's record is already there or
// beyond (a re-send after a restart, or nova-compute's own recovery set it).
func (b *Bookkeeper) status(ctx context.Context, st *State, p migration.Phase) error {
	mig := st.Migration.fresh()
	if st.NovaID != 0 {
		cur, err := b.cond.MigrationByID(ctx, st.Context, st.NovaID, st.Migration.Version)
		if err != nil {
			return err
		}
		have, err := Need[string](cur, "status")
		if err != nil {
			return err
		}
		switch r, ok := rank[migration.Phase(have)]; {
		case ok && migration.Phase(have) == p:
			return nil // applied before
		case ok && r == 5:
			return fmt.Errorf("%w: Nova's record already ended %s", migration.ErrSkipped, have)
		case ok && r >= rank[p]:
			return nil
		}
		mig = cur
	}
	if err := mig.Set("status", string(p)); err != nil {
		return err
	}
	return b.cond.Save(ctx, st.Context, mig, nil)
}

// saveInstance saves fields of the Instance with expected_task_state
// migrating. Nova refusing it for the task state counts as delivered when
// its record already shows what the save would have made it (vm_state
// wantVM, when set, and no task), and as skipped when someone else changed
// the instance meanwhile.
func (b *Bookkeeper) saveInstance(ctx context.Context, st *State, fields map[string]any, wantVM string) error {
	inst := st.Instance.fresh()
	if err := inst.SetAll(fields); err != nil {
		return err
	}
	err := b.cond.Save(ctx, st.Context, inst, map[string]any{"expected_task_state": []string{"migrating"}})
	if !isUnexpectedTaskState(err) {
		return err
	}
	uuid, _ := Need[string](inst, "uuid")
	cur, rerr := b.cond.InstanceByUUID(ctx, st.Context, uuid)
	if rerr != nil {
		return fmt.Errorf("%w (and reading it back: %w)", err, rerr)
	}
	task, busy, _ := Opt[string](cur, "task_state")
	vm, _, _ := Opt[string](cur, "vm_state")
	if !busy && (wantVM == "" || vm == wantVM) {
		return nil
	}
	return fmt.Errorf("%w: Nova's record moved on (task_state %q, vm_state %q): %w", migration.ErrSkipped, task, vm, err)
}

// settle releases or gives back the allocations the conductor moved to the
// migration.
func (b *Bookkeeper) settle(ctx context.Context, m migration.Migration, st *State, what string) error {
	if b.placement == nil {
		return fmt.Errorf("%w: placement is not configured (auth_type none): the allocations are left to an operator", migration.ErrSkipped)
	}
	mig, err := UUID(st.Migration, "uuid")
	if err != nil {
		return fmt.Errorf("%w: %w", migration.ErrSkipped, err)
	}
	if what == repRelease {
		return b.placement.ReleaseMigration(ctx, mig)
	}
	return b.placement.RevertMigration(ctx, mig, m.InstanceUUID)
}

// rollbackDestination casts rollback_live_migration_at_destination, as
// nova-compute does when the instance path is not shared.
func (b *Bookkeeper) rollbackDestination(ctx context.Context, m migration.Migration, st *State) error {
	md := st.MigrateData
	shared, err := Need[bool](md, "is_shared_instance_path")
	if err != nil {
		return fmt.Errorf("%w: %w", migration.ErrSkipped, err)
	}
	if shared { // nova-compute tells the destination nothing then
		if b.o.Companion { // but deletes its bindings itself
			return b.deleteBindings(ctx, m, st)
		}
		return b.releaseDestination(ctx, m, st)
	}
	sharedBlock, _, err := Opt[bool](md, "is_shared_block_storage")
	if err != nil {
		return fmt.Errorf("%w: %w", migration.ErrSkipped, err)
	}
	return b.compute.cast(ctx, st.Context, m.Dest.Host, "rollback_live_migration_at_destination",
		map[string]any{"instance": st.Instance, "destroy_disks": !sharedBlock, "migrate_data": md})
}

// releaseDestination frees the inbound slot a ferryd destination's
// pre-check held (native mode only; nova-compute holds none).
func (b *Bookkeeper) releaseDestination(ctx context.Context, m migration.Migration, st *State) error {
	if !b.o.ReleaseInbound || m.Dest.Host == "" {
		return nil
	}
	_, err := b.compute.call(ctx, st.Context, m.Dest.Host, "drop_move_claim_at_destination",
		map[string]any{"instance": st.Instance}, false)
	return err
}

// cleanupSource removes the source's instance directory after the guest
// moved, unless the instance path is shared — and only once this host's
// libvirt says the guest is no longer defined here. An unknown answer is
// retried; a guest still defined here keeps its files.
func (b *Bookkeeper) cleanupSource(ctx context.Context, m migration.Migration, st *State) error {
	shared, err := Need[bool](st.MigrateData, "is_shared_instance_path")
	if err != nil {
		return fmt.Errorf("%w: files kept: whether the instance path is shared is unknown: %w", migration.ErrSkipped, err)
	}
	if shared {
		return nil
	}
	dir, err := disks.InstanceDir(b.o.InstancesPath, m.InstanceUUID)
	if err != nil {
		return fmt.Errorf("%w: %w", migration.ErrSkipped, err)
	}
	local, err := b.local(ctx)
	if err != nil {
		return fmt.Errorf("is the guest still defined here? %w", err)
	}
	_, err = local.DomainState(ctx, m.InstanceUUID)
	local.Close()
	switch {
	case err == nil:
		return fmt.Errorf("%w: files kept: the guest is still defined on this host", migration.ErrSkipped)
	case !errors.Is(err, errdefs.ErrNotFound):
		return fmt.Errorf("is the guest still defined here? %w", err)
	}
	switch err := disks.RealDir(dir); {
	case errors.Is(err, errdefs.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("%w: files kept: %w", migration.ErrSkipped, err)
	}
	return os.RemoveAll(dir)
}

// Progress saves the job's byte counts on the Migration and the progress
// on the Instance, as Nova's save_stats does.
func (b *Bookkeeper) Progress(ctx context.Context, m migration.Migration, js virt.JobStats) error {
	st, err := decodeState(m.State)
	if err != nil {
		return err
	}
	mg := st.Migration.fresh()
	for k, v := range map[string]uint64{"memory_total": js.MemTotal, "memory_processed": js.MemProcessed,
		"memory_remaining": js.MemRemaining, "disk_total": js.DiskTotal, "disk_processed": js.DiskProcessed,
		"disk_remaining": js.DiskRemaining} {
		if err := mg.Set(k, v); err != nil {
			return err
		}
	}
	if err := b.cond.Save(ctx, st.Context, mg, nil); err != nil {
		return err
	}
	progress := 0
	if js.MemTotal > 0 {
		progress = 100 - int((js.MemRemaining*100+js.MemTotal/2)/js.MemTotal)
	}
	inst := st.Instance.fresh()
	if err := inst.Set("progress", progress); err != nil {
		return err
	}
	return b.cond.Save(ctx, st.Context, inst, nil)
}
