package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

var _ migration.Hooks = (*Compute)(nil)

// state returns a migration's Nova objects, kept in memory between hooks
// (object_action replies update them) and rebuilt from the journal after a
// restart.
func (c *Compute) state(m *migration.Migration) (*novaState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ns, ok := c.novaState[m.ID]; ok {
		return ns, nil
	}
	ns := &novaState{}
	if err := json.Unmarshal(m.Extra, ns); err != nil || ns.Instance == nil || ns.Migration == nil {
		return nil, fmt.Errorf("migration %s: no Nova objects in its journal: %v", m.ID, err)
	}
	if len(ns.Context) == 0 {
		ns.Context = AdminContext()
	}
	c.novaState[m.ID] = ns
	return ns, nil
}

func (c *Compute) log(m *migration.Migration) *logrus.Entry {
	return c.o.Log.WithFields(logrus.Fields{"migration_id": m.ID, "instance_uuid": m.InstanceUUID})
}

var rank = map[migration.Phase]int{
	migration.PhaseQueued: 1, migration.PhasePreparing: 2, migration.PhaseRunning: 3, migration.PhasePostCopy: 4,
	migration.PhaseCompleted: 5, migration.PhaseFailed: 5, migration.PhaseCancelled: 5, migration.PhaseError: 5,
}

// Phase saves Migration.status through the conductor, records the
// instance-action events, and after a restart first reads the status back
// so the conductor never sees one twice or out of order.
func (c *Compute) Phase(ctx context.Context, m *migration.Migration) {
	ns, err := c.state(m)
	if err != nil {
		c.log(m).WithError(err).Error("cannot report the phase to Nova")
		return
	}
	log := c.log(m).WithField("status", m.Phase)
	if m.Phase.Terminal() {
		// Before the status: a restart re-sends the phase, and settling is
		// idempotent, so a crash between the two leaves nothing unsettled.
		c.settle(ctx, m, ns)
	}
	c.mu.Lock()
	first := !c.synced[m.ID]
	c.synced[m.ID] = true
	c.mu.Unlock()
	if first && ns.NovaID != 0 {
		cur, err := c.cond.MigrationByID(ctx, ns.Context, ns.NovaID, ns.Migration.Version)
		if err == nil {
			have := migration.Phase(cur.Str("status"))
			if r, ok := rank[have]; ok && r >= rank[m.Phase] {
				log.WithField("conductor_status", have).Info("the conductor already has this status; not sent again")
				ns.Migration = cur
				return
			}
			ns.Migration = cur
		} else {
			log.WithError(err).Warn("Migration.get_by_id failed; saving anyway")
		}
	}
	if err := ns.Migration.Set("status", string(m.Phase)); err != nil {
		log.WithError(err).Error("set status")
		return
	}
	if err := c.cond.Save(ctx, ns.Context, ns.Migration, nil); err != nil {
		log.WithError(err).Error("Migration.save failed")
	}
	const event = "compute_live_migration"
	switch {
	case m.Phase == migration.PhaseQueued:
		if err := c.cond.EventStart(ctx, ns.Context, m.InstanceUUID, event, c.o.Host); err != nil {
			log.WithError(err).Warn("InstanceActionEvent.event_start failed")
		}
	case m.Phase.Terminal():
		failure := ""
		if m.Phase != migration.PhaseCompleted {
			failure = m.Reason
		}
		if err := c.cond.EventFinish(ctx, ns.Context, m.InstanceUUID, event, failure); err != nil {
			log.WithError(err).Warn("InstanceActionEvent.event_finish_with_failure failed")
		}
		if m.Phase == migration.PhaseError {
			if err := c.cond.Fault(ctx, ns.Context, m.InstanceUUID, c.o.Host, m.Reason); err != nil {
				log.WithError(err).Warn("InstanceFault.create failed")
			}
		}
		c.mu.Lock()
		delete(c.novaState, m.ID)
		delete(c.synced, m.ID)
		c.mu.Unlock()
	}
}

// settle releases or gives back the allocations the conductor moved to the
// migration: released when the guest moved, given back to the instance when
// it stayed on the source. After an "error" the guest's host is uncertain,
// so both claims stay until an operator decides.
func (c *Compute) settle(ctx context.Context, m *migration.Migration, ns *novaState) {
	p := c.o.Placement
	mig := ns.Migration.Str("uuid")
	log := c.log(m).WithField("status", m.Phase)
	if p == nil || mig == "" {
		return
	}
	var do func() error
	var what string
	switch m.Phase {
	case migration.PhaseCompleted:
		what = "release the source host's allocation held by the migration"
		do = func() error { return p.ReleaseMigration(ctx, mig) }
	case migration.PhaseFailed, migration.PhaseCancelled:
		what = "give the source host's allocation back to the instance"
		do = func() error { return p.RevertMigration(ctx, mig, m.InstanceUUID) }
	default:
		log.WithField("migration_uuid", mig).Error("placement: allocations left as they are (the migration's on the source, the instance's on the destination) until an operator knows where the guest runs")
		return
	}
	wait := c.o.SettleRetry
	if wait <= 0 {
		wait = 2 * time.Second
	}
	var err error
	for i := 0; i < 3; i++ {
		if err = do(); err == nil || !errors.Is(err, errdefs.ErrUnavailable) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait << i):
		}
	}
	if err != nil {
		log.WithError(err).WithField("migration_uuid", mig).Errorf("placement: could not %s; Nova's usage of both hosts stays wrong until it is done by hand", what)
		return
	}
	log.WithField("migration_uuid", mig).Infof("placement: %s", what)
}

// Prepare calls pre_live_migration on the destination and takes its
// migration address for the data streams.
func (c *Compute) Prepare(ctx context.Context, m *migration.Migration) error {
	ns, err := c.state(m)
	if err != nil {
		return err
	}
	args := map[string]any{"instance": ns.Instance, "migrate_data": ns.MigrateData, "disk": nil}
	if ns.Disk != nil {
		args["disk"] = *ns.Disk
	}
	res, err := c.callCompute(ctx, ns.Context, m.DestHost, "pre_live_migration", args, true)
	if err != nil && ns.FlatDisk != nil && ctx.Err() == nil {
		// The destination could not put overlays on its own bases: describe
		// the disks flat and copy them whole.
		ns.CopyWhy = fmt.Sprintf("the destination refused the overlays: %v", err)
		c.log(m).WithError(err).Warn("pre_live_migration with backing files refused; retrying for a full disk copy")
		args["disk"], ns.Disk, ns.FlatDisk = *ns.FlatDisk, ns.FlatDisk, nil
		res, err = c.callCompute(ctx, ns.Context, m.DestHost, "pre_live_migration", args, true)
	}
	if err != nil {
		return err
	}
	if m.Spec.Copy != virt.CopyNone {
		m.Spec.Copy, m.CopyNote = virt.CopyFull, "full: "+ns.CopyWhy
		if ns.FlatDisk != nil {
			m.Spec.Copy, m.CopyNote = virt.CopyIncremental, "incremental: top layers only; the destination has the backing files"
		}
	}
	md := &Object{}
	if err := json.Unmarshal(res, md); err != nil {
		return fmt.Errorf("pre_live_migration answered %.200s: %w", res, err)
	}
	md.Changes = nil
	ns.MigrateData = md
	if addr := md.Str("target_connect_addr"); addr != "" {
		peer := c.o.Peers[m.DestHost]
		uris, err := hostnetFor(m.DestHost, peer, addr, c.o.Scheme, c.o.NativeTLS)
		if err != nil {
			return err
		}
		m.Spec.MigrateURI = uris.Migrate
		if m.Spec.Copy != virt.CopyNone {
			m.Spec.DisksURI = uris.Disks
		}
	}
	extra, err := json.Marshal(ns)
	if err != nil {
		return err
	}
	m.Extra = extra
	return nil
}

// Rollback undoes the destination's preparation and gives the instance its
// task state back (the guest runs on the source).
func (c *Compute) Rollback(ctx context.Context, m *migration.Migration, cause string) {
	ns, err := c.state(m)
	if err != nil {
		c.log(m).WithError(err).Error("rollback")
		return
	}
	md := ns.MigrateData
	if md == nil || !md.Bool("is_shared_instance_path") {
		destroyDisks := md == nil || !md.Bool("is_shared_block_storage")
		err := c.rpc.Cast(ctx, c.computeTarget(m.DestHost), "rollback_live_migration_at_destination",
			map[string]any{"instance": ns.Instance, "destroy_disks": destroyDisks, "migrate_data": md},
			castOptions(ns.Context))
		if err != nil {
			c.log(m).WithError(err).Warn("rollback_live_migration_at_destination not sent")
		}
	}
	inst := ns.Instance
	inst.Changes = nil
	_ = inst.Set("task_state", nil)
	_ = inst.Set("progress", 0)
	if err := c.cond.Save(ctx, ns.Context, inst, map[string]any{"expected_task_state": []string{"migrating"}}); err != nil {
		c.log(m).WithError(err).Warn("Instance.save after rollback failed")
	}
}

// Finish runs post_live_migration_at_destination, then removes the
// instance's local files here unless the instance path is shared.
func (c *Compute) Finish(ctx context.Context, m *migration.Migration) error {
	ns, err := c.state(m)
	if err != nil {
		return err
	}
	if _, err := c.callCompute(ctx, ns.Context, m.DestHost, "post_live_migration_at_destination",
		map[string]any{"instance": ns.Instance, "block_migration": ns.BlockMig}, true); err != nil {
		return err
	}
	if ns.MigrateData == nil || !ns.MigrateData.Bool("is_shared_instance_path") {
		if err := os.RemoveAll(filepath.Join(c.o.InstancesPath, m.InstanceUUID)); err != nil {
			c.log(m).WithError(err).Warn("could not remove the source's instance directory")
		}
	}
	return nil
}

// Progress saves the job's byte counts on the Migration and the progress
// on the Instance, as Nova's save_stats does.
func (c *Compute) Progress(ctx context.Context, m *migration.Migration, js virt.JobStats) {
	ns, err := c.state(m)
	if err != nil {
		return
	}
	mg := ns.Migration
	for k, v := range map[string]uint64{"memory_total": js.MemTotal, "memory_processed": js.MemProcessed,
		"memory_remaining": js.MemRemaining, "disk_total": js.DiskTotal, "disk_processed": js.DiskProcessed,
		"disk_remaining": js.DiskRemaining} {
		_ = mg.Set(k, v)
	}
	if err := c.cond.Save(ctx, ns.Context, mg, nil); err != nil {
		c.log(m).WithError(err).Debug("progress save failed")
		return
	}
	progress := 0
	if js.MemTotal > 0 {
		progress = 100 - int((js.MemRemaining*100+js.MemTotal/2)/js.MemTotal)
	}
	inst := ns.Instance
	inst.Changes = nil
	_ = inst.Set("progress", progress)
	if err := c.cond.Save(ctx, ns.Context, inst, nil); err != nil {
		c.log(m).WithError(err).Debug("instance progress save failed")
	}
}
