package nova

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

const portA = "0a1b2c3d-4e5f-4a6b-8c7d-000000000001"

// nwInfo is an instance's network_info with one linuxbridge port, as
// Zed's Neutron API module caches it.
func nwInfo(vifType, vnic string, details map[string]any) string {
	b, _ := json.Marshal([]map[string]any{{"id": portA, "address": "fa:16:3e:12:34:56", "type": vifType, "vnic_type": vnic,
		"details": details, "devname": "tap0a1b2c3d-4e", "network": map[string]any{"id": "n1", "bridge": "brq1234567890a"}}})
	return string(b)
}

// migVIFs is migrate_data.vifs as the conductor's _bind_ports_on_destination
// leaves them: the destination's binding, and the source VIF as a JSON string.
func migVIFsData(vifType string, details map[string]any) []any {
	det, _ := json.Marshal(details)
	src := nwInfo("bridge", "normal", nil)
	src = src[1 : len(src)-1] // the one VIF, not the list
	return []any{roundTrip(mustObject("VIFMigrateData", "1.0", map[string]any{"port_id": portA, "vnic_type": "normal",
		"vif_type": vifType, "vif_details_json": string(det), "profile_json": "{}", "host": "dst", "source_vif": src}))}
}

func TestCompanionBlockers(t *testing.T) {
	plain := `<domain type='qemu'><name>x</name><devices><interface type='bridge'><mac address='fa:16:3e:12:34:56'/><source bridge='brq1234567890a'/></interface></devices></domain>`
	tests := []struct {
		name  string
		doc   string
		nw    string
		inst  map[string]any
		md    map[string]any
		vifs  []any
		disks []virt.Disk
		want  []string
	}{
		{name: "a linuxbridge port: carried", doc: plain, nw: nwInfo("bridge", "normal", nil), vifs: migVIFsData("bridge", nil)},
		{name: "no ports at all", doc: `<domain type='qemu'><name>x</name></domain>`, nw: "[]"},
		{name: "a volume", doc: plain, nw: "[]", disks: []virt.Disk{{Target: "vdb", Serial: "vol-1"}},
			want: []string{"Cinder volumes vol-1 (vdb): companion mode does not carry volumes yet"}},
		{name: "volume-backed", doc: plain, nw: "[]", md: map[string]any{"is_volume_backed": true},
			want: []string{"Cinder volumes the root disk"}},
		{name: "SR-IOV", doc: plain, nw: nwInfo("hw_veb", "direct", nil), want: []string{
			"port " + portA + " has vnic_type direct", `port ` + portA + ` is a "hw_veb" VIF on this host`}},
		{name: "OVS on the destination", doc: plain, nw: nwInfo("bridge", "normal", nil), vifs: migVIFsData("ovs", nil),
			want: []string{`port ` + portA + ` is bound as "ovs" on the destination`}},
		{name: "NUMA", doc: plain, nw: "[]", inst: map[string]any{"numa_topology": map[string]any{"cells": []any{}}},
			want: []string{"a NUMA topology"}},
		{name: "pinned and a TCP serial", nw: "[]", want: []string{"pinned CPUs", "a serial console on TCP"},
			doc: `<domain type='qemu'><name>x</name><cputune><vcpupin vcpu='0' cpuset='1'/></cputune><devices><serial type='tcp'><source mode='bind' host='0.0.0.0' service='10000'/></serial></devices></domain>`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := map[string]any{"uuid": instUUID, "info_cache": roundTrip(mustObject("InstanceInfoCache", "1.5", map[string]any{"network_info": tt.nw}))}
			for k, v := range tt.inst {
				id[k] = v
			}
			mdData := map[string]any{"is_shared_instance_path": false}
			for k, v := range tt.md {
				mdData[k] = v
			}
			if tt.vifs != nil {
				mdData["vifs"] = tt.vifs
			}
			st := &State{Instance: mustObject("Instance", "2.7", id), MigrateData: mustObject("LibvirtLiveMigrateData", "1.10", mdData)}
			err := companionCheck(st, virt.Guest{Disks: tt.disks}, tt.doc)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if f := Failure(err); f == nil || f.Class != "MigrationPreCheckError" {
				t.Fatalf("= %v, want a MigrationPreCheckError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestDestinationEdits(t *testing.T) {
	md := mustObject("LibvirtLiveMigrateData", "1.10", map[string]any{"vifs": migVIFsData("bridge", map[string]any{"port_filter": true}),
		"graphics_listen_addr_vnc": "198.18.0.12", "graphics_listen_addr_spice": nil})
	mv, err := migrateVIFs(md)
	if err != nil {
		t.Fatal(err)
	}
	e, err := destinationEdits(md, mv)
	if err != nil {
		t.Fatal(err)
	}
	want := virt.DestinationEdits{Bridges: map[string]string{"fa:16:3e:12:34:56": "brq1234567890a"}, VNCListen: "198.18.0.12"}
	if diff := cmp.Diff(want, e); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// A destination binding that names its bridge wins over the network's.
	md = mustObject("LibvirtLiveMigrateData", "1.10", map[string]any{"vifs": migVIFsData("bridge", map[string]any{"bridge_name": "br-phys"})})
	mv, _ = migrateVIFs(md)
	if e, err := destinationEdits(md, mv); err != nil || e.Bridges["fa:16:3e:12:34:56"] != "br-phys" {
		t.Errorf("bridge_name: %+v %v", e, err)
	}
	// Hostile input: a vif_details_json that is not JSON is refused, not read as empty.
	bad := mustObject("VIFMigrateData", "1.0", map[string]any{"port_id": portA, "vif_details_json": "{"})
	md = mustObject("LibvirtLiveMigrateData", "1.10", map[string]any{"vifs": []any{roundTrip(bad)}})
	if _, err := migrateVIFs(md); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad vif_details_json: %v", err)
	}
}

type fakePorts struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (p *fakePorts) ActivateBinding(_ context.Context, port, host string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, "activate "+port+" "+host)
	return p.err
}

func (p *fakePorts) DeleteBinding(_ context.Context, port, host string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, "delete "+port+" "+host)
	return p.err
}

func companionFixture(t *testing.T, shared bool) (*bookFixture, *fakePorts) {
	f := newBookFixture(t, shared)
	ports := &fakePorts{}
	f.b.o.Companion, f.b.o.Ports, f.b.o.ReleaseInbound = true, ports, false
	st, _ := decodeState(f.m.State)
	st.MigrateData.Set("vifs", migVIFsData("bridge", nil))
	f.m.State, _ = st.encode()
	return f, ports
}

// Companion mode's reports, delivered in order, make the calls
// nova-compute's source side makes (Zed): the network first, the source's
// files, the destination's post call, the status, Placement last.
func TestCompanionReports(t *testing.T) {
	tests := []struct {
		name     string
		from, to migration.Phase
		shared   bool
		want     []string
	}{
		{name: "completed", from: migration.PhaseRunning, to: migration.PhaseCompleted, want: []string{
			"activate " + portA + " dst", "call dst post_live_migration_at_destination", "Migration.get_by_id", "Migration.save status=completed",
			"placement: release " + migUUID, "event_finish ferry_live_migration"}},
		{name: "post-copy: the network follows at once", from: migration.PhaseRunning, to: migration.PhasePostCopy, want: []string{
			"Migration.get_by_id", "Migration.save status=running (post-copy)", "activate " + portA + " dst"}},
		{name: "failed", from: migration.PhaseRunning, to: migration.PhaseFailed, want: []string{
			"placement: revert " + migUUID + " to " + instUUID, "cast dst rollback_live_migration_at_destination destroy_disks=true",
			"Instance.save progress=0 task_state=<nil>", "Migration.get_by_id", "Migration.save status=failed", "event_finish ferry_live_migration failed: r"}},
		{name: "failed on a shared path: no cast, the bindings deleted here", from: migration.PhaseRunning, to: migration.PhaseFailed, shared: true,
			want: []string{"placement: revert " + migUUID + " to " + instUUID, "delete " + portA + " dst",
				"Instance.save progress=0 task_state=<nil>", "Migration.get_by_id", "Migration.save status=failed", "event_finish ferry_live_migration failed: r"}},
		{name: "refused before queued: nothing at the destination", from: migration.PhaseNew, to: migration.PhaseError, want: []string{
			"event_start compute_live_migration", "InstanceFault.create code=500 details= host=src instance_uuid=" + instUUID + " message=r",
			"placement: revert " + migUUID + " to " + instUUID, "Instance.save progress=0 task_state=<nil>",
			"Migration.get_by_id", "Migration.save status=error", "event_finish compute_live_migration failed: r"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, ports := companionFixture(t, tt.shared)
			seenPorts := 0
			for _, name := range f.b.Reports(f.m, tt.from, tt.to) {
				if name == repCleanupSrc {
					continue // the source's files: TestCleanupSource
				}
				if err := f.deliver(t, name, tt.to, "r"); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if strings.HasPrefix(name, "placement") {
					f.nova.add("placement: " + f.placement.done[len(f.placement.done)-1])
				}
				for ; seenPorts < len(ports.calls); seenPorts++ {
					f.nova.add(ports.calls[seenPorts])
				}
			}
			if diff := cmp.Diff(tt.want, f.nova.entries("")); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	f, _ := companionFixture(t, false)
	want := []string{repActivate, repCleanupSrc, repFinishDst, repStatus, repRelease, repFerryFinish}
	if got := f.b.Reports(f.m, migration.PhaseRunning, migration.PhaseCompleted); !cmp.Equal(want, got) {
		t.Errorf("completed reports %v, want %v", got, want)
	}
	f.m.External = true
	if got := f.b.Reports(f.m, migration.PhaseRunning, migration.PhaseError); !cmp.Equal([]string{repFerryFinish}, got) {
		t.Errorf("a migration nova-compute ended owes %v, want only ferry's event", got)
	}
}

// A binding Neutron does not have (no binding-extended flow) leaves the
// binding to the destination's post_live_migration_at_destination; any
// other failure is retried.
func TestActivateBindings(t *testing.T) {
	f, ports := companionFixture(t, false)
	ports.err = errdefs.ErrNotFound
	if err := f.deliver(t, repActivate, migration.PhaseCompleted, ""); err != nil {
		t.Errorf("no binding: %v", err)
	}
	ports.err = errdefs.ErrUnavailable
	if err := f.deliver(t, repActivate, migration.PhaseCompleted, ""); err == nil || errors.Is(err, migration.ErrSkipped) {
		t.Errorf("neutron down: %v, want an error to retry", err)
	}
}

// nova-compute's restart recovery aborts the job, then sets the migration
// to error: ferry adopts that outcome. A job someone else aborted while
// Nova's record stays running is ferry's own failure.
func TestEndedElsewhere(t *testing.T) {
	f, _ := companionFixture(t, false)
	f.nova.migrations[12]["status"] = "error"
	p, reason, ended := f.b.EndedElsewhere(context.Background(), f.m, errdefs.ErrAborted)
	if !ended || p != migration.PhaseError || !strings.Contains(reason, "_reset_live_migration") {
		t.Errorf("= %v %q %v", p, reason, ended)
	}
	f.nova.migrations[12]["status"] = "running"
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if _, _, ended := f.b.EndedElsewhere(ctx, f.m, errdefs.ErrAborted); ended {
		t.Error("a record still running was taken as ended")
	}
	// Another client's abort can end the job as a broken connection: the
	// record is read for that too (seen on the stack: "Unable to write to
	// socket: Broken pipe" after nova-compute's _reset_live_migration).
	f.nova.migrations[12]["status"] = "error"
	if p, _, ended := f.b.EndedElsewhere(context.Background(), f.m, errors.New("job 'migration out' failed: Unable to write to socket: Broken pipe")); !ended || p != migration.PhaseError {
		t.Errorf("a broken pipe with Nova's record at error: %v %v", p, ended)
	}
	f.b.o.Companion = false
	f.nova.migrations[12]["status"] = "error"
	if _, _, ended := f.b.EndedElsewhere(context.Background(), f.m, errdefs.ErrAborted); ended {
		t.Error("native mode: no other writer")
	}
}

// Before the job starts the instance is re-read: a task state
// nova-compute reset (its restart) stops the migration before the guest
// moves.
func TestPrepareStillMigrating(t *testing.T) {
	f, _ := companionFixture(t, false)
	f.nova.computes = func(host, method string, args map[string]any) (json.RawMessage, error) {
		return json.Marshal(mustObject("LibvirtLiveMigrateData", "1.10", map[string]any{"target_connect_addr": "198.19.0.2",
			"is_shared_instance_path": false, "vifs": migVIFsData("bridge", nil), "graphics_listen_addr_vnc": "198.18.0.12"}))
	}
	f.local.define(instUUID, novaDomainXML)
	p, err := f.b.Prepare(context.Background(), f.m)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.DestXML, `listen='198.18.0.12'`) || !strings.Contains(p.DestXML, `<source bridge='brq1234567890a'/>`) {
		t.Errorf("destination XML:\n%s", p.DestXML)
	}
	f.nova.instances[instUUID]["task_state"] = nil
	if _, err := f.b.Prepare(context.Background(), f.m); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("after a reset: %v", err)
	}
}

const novaDomainXML = `<domain type='qemu'><name>instance-00000001</name><uuid>` + instUUID + `</uuid><devices>
<interface type='bridge'><mac address='fa:16:3e:12:34:56'/><source bridge='brq1234567890a'/><target dev='tap0a1b2c3d-4e'/></interface>
<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/></graphics>
</devices></domain>`

func TestPlugs(t *testing.T) {
	log, _ := testLog(t)
	p := &Plugs{Log: log}
	ev := func(name, tag, status string) *oslo.Request {
		e := mustObject("InstanceExternalEvent", "1.4", map[string]any{"instance_uuid": instUUID, "name": name, "tag": tag, "status": status})
		return request(t, "external_instance_event", map[string]any{"instances": []any{}, "events": []any{e}})
	}
	w := p.Expect(instUUID, []string{"network-vif-plugged-" + portA, "network-vif-plugged-p2"})
	p.observe(context.Background(), ev("network-vif-plugged", portA, "completed"))
	p.observe(context.Background(), ev("network-changed", portA, "completed"))
	err := w.Wait(context.Background(), 50*time.Millisecond)
	if !errors.Is(err, errdefs.ErrTimeout) || !strings.Contains(err.Error(), "network-vif-plugged-p2") {
		t.Errorf("one missing: %v", err)
	}
	p.observe(context.Background(), ev("network-vif-plugged", "p2", "completed"))
	if err := w.Wait(context.Background(), time.Second); err != nil {
		t.Errorf("both arrived: %v", err)
	}
	w.Cancel()
	w = p.Expect(instUUID, []string{"network-vif-plugged-" + portA})
	p.observe(context.Background(), ev("network-vif-plugged", portA, "failed"))
	if err := w.Wait(context.Background(), time.Second); err == nil || errors.Is(err, errdefs.ErrTimeout) {
		t.Errorf("a failed plug: %v", err)
	}
	w.Cancel()
	if err := p.Expect(instUUID, nil).Wait(context.Background(), time.Second); err != nil {
		t.Errorf("nothing to wait for: %v", err)
	}
	if _, err := p.observe(context.Background(), request(t, "external_instance_event", map[string]any{"events": "x"})); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("hostile events: %v", err)
	}
	if got := plugTimeEvents([]netVIF{{ID: "a", Details: map[string]any{"ovs_hybrid_plug": true}}, {ID: "b"}}); !cmp.Equal(got, []string{"network-vif-plugged-a"}) {
		t.Errorf("plug-time events %v", got)
	}
}
