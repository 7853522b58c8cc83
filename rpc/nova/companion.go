package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

// Companion mode: the destination is a stock nova-compute. It plugs the
// VIFs and makes the instance directory in pre_live_migration; ferry
// rewrites the guest's XML for it from its answer, moves the port bindings
// through Neutron when the guest moved, and calls its
// post_live_migration_at_destination or rollback_live_migration_at_destination
// as nova-compute's source side does.

// Ports moves a guest's Neutron ports (pkg/openstack's Neutron).
type Ports interface {
	ActivateBinding(ctx context.Context, port, host string) error
	DeleteBinding(ctx context.Context, port, host string) error
}

// netVIF is one VIF of an instance's network_info (Nova's network model)
// as far as a move cares.
type netVIF struct {
	ID       string         `json:"id"`
	Address  string         `json:"address"`
	Type     string         `json:"type"`
	VNICType string         `json:"vnic_type"`
	Details  map[string]any `json:"details"`
	Network  struct {
		Bridge string `json:"bridge"`
	} `json:"network"`
}

// networkInfo reads the instance's network_info from its info_cache; an
// instance without one has no ports.
func networkInfo(inst *Object) ([]netVIF, error) {
	cache, err := inst.Child("info_cache")
	if err != nil {
		return nil, nil
	}
	raw, ok, err := Opt[string](cache, "network_info")
	if err != nil || !ok {
		return nil, err
	}
	var vifs []netVIF
	if err := json.Unmarshal([]byte(raw), &vifs); err != nil {
		return nil, fmt.Errorf("instance network_info: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	return vifs, nil
}

// migVIF is one of migrate_data.vifs (VIFMigrateData): a port and its
// binding on the destination, which the conductor created inactive.
type migVIF struct {
	Port     string
	VNICType string
	VIFType  string // on the destination
	Details  map[string]any
	Source   netVIF // source_vif
}

func migrateVIFs(md *Object) ([]migVIF, error) {
	objs, _, err := Opt[[]*Object](md, "vifs")
	if err != nil {
		return nil, err
	}
	var out []migVIF
	for _, o := range objs {
		v := migVIF{}
		if v.Port, err = Need[string](o, "port_id"); err != nil {
			return nil, err
		}
		if v.VNICType, _, err = Opt[string](o, "vnic_type"); err != nil {
			return nil, err
		}
		if v.VIFType, _, err = Opt[string](o, "vif_type"); err != nil {
			return nil, err
		}
		if d, ok, err := Opt[string](o, "vif_details_json"); err != nil {
			return nil, err
		} else if ok {
			if err := json.Unmarshal([]byte(d), &v.Details); err != nil {
				return nil, fmt.Errorf("VIFMigrateData %s vif_details_json: %w: %w", v.Port, errdefs.ErrInvalidArgument, err)
			}
		}
		if s, ok, err := Opt[string](o, "source_vif"); err != nil {
			return nil, err
		} else if ok {
			if err := json.Unmarshal([]byte(s), &v.Source); err != nil {
				return nil, fmt.Errorf("VIFMigrateData %s source_vif: %w: %w", v.Port, errdefs.ErrInvalidArgument, err)
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// companionBlockers lists what companion mode cannot carry for this guest,
// each named, or nothing: the guest's XML features only Nova's rewrite
// knows (facts.Blockers), volumes (Cinder is not carried yet), NUMA
// topologies, ports that are not normal ports on a Linux bridge on both
// hosts, and a destination that wants file-backed memory.
func companionBlockers(inst, md *Object, g virt.Guest, facts virt.DomainFacts, nw []netVIF, mv []migVIF) []string {
	out := append([]string(nil), facts.Blockers...)
	var vols []string
	for _, d := range g.Disks {
		if d.Serial != "" {
			vols = append(vols, fmt.Sprintf("%s (%s)", d.Serial, d.Target))
		}
	}
	if vb, _, _ := Opt[bool](md, "is_volume_backed"); vb && len(vols) == 0 {
		vols = append(vols, "the root disk")
	}
	if len(vols) > 0 {
		out = append(out, "Cinder volumes "+strings.Join(vols, ", ")+": companion mode does not carry volumes yet")
	}
	if raw, ok := inst.Data["numa_topology"]; ok && strings.TrimSpace(string(raw)) != "null" {
		out = append(out, "a NUMA topology (the destination's pinning is Nova's rewrite)")
	}
	if fb, _, _ := Opt[bool](md, "dst_wants_file_backed_memory"); fb {
		out = append(out, "the destination wants file-backed memory")
	}
	for _, v := range nw {
		if v.VNICType != "" && v.VNICType != "normal" {
			out = append(out, fmt.Sprintf("port %s has vnic_type %s (SR-IOV and the like are re-plugged by Nova's driver)", v.ID, v.VNICType))
		}
		if v.Type != "bridge" {
			out = append(out, fmt.Sprintf("port %s is a %q VIF on this host; companion mode carries Linux-bridge VIFs", v.ID, v.Type))
		}
	}
	for _, v := range mv {
		if v.VIFType != "" && v.VIFType != "bridge" {
			out = append(out, fmt.Sprintf("port %s is bound as %q on the destination; companion mode carries Linux-bridge VIFs", v.Port, v.VIFType))
		}
	}
	if len(nw) > 0 && len(mv) > 0 && len(nw) != len(mv) {
		out = append(out, fmt.Sprintf("the instance has %d ports and the migration %d destination bindings", len(nw), len(mv)))
	}
	return out
}

// companionCheck refuses, in one message naming each, a guest companion
// mode cannot carry; the guest is not touched.
func companionCheck(st *State, g virt.Guest, doc string) error {
	facts, err := virt.ReadFacts(doc)
	if err != nil {
		return err
	}
	nw, err := networkInfo(st.Instance)
	if err != nil {
		return err
	}
	mv, err := migrateVIFs(st.MigrateData)
	if err != nil {
		return err
	}
	if b := companionBlockers(st.Instance, st.MigrateData, g, facts, nw, mv); len(b) > 0 {
		return PreCheck("ferry cannot live-migrate this instance: %s", strings.Join(b, "; "))
	}
	return nil
}

// destinationEdits is how the guest's XML changes for the destination:
// each interface's bridge as the destination's binding has it (its
// vif_details' bridge_name, else the network's bridge), and the listen
// addresses the destination's check put into migrate_data.
func destinationEdits(md *Object, mv []migVIF) (virt.DestinationEdits, error) {
	e := virt.DestinationEdits{Bridges: map[string]string{}}
	for _, v := range mv {
		mac := strings.ToLower(v.Source.Address)
		if mac == "" {
			return e, fmt.Errorf("VIFMigrateData %s: %w: no source_vif address", v.Port, errdefs.ErrInvalidArgument)
		}
		br, _ := v.Details["bridge_name"].(string)
		if br == "" {
			br = v.Source.Network.Bridge
		}
		if br == "" {
			return e, fmt.Errorf("port %s: %w: no bridge for the destination", v.Port, errdefs.ErrInvalidArgument)
		}
		e.Bridges[mac] = br
	}
	var err error
	if e.VNCListen, _, err = Opt[string](md, "graphics_listen_addr_vnc"); err != nil {
		return e, err
	}
	if e.SpiceListen, _, err = Opt[string](md, "graphics_listen_addr_spice"); err != nil {
		return e, err
	}
	return e, nil
}

// ports lists the ports whose destination bindings a move activates or
// deletes: migrate_data's, sorted.
func ports(md *Object) ([]string, error) {
	mv, err := migrateVIFs(md)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(mv))
	for _, v := range mv {
		out = append(out, v.Port)
	}
	sort.Strings(out)
	return out, nil
}

// destinationXML rewrites the guest's migratable XML for the destination
// from pre_live_migration's answer.
func (b *Bookkeeper) destinationXML(ctx context.Context, m migration.Migration, md *Object) (string, error) {
	mv, err := migrateVIFs(md)
	if err != nil {
		return "", err
	}
	e, err := destinationEdits(md, mv)
	if err != nil {
		return "", err
	}
	local, err := b.local(ctx)
	if err != nil {
		return "", err
	}
	defer local.Close()
	doc, err := local.MigratableXML(ctx, m.InstanceUUID)
	if err != nil {
		return "", err
	}
	return virt.RewriteForDestination(doc, e)
}

// activateBindings activates the ports' bindings on the destination, as
// nova-compute's migrate_instance_start does: the guest's network follows
// it (at the switch to post-copy, or once it runs there).
func (b *Bookkeeper) activateBindings(ctx context.Context, m migration.Migration, st *State) error {
	ps, err := ports(st.MigrateData)
	if err != nil {
		return fmt.Errorf("%w: %w", migration.ErrSkipped, err)
	}
	if b.o.Ports == nil && len(ps) > 0 {
		return fmt.Errorf("%w: neutron is not configured: the ports' bindings stay on the source", migration.ErrSkipped)
	}
	for _, p := range ps {
		if err := b.o.Ports.ActivateBinding(ctx, p, m.Dest.Host); err != nil {
			if errors.Is(err, errdefs.ErrNotFound) { // no binding-extended flow: post_live_migration_at_destination binds
				b.o.Log.WithFields(m.LogFields()).WithField("port_id", p).Info("no destination binding to activate; the destination's nova-compute binds the port")
				continue
			}
			return err
		}
	}
	return nil
}

// deleteBindings deletes the ports' inactive bindings on the destination
// after a move that did not happen, when no rollback cast does it (a shared
// instance path: nova-compute's setup_networks_on_host teardown).
func (b *Bookkeeper) deleteBindings(ctx context.Context, m migration.Migration, st *State) error {
	ps, err := ports(st.MigrateData)
	if err != nil {
		return fmt.Errorf("%w: %w", migration.ErrSkipped, err)
	}
	if b.o.Ports == nil && len(ps) > 0 {
		return fmt.Errorf("%w: neutron is not configured: the destination's inactive bindings stay", migration.ErrSkipped)
	}
	for _, p := range ps {
		if err := b.o.Ports.DeleteBinding(ctx, p, m.Dest.Host); err != nil {
			return err
		}
	}
	return nil
}

// endedWait bounds how long a job aborted by someone else waits for Nova's
// record to show who: nova-compute's restart recovery aborts the job first
// and sets the status after.
const endedWait = 30 * time.Second

// failedWait is the bound for a job that failed otherwise: nova-compute
// saves the error right after its abort, and a failure of ferry's own is
// not held up long.
const failedWait = 5 * time.Second

var _ migration.Ender = (*Bookkeeper)(nil)

// EndedElsewhere tells the engine, in companion mode, whether a job it did
// not abort was ended by nova-compute: its restart recovery
// (_reset_live_migration) aborts the libvirt job, sets the migration to
// error and clears the task state, and leaves the rest as it is. Ferry then
// takes that outcome and writes nothing over it. In native mode no other
// service writes the records.
func (b *Bookkeeper) EndedElsewhere(ctx context.Context, m migration.Migration, jobErr error) (migration.Phase, string, bool) {
	if !b.o.Companion {
		return "", "", false
	}
	st, err := decodeState(m.State)
	if err != nil || st.NovaID == 0 {
		return "", "", false
	}
	log := b.o.Log.WithFields(m.LogFields())
	wait := endedWait
	if !errors.Is(jobErr, errdefs.ErrAborted) {
		wait = failedWait
	}
	deadline := time.Now().Add(wait)
	for {
		cur, err := b.cond.MigrationByID(ctx, st.Context, st.NovaID, st.Migration.Version)
		if err == nil {
			status, _, _ := Opt[string](cur, "status")
			if p := migration.Phase(status); p.Terminal() {
				return p, fmt.Sprintf("the job was aborted outside ferry and Nova's record says %s: nova-compute on %s ended the migration "+
					"itself (its restart recovery, _reset_live_migration); Nova's records are left as it set them", status, b.o.Host), true
			}
		} else {
			log.WithError(err).Warn("who ended the job? Nova's migration record unreadable")
		}
		if time.Now().After(deadline) || !pause(ctx, time.Second) {
			return "", "", false
		}
	}
}

func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
