//go:build integration

package stack_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/stack"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

// companion is the hosts' companion-mode ferryds, kept from one test that
// needs them to the next (a cut-over both ways costs ~35 s), until a test
// needs the stock shape (stockShape) or the package ends (TestMain).
var companion = map[string]*stack.Ferryd{}

// companions puts both lab hosts into companion mode — ferryd beside each
// stock nova-compute, cut over by ferry's own command — unless they are
// already, and starts a ferryd a test left stopped. The map is the shared
// one: a test that cuts a host back over keeps it up to date.
func companions(t *testing.T, ctx context.Context) map[string]*stack.Ferryd {
	t.Helper()
	for _, h := range []string{"lab-a", "lab-b"} {
		f := companion[h]
		if f == nil {
			var err error
			if f, err = st.ToCompanion(ctx, h, stack.FerrydOptions{}); err != nil {
				t.Fatal(err)
			}
			companion[h] = f
			continue
		}
		if !f.Running() {
			if err := f.Start(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	return companion
}

// stockShape gives every companion host back to its stock nova-compute
// alone (a test of Nova's own shape, or of native mode, needs that).
func stockShape(ctx context.Context) error {
	var errs []error
	for h, f := range companion {
		if err := st.ToStock(ctx, f); err != nil {
			errs = append(errs, fmt.Errorf("%s back to the stock shape: %w", h, err))
		}
		delete(companion, h)
	}
	return errors.Join(errs...)
}

// ferryRan finds the migration in a ferryd's journal: ferry, not
// nova-compute, ran the job.
func ferryRan(t *testing.T, f *stack.Ferryd, migUUID string) migration.Migration {
	t.Helper()
	m, err := migration.ReadEntry(f.StateDir, migUUID)
	if err != nil {
		t.Fatalf("%s's journal has no migration %s: %v", f.Host.Hostname, migUUID, err)
	}
	return m
}

// TestCompanionLiveMigration: `openstack server migrate --live-migration`
// of a dirtying guest with a Neutron port, lab-a → lab-b and back, with
// ferryd beside the stock nova-compute on both hosts: ferry's journal shows
// it ran the job; Nova's records, the port's binding and Placement are as
// after Nova's own migration (checkMigration); the heartbeat is
// continuous; afterwards the server reboots, stops and starts on its new
// host (messages ferryd forwards to nova-compute).
func TestCompanionLiveMigration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	fs := companions(t, ctx)
	a, err := st.API(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := st.Boot(ctx, fmt.Sprintf("companion-%d", time.Now().Unix()), "dirty", st.Flavors.Small, "lab-a")
	if err != nil {
		t.Fatalf("boot through ferryd's forwarding: %v", err)
	}
	heartbeating(ctx, t, a, sv, "lab-a", 30, 3*time.Minute)
	for _, to := range []string{"lab-b", "lab-a"} {
		m, err := st.LiveMigrate(ctx, sv.ID, to, 10*time.Minute)
		if err != nil {
			t.Fatalf("live migration to %s: %v", to, err)
		}
		t.Logf("FIGURE companion_live_migration %s", m)
		ferryFinished(ctx, t, a, sv.ID)
		checkMigration(ctx, t, a, sv, m)
		j := ferryRan(t, fs[m.From], m.Migration.UUID)
		if j.Phase != migration.PhaseCompleted || j.Pending() != 0 {
			t.Errorf("ferry's journal on %s: %s with %d reports pending (%s)", m.From, j.Phase, j.Pending(), j.Reason)
		}
		if !strings.Contains(j.Prep.DestXML, "<interface") {
			t.Errorf("ferry did not send the destination's XML: %q", j.Prep.DestXML)
		}
	}
	for _, action := range [][]string{{"server", "reboot", "--wait", sv.ID}, {"server", "stop", sv.ID}} {
		if out, err := st.OpenStack(ctx, action...); err != nil {
			t.Fatalf("%v: %v\n%s", action, err, out)
		}
	}
	if _, err := a.WaitServer(ctx, sv.ID, 3*time.Minute, func(s stack.Server) bool { return s.Status == "SHUTOFF" }); err != nil {
		t.Fatal(err)
	}
	if out, err := st.OpenStack(ctx, "server", "start", sv.ID); err != nil {
		t.Fatalf("server start: %v\n%s", err, out)
	}
	if _, err := a.WaitServer(ctx, sv.ID, 3*time.Minute, func(s stack.Server) bool { return s.Status == "ACTIVE" }); err != nil {
		t.Fatal(err)
	}
	got, err := a.GetServer(ctx, sv.ID)
	if err != nil || got.Host != "lab-a" {
		t.Errorf("after stop/start: host %q (%v)", got.Host, err)
	}
}

// TestCompanionOperatorCommands: force-complete and abort through Nova's
// API (`openstack server migration force complete` / abort) reach ferryd,
// which owns them in companion mode.
func TestCompanionOperatorCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	fs := companions(t, ctx)
	a, sv := bootDirty(t, ctx, "companion-ops")
	if err := st.CapMigration(ctx, 8); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.CapMigration(context.Background(), 0) })

	ab, err := st.LiveMigrateWith(ctx, sv.ID, "lab-b", 10*time.Minute, stack.MigrateOptions{Cutoff: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if ab.Migration.Status != "cancelled" {
		t.Errorf("aborted: %s", ab)
	}
	if j := ferryRan(t, fs["lab-a"], ab.Migration.UUID); j.Phase != migration.PhaseCancelled || j.Pending() != 0 {
		t.Errorf("ferry's journal: %s (%s), %d pending", j.Phase, j.Reason, j.Pending())
	}
	checkAfterRollback(ctx, t, a, sv.ID, "lab-a", ab.Migration.UUID)
	if evs, _ := eventsOf(ctx, t, a, sv.ID, "live_migration_cancel"); !slices.Contains(evs, "compute_live_migration_abort=Success") {
		t.Errorf("abort action events %v", evs)
	}

	fc := forceCompleted(ctx, t, sv.ID, "lab-b")
	if fc.Migration.Status != "completed" || fc.Continuity != nil {
		t.Errorf("force-completed: %s", fc)
	}
	if j := ferryRan(t, fs["lab-a"], fc.Migration.UUID); j.Phase != migration.PhaseCompleted {
		t.Errorf("ferry's journal: %s (%s)", j.Phase, j.Reason)
	}
	checkMigration(ctx, t, a, sv, fc)
	if evs, _ := eventsOf(ctx, t, a, sv.ID, "live_migration_force_complete"); !slices.Contains(evs, "compute_live_migration_force_complete=Success") {
		t.Errorf("force-complete action events %v", evs)
	}
}

// TestCompanionSourceFerrydKilled: SIGKILL of the source's ferryd in the
// middle of a migration, then its restart: the migration completes once
// and Nova's records, the binding and Placement are right.
func TestCompanionSourceFerrydKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	fs := companions(t, ctx)
	// An idle guest under an 8 MiB/s cap: ~20 s of pre-copy that converges
	// (the dirtying one does not at that rate, and ferry rightly gives up).
	a, sv := bootGuest(t, ctx, "companion-kill", "idle")
	if err := st.CapMigration(ctx, 8); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.CapMigration(context.Background(), 0) })
	killed := false
	m, err := st.LiveMigrateWith(ctx, sv.ID, "lab-b", 10*time.Minute, stack.MigrateOptions{
		Sample: func(at time.Duration, _ virt.JobStats) {
			if !killed && at > 3*time.Second {
				killed = true
				fs["lab-a"].Kill()
				if err := fs["lab-a"].Start(ctx); err != nil {
					t.Errorf("restart ferryd: %v", err)
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if !killed {
		t.Fatal("the migration ended before ferryd could be killed")
	}
	checkMigration(ctx, t, a, sv, m)
	j := ferryRan(t, fs["lab-a"], m.Migration.UUID)
	if j.Phase != migration.PhaseCompleted || j.Record.Attaches == 0 || j.Pending() != 0 {
		t.Errorf("ferry's journal: %s, re-attached %d times, %d pending", j.Phase, j.Record.Attaches, j.Pending())
	}
	ms, err := a.Migrations(ctx, sv.ID)
	if err != nil || len(ms) != 1 {
		t.Errorf("migrations %+v (%v), want the one", ms, err)
	}
	evs, _ := eventsOf(ctx, t, a, sv.ID, "live-migration")
	if n := countPrefix(evs, "ferry_live_migration="); n != 1 {
		t.Errorf("ferry_live_migration recorded %d times: %v", n, evs)
	}
}

// TestCompanionNovaComputeRestart: the source's nova-compute restarts in
// the middle of a migration ferry runs; its recovery (_init_instance →
// _reset_live_migration) aborts the libvirt job and sets the migration to
// error. Nova, libvirt and ferry's journal then tell one story: the guest
// runs on the source, the migration is error everywhere, and ferry wrote
// nothing over nova-compute's records.
func TestCompanionNovaComputeRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	fs := companions(t, ctx)
	a, sv := bootDirty(t, ctx, "companion-restart")
	if err := st.CapMigration(ctx, 4); err != nil { // long enough for a nova-compute restart
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.CapMigration(context.Background(), 0) })
	restarted := make(chan error, 1)
	m, err := st.LiveMigrateWith(ctx, sv.ID, "lab-b", 10*time.Minute, stack.MigrateOptions{
		Sample: func(at time.Duration, _ virt.JobStats) {
			if at > 3*time.Second && len(restarted) == 0 && cap(restarted) == 1 {
				restarted <- restartCompute(ctx, "lab-a")
				restarted = make(chan error) // once
			}
		}})
	if err == nil || m.Migration.Status != "error" {
		t.Fatalf("migration %s (%v), want error from nova-compute's recovery", m.Migration.Status, err)
	}
	got, err := a.WaitServer(ctx, sv.ID, 2*time.Minute, func(s stack.Server) bool { return s.TaskState == nil })
	if err != nil || got.Host != "lab-a" || got.Status != "ACTIVE" {
		t.Errorf("server after the restart: host %q status %q (%v)", got.Host, got.Status, err)
	}
	j := ferryRan(t, fs["lab-a"], m.Migration.UUID)
	if j.Phase != migration.PhaseError || !j.External || !strings.Contains(j.Reason, "_reset_live_migration") {
		t.Errorf("ferry's journal: %s external=%v %q", j.Phase, j.External, j.Reason)
	}
	if src, ok := domainState(ctx, t, "lab-a", got.InstanceName); !ok || src != "running" {
		t.Errorf("libvirt on lab-a: %q %v, want the guest running", src, ok)
	}
	if dst, ok := domainState(ctx, t, "lab-b", got.InstanceName); ok {
		t.Errorf("libvirt on lab-b still has the guest (%s)", dst)
	}
	if ms, _ := a.Migrations(ctx, sv.ID); len(ms) == 0 || ms[0].Status != "error" {
		t.Errorf("Nova's migration record: %+v", ms)
	}
}

// TestCompanionRefused: an instance ferry cannot carry (a NUMA topology,
// which only Nova's own XML rewrite moves) is refused before anything
// moves: the migration ends in error with ferry's reason in the action's
// event, and the guest never stopped.
func TestCompanionRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	companions(t, ctx)
	a, err := st.API(ctx)
	if err != nil {
		t.Fatal(err)
	}
	flavor, err := st.Flavor(ctx, "numa-small", 256, map[string]string{"hw:numa_nodes": "1"})
	if err != nil {
		t.Fatal(err)
	}
	sv, err := st.Boot(ctx, fmt.Sprintf("companion-numa-%d", time.Now().Unix()), "dirty", flavor, "lab-a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.DeleteServer(context.Background(), sv.ID) })
	con, err := stack.OpenConsole(ctx, st.Host("lab-a").ConsoleLog(sv.ID), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()
	if _, err := con.Wait(ctx, 10, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	m, err := st.LiveMigrate(ctx, sv.ID, "lab-b", 5*time.Minute)
	if err == nil || m.Migration.Status != "error" {
		t.Fatalf("migration %s (%v), want error", m.Migration.Status, err)
	}
	// The event is finished after the migration's status is saved (Nova's
	// order): a look right after the status can see it still open.
	fctx, fcancel := context.WithTimeout(ctx, time.Minute)
	eventFinished(fctx, t, a, sv.ID, "compute_live_migration")
	fcancel()
	evs, act := eventsOf(ctx, t, a, sv.ID, "live-migration")
	found := false
	for _, e := range act.Events {
		if e.Event == "compute_live_migration" && e.Result == "Error" && strings.Contains(e.Details, "NUMA topology") {
			found = true
		}
	}
	if !found {
		t.Errorf("no compute_live_migration event with ferry's reason: %v %+v", evs, act.Events)
	}
	beats, err := con.Wait(ctx, 10, time.Minute) // ten more: it never stopped
	if err != nil {
		t.Fatalf("the guest's heartbeat after the refusal: %v", err)
	}
	if err := stack.Continuous(beats); err != nil {
		t.Errorf("heartbeat: %v", err)
	}
	if got, _ := a.GetServer(ctx, sv.ID); got.Host != "lab-a" || got.Status != "ACTIVE" || got.TaskState != nil {
		t.Errorf("after the refusal: host %q status %q task %v", got.Host, got.Status, got.TaskState)
	}
}

func bootDirty(t *testing.T, ctx context.Context, name string) (*stack.API, stack.Server) {
	t.Helper()
	return bootGuest(t, ctx, name, "dirty")
}

// bootGuest boots a server of the workload on lab-a with a Neutron port
// and waits for its heartbeat.
func bootGuest(t *testing.T, ctx context.Context, name, workload string) (*stack.API, stack.Server) {
	t.Helper()
	return bootGuestOn(t, ctx, name, workload, "lab-a")
}

// bootGuestOn boots a server of the workload on host with a Neutron port
// and waits for its heartbeat.
func bootGuestOn(t *testing.T, ctx context.Context, name, workload, host string) (*stack.API, stack.Server) {
	t.Helper()
	a, err := st.API(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := st.Boot(ctx, fmt.Sprintf("%s-%d", name, time.Now().Unix()), workload, st.Flavors.Small, host)
	if err != nil {
		t.Fatal(err)
	}
	heartbeating(ctx, t, a, sv, host, 20, 3*time.Minute)
	return a, sv
}

// checkAfterRollback: the server runs on host, its port is bound there
// only, and Placement holds it there only and nothing for the migration.
func checkAfterRollback(ctx context.Context, t *testing.T, a *stack.API, server, host, mig string) {
	t.Helper()
	got, err := a.WaitServer(ctx, server, time.Minute, func(s stack.Server) bool { return s.TaskState == nil })
	if err != nil || got.Host != host || got.Status != "ACTIVE" {
		t.Errorf("server: host %q status %q (%v)", got.Host, got.Status, err)
	}
	ports, err := a.Ports(ctx, server)
	if err != nil || len(ports) != 1 {
		t.Fatalf("ports: %v (%v)", ports, err)
	}
	// The destination deletes its binding in rollback_live_migration_at_
	// destination, a cast: Nova shows no mark of its end, so wait for it.
	var bs []stack.Binding
	for end := time.Now().Add(time.Minute); ; {
		bs, err = a.Bindings(ctx, ports[0].ID)
		if (err == nil && len(bs) == 1) || time.Now().After(end) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil || len(bs) != 1 || bs[0].Host != host || bs[0].Status != "ACTIVE" {
		t.Errorf("bindings a minute after the rollback: %+v (%v), want one ACTIVE on %s", bs, err, host)
	}
	checkPlacement(ctx, t, a, server, stack.LiveMigration{To: host, Migration: stack.Migration{UUID: mig}})
}

func countPrefix(xs []string, p string) int {
	n := 0
	for _, x := range xs {
		if strings.HasPrefix(x, p) {
			n++
		}
	}
	return n
}

// restartCompute restarts a host's nova-compute as `systemctl restart`
// does.
func restartCompute(ctx context.Context, host string) error {
	if err := st.StopCompute(ctx, host); err != nil {
		return err
	}
	return st.StartCompute(ctx, host)
}

// domainState is a domain's state on a lab host's libvirt.
func domainState(ctx context.Context, t *testing.T, host, dom string) (string, bool) {
	t.Helper()
	c, err := st.Host(host).Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.DomainState(ctx, dom)
	if err != nil {
		return "", false
	}
	return s.State.String(), true
}

// TestCompanionFerrydDown: with ferryd stopped nothing for nova-compute is
// lost — `openstack server stop` waits in ferryd's queue and takes effect
// once ferryd is back; and the cut-over, run while a server is being
// started and stopped, loses and duplicates nothing.
func TestCompanionFerrydDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	fs := companions(t, ctx)
	a, err := st.API(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := st.Boot(ctx, fmt.Sprintf("companion-down-%d", time.Now().Unix()), "idle", st.Flavors.Small, "lab-a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.DeleteServer(context.Background(), sv.ID) })
	status := func(want string) {
		t.Helper()
		if _, err := a.WaitServer(ctx, sv.ID, 3*time.Minute, func(s stack.Server) bool { return s.Status == want && s.TaskState == nil }); err != nil {
			t.Fatal(err)
		}
	}

	fs["lab-a"].Stop()
	if out, err := st.OpenStack(ctx, "server", "stop", sv.ID); err != nil {
		t.Fatalf("server stop: %v\n%s", err, out)
	}
	waited := time.Now()
	for time.Since(waited) < 15*time.Second { // the cast waits in ferryd's queue
		got, err := a.GetServer(ctx, sv.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != "ACTIVE" {
			t.Fatalf("server %s with ferryd stopped: the stop reached nova-compute without ferryd", got.Status)
		}
		time.Sleep(time.Second)
	}
	if err := fs["lab-a"].Start(ctx); err != nil {
		t.Fatal(err)
	}
	status("SHUTOFF")

	// The cut-over both ways, each with an action waiting in a queue: the
	// cast is sent while the service that would take it is down (an action
	// nova-compute is already carrying out when the cut-over stops it is
	// killed with it, as by systemctl stop: not what is tested here).
	fs["lab-a"].Stop()
	if out, err := st.OpenStack(ctx, "server", "start", sv.ID); err != nil {
		t.Fatalf("server start: %v\n%s", err, out)
	}
	if err := st.ToStock(ctx, fs["lab-a"]); err != nil {
		t.Fatal(err)
	}
	delete(fs, "lab-a")
	status("ACTIVE")
	if err := st.StopCompute(ctx, "lab-a"); err != nil {
		t.Fatal(err)
	}
	if out, err := st.OpenStack(ctx, "server", "stop", sv.ID); err != nil {
		t.Fatalf("server stop: %v\n%s", err, out)
	}
	f, err := st.ToCompanion(ctx, "lab-a", stack.FerrydOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fs["lab-a"] = f
	status("SHUTOFF")
	acts, err := a.Actions(ctx, sv.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Each action once, none lost: each reached a nova-compute (it has
	// its compute_ event). A cast that waited while nova-compute was down
	// can find its work done: nova-compute's start-up (_init_instance)
	// retries an instance's pending powering-on/off itself, and the cast
	// then fails as preempted — Nova's own behaviour after any restart;
	// the server's state above is what counts.
	var names []string
	for i := len(acts) - 1; i >= 0; i-- { // oldest first
		act := acts[i]
		names = append(names, act.Action)
		if act.Action != "stop" && act.Action != "start" {
			continue
		}
		reached := false
		for _, e := range act.Events {
			reached = reached || e.Event == "compute_"+act.Action+"_instance"
		}
		if !reached {
			t.Errorf("action %s (%s) never reached a nova-compute: %+v", act.Action, act.RequestID, act.Events)
		}
	}
	if !slices.Equal(names, []string{"create", "stop", "start", "stop"}) {
		t.Errorf("actions %v: want create, stop, start, stop, each once", names)
	}
}
