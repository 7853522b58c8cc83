//go:build integration

package stack_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/stack"
)

// TestNovaLiveMigration is the baseline every ferry figure is compared
// with: Nova's own live migration, lab-a → lab-b and back, of a guest that
// dirties memory, driven through Nova's API by the openstack client, with
// the stock nova-compute on both hosts.
func TestNovaLiveMigration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := stockShape(ctx); err != nil {
		t.Fatal(err)
	}
	a, err := st.API(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	sv, err := st.Boot(ctx, fmt.Sprintf("baseline-%d", time.Now().Unix()), "dirty", st.Flavors.Small, "lab-a")
	if err != nil {
		t.Fatal(err)
	}
	active := time.Since(t0)
	t.Cleanup(func() {
		if err := a.DeleteServer(context.Background(), sv.ID); err != nil {
			t.Errorf("delete server: %v", err)
		}
	})
	con, err := stack.OpenConsole(ctx, st.Host("lab-a").ConsoleLog(sv.ID), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := con.Wait(ctx, 1, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE boot_to_first_heartbeat=%.1fs (server ACTIVE after %.1fs)", time.Since(t0).Seconds(), active.Seconds())
	// A few seconds of dirtying before the first migration.
	if _, err := con.Wait(ctx, 30, time.Minute); err != nil {
		t.Fatal(err)
	}
	con.Close()

	for _, to := range []string{"lab-b", "lab-a"} {
		m, err := st.LiveMigrate(ctx, sv.ID, to, 10*time.Minute)
		if err != nil {
			t.Fatalf("live migration to %s: %v", to, err)
		}
		t.Logf("FIGURE nova_live_migration %s", m)
		checkMigration(ctx, t, a, sv, m)
	}
	if rss, pss, err := st.RSS(); err == nil {
		t.Logf("FIGURE environment_rss=%dMiB pss=%dMiB (the stack's processes, libvirtd and QEMU, one guest)", rss>>20, pss>>20)
	}
	rows, err := st.MigrationList(ctx, sv.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("server migration list: %d rows, want 2: %v", len(rows), rows)
	}
	for _, r := range rows {
		if r["Status"] != "completed" || r["Type"] != "live-migration" {
			t.Errorf("server migration list: %v, want a completed live-migration", r)
		}
	}
}

func checkMigration(ctx context.Context, t *testing.T, a *stack.API, sv stack.Server, m stack.LiveMigration) {
	t.Helper()
	if m.Continuity != nil {
		t.Errorf("%s→%s: %v", m.From, m.To, m.Continuity)
	}
	got, err := a.GetServer(ctx, sv.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Host != m.To || got.Node != m.To || got.Status != "ACTIVE" {
		t.Errorf("server after %s→%s: host %s node %s status %s", m.From, m.To, got.Host, got.Node, got.Status)
	}
	// Both directions copy the disk: the instances directories are not
	// shared, so block_migration "auto" is a block migration here.
	if m.SrcDisk[0] == 0 {
		t.Errorf("%s→%s: the source's job mirrored no disk (total %d, processed %d): not a block migration",
			m.From, m.To, m.SrcDisk[0], m.SrcDisk[1])
	}
	// The data went over the migration network (qemu.conf's
	// migration_host), the control connection over management.
	if m.TX["mig0"] < m.Job.MemProcessed {
		t.Errorf("%s→%s: the source sent %d bytes on mig0, less than the %d bytes of RAM QEMU sent", m.From, m.To, m.TX["mig0"], m.Job.MemProcessed)
	}
	// Nova saves the counters every 5 s, not at the end; the API shows
	// them while the migration runs (GET /servers/{id}/migrations/{id}).
	if m.Job.Elapsed > 6*time.Second && (m.Migration.MemoryProcessed == nil || *m.Migration.MemoryProcessed == 0) {
		t.Errorf("%s→%s: a %.1fs job and no memory counters in the migration record: %+v", m.From, m.To, m.Job.Elapsed.Seconds(), m.Migration)
	}
	ports, err := a.Ports(ctx, sv.ID)
	if err != nil || len(ports) != 1 {
		t.Fatalf("ports of %s: %v (%v)", sv.ID, ports, err)
	}
	if ports[0].HostID != m.To {
		t.Errorf("port %s: binding:host_id %s, want %s", ports[0].ID, ports[0].HostID, m.To)
	}
	bs, err := a.Bindings(ctx, ports[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || bs[0].Host != m.To || bs[0].Status != "ACTIVE" {
		t.Errorf("port %s bindings after %s→%s: %+v, want one ACTIVE on %s", ports[0].ID, m.From, m.To, bs, m.To)
	}
	if m.Migration.UUID == "" {
		t.Fatalf("migration record without uuid: %+v", m.Migration)
	}
	// Zed saves the status, then gives the migration's allocation back:
	// wait for the release (Nova shows no later mark of its end).
	var ma map[string]map[string]int
	for end := time.Now().Add(time.Minute); ; {
		if ma, err = a.Allocations(ctx, m.Migration.UUID); err != nil || len(ma) == 0 || time.Now().After(end) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil || len(ma) != 0 {
		t.Errorf("allocations of migration %s a minute after it completed: %v (%v), want none", m.Migration.UUID, ma, err)
	}
	alloc, err := a.Allocations(ctx, sv.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"VCPU": 1, "MEMORY_MB": 256}
	if len(alloc) != 1 || fmt.Sprint(alloc[m.To]) != fmt.Sprint(want) {
		t.Errorf("allocations of the instance after %s→%s: %v, want %v on %s only", m.From, m.To, alloc, want, m.To)
	}
}
