//go:build integration

package stack_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/stack"
)

// natives hands both lab hosts to native-mode ferryds for one test (a
// host without its stock nova-compute) and gives them back after it.
func natives(t *testing.T, ctx context.Context) map[string]*stack.Ferryd {
	t.Helper()
	if err := stockShape(ctx); err != nil {
		t.Fatal(err)
	}
	fs := map[string]*stack.Ferryd{}
	for _, h := range []string{"lab-a", "lab-b"} {
		f, err := st.HandToFerryd(ctx, h, stack.FerrydOptions{})
		if err != nil {
			t.Fatal(err)
		}
		fs[h] = f
		t.Cleanup(func() {
			f.Stop()
			if err := st.StartCompute(context.Background(), h); err != nil {
				t.Errorf("give %s back to nova-compute: %v", h, err)
			}
		})
	}
	return fs
}

// eventsOf returns the events of the server's newest action named action,
// as "event=result", sorted.
func eventsOf(ctx context.Context, t *testing.T, a *stack.API, server, action string) ([]string, stack.Action) {
	t.Helper()
	acts, err := a.Actions(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	for _, act := range acts {
		if act.Action == action {
			var out []string
			for _, e := range act.Events {
				out = append(out, e.Event+"="+e.Result)
			}
			sort.Strings(out)
			return out, act
		}
	}
	t.Fatalf("server %s has no %s action: %+v", server, action, acts)
	return nil, stack.Action{}
}

// TestNativeRecords: the real nova-api, conductor, scheduler and Placement
// drive native-mode ferryds on both hosts (issue 12, items 1–5), checked
// through the API as an operator reads it: the server's host and node are
// the destination's and its compute node's (the next migration finds the
// host); the live-migration action has an event per method nova-compute
// decorates, each Success, and the force-complete and abort actions have
// theirs; Placement holds the instance on its host only and nothing for
// the migration; the hosts' compute services stay up on ferryd's
// heartbeat past service_down_time.
func TestNativeRecords(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	a, err := st.API(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := st.BootWithoutPort(ctx, fmt.Sprintf("native-%d", time.Now().Unix()), "dirty", st.Flavors.Small, "lab-a")
	if err != nil {
		t.Fatal(err)
	}
	heartbeating(ctx, t, a, sv, "lab-a", 10, 3*time.Minute)
	handed := time.Now()
	natives(t, ctx)

	// a → b, and the node as the conductor knows it (item 1), in Zed's
	// order (item 3).
	order := watchOrder(ctx, t, a, sv.ID)
	m, err := st.LiveMigrate(ctx, sv.ID, "lab-b", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	order(m.Migration.Status)
	t.Logf("FIGURE native_live_migration %s", m)
	if m.Continuity != nil || m.Migration.Status != "completed" {
		t.Errorf("a→b: %s", m)
	}
	checkPlacement(ctx, t, a, sv.ID, m)
	got, err := a.GetServer(ctx, sv.ID)
	if err != nil {
		t.Fatal(err)
	}
	if node := hypervisorOf(ctx, t, a, "lab-b"); got.Host != "lab-b" || got.Node != node {
		t.Errorf("server after a→b: host %q node %q, want lab-b and its compute node %q", got.Host, got.Node, node)
	}
	// Events per decorated method (item 2), as Nova's own migration records them.
	evs, act := eventsOf(ctx, t, a, sv.ID, "live-migration")
	for _, want := range []string{"compute_check_can_live_migrate_destination=Success", "compute_check_can_live_migrate_source=Success",
		"compute_live_migration=Success", "compute_post_live_migration_at_destination=Success", "compute_pre_live_migration=Success",
		"ferry_live_migration=Success"} {
		if !slices.Contains(evs, want) {
			t.Errorf("live-migration action events %v lack %s", evs, want)
		}
	}
	if act.Message != "" && act.Message != "Success" {
		t.Errorf("live-migration action message %q", act.Message)
	}

	// The operator's abort (its action and events), b → a under a cap.
	if err := st.CapMigration(ctx, 8); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.CapMigration(context.Background(), 0) })
	order = watchOrder(ctx, t, a, sv.ID)
	ab, err := st.LiveMigrateWith(ctx, sv.ID, "lab-a", 10*time.Minute, stack.MigrateOptions{Cutoff: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ferryFinished(ctx, t, a, sv.ID) // the rollback's last report
	order(ab.Migration.Status)
	if ab.Migration.Status != "cancelled" || ab.Continuity != nil {
		t.Errorf("aborted b→a: %s", ab)
	}
	if got, _ := a.GetServer(ctx, sv.ID); got.Host != "lab-b" || got.Status != "ACTIVE" || got.TaskState != nil {
		t.Errorf("after the abort: host %q status %q task %v", got.Host, got.Status, got.TaskState)
	}
	if evs, _ := eventsOf(ctx, t, a, sv.ID, "live_migration_cancel"); !slices.Contains(evs, "compute_live_migration_abort=Success") {
		t.Errorf("abort action events %v", evs)
	}
	if evs, _ := eventsOf(ctx, t, a, sv.ID, "live-migration"); !slices.Contains(evs, "compute_rollback_live_migration_at_destination=Success") {
		t.Errorf("aborted live-migration action events %v", evs)
	}
	checkPlacement(ctx, t, a, sv.ID, stack.LiveMigration{To: "lab-b", Migration: ab.Migration})

	// The operator's force-complete, b → a under the same cap.
	fc := forceCompleted(ctx, t, sv.ID, "lab-a")
	if fc.Migration.Status != "completed" || fc.Continuity != nil {
		t.Errorf("force-completed b→a: %s", fc)
	}
	if evs, _ := eventsOf(ctx, t, a, sv.ID, "live_migration_force_complete"); !slices.Contains(evs, "compute_live_migration_force_complete=Success") {
		t.Errorf("force-complete action events %v", evs)
	}
	checkPlacement(ctx, t, a, sv.ID, fc)

	// The services stay up on ferryd's heartbeat (item 5): past
	// service_down_time (60 s) since nova-compute stopped.
	if wait := time.Until(handed.Add(75 * time.Second)); wait > 0 {
		time.Sleep(wait)
	}
	svcs, err := a.ComputeServices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.State != "up" {
			t.Errorf("compute service %s is %s (updated %s) %s after nova-compute stopped", s.Host, s.State, s.UpdatedAt, time.Since(handed).Round(time.Second))
		}
	}
}

// forceCompleted starts a live migration and force-completes it through
// the API once it runs.
func forceCompleted(ctx context.Context, t *testing.T, server, to string) stack.LiveMigration {
	t.Helper()
	a, err := st.API(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		m   stack.LiveMigration
		err error
	}
	done := make(chan result, 1)
	go func() { // owner: this function (waits below)
		m, err := st.LiveMigrate(ctx, server, to, 10*time.Minute)
		done <- result{m, err}
	}()
	forced := false
	for !forced {
		select {
		case r := <-done:
			t.Fatalf("the migration ended before it could be force-completed: %v %v", r.m, r.err)
		case <-time.After(500 * time.Millisecond):
		}
		ms, err := a.Migrations(ctx, server)
		if err != nil || len(ms) == 0 || ms[0].Status != "running" || ms[0].Dest != to {
			continue
		}
		time.Sleep(2 * time.Second) // a few iterations in
		if out, err := st.OpenStack(ctx, "--os-compute-api-version", "2.22", "server", "migration", "force", "complete",
			server, strconv.Itoa(ms[0].ID)); err != nil {
			t.Fatalf("force complete: %v\n%s", err, out)
		}
		forced = true
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.m
}

// ferryFinished waits until ferry's own event of the server's newest
// live-migration action has its result: ferryd records it after every
// other report of the migration (Placement's included), so what the
// migration settles is settled then. Nova's status comes before Placement
// in Zed's order; a check right after the status races the release.
func ferryFinished(ctx context.Context, t *testing.T, a *stack.API, server string) {
	t.Helper()
	eventFinished(ctx, t, a, server, "ferry_live_migration")
}

// eventFinished waits until the event of the server's newest
// live-migration action has its result.
func eventFinished(ctx context.Context, t *testing.T, a *stack.API, server, event string) {
	t.Helper()
	for {
		acts, err := a.Actions(ctx, server)
		if err != nil {
			t.Fatal(err)
		}
		for _, act := range acts {
			if act.Action != "live-migration" {
				continue
			}
			for _, e := range act.Events {
				if e.Event == event && e.Result != "" {
					return
				}
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("event %s of the newest live-migration action of %s never finished: %v", event, server, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// checkPlacement: once ferry finished the migration, the instance holds
// its flavor on m.To only, the migration nothing.
func checkPlacement(ctx context.Context, t *testing.T, a *stack.API, server string, m stack.LiveMigration) {
	t.Helper()
	ferryFinished(ctx, t, a, server)
	alloc, err := a.Allocations(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"VCPU": 1, "MEMORY_MB": 256}
	if len(alloc) != 1 || fmt.Sprint(alloc[m.To]) != fmt.Sprint(want) {
		t.Errorf("allocations of the instance (on %s): %v, want %v on %s only", m.To, alloc, want, m.To)
	}
	if ma, err := a.Allocations(ctx, m.Migration.UUID); err != nil || len(ma) != 0 {
		t.Errorf("allocations of migration %s: %v (%v), want none", m.Migration.UUID, ma, err)
	}
}

// hypervisorOf is the hypervisor_hostname of a host's compute node.
func hypervisorOf(ctx context.Context, t *testing.T, a *stack.API, host string) string {
	t.Helper()
	var out struct {
		Hypervisors []struct {
			Name    string `json:"hypervisor_hostname"`
			Service struct {
				Host string `json:"host"`
			} `json:"service"`
		} `json:"hypervisors"`
	}
	if err := stack.Do(ctx, a.Compute, "GET", "os-hypervisors/detail", nil, &out); err != nil {
		t.Fatal(err)
	}
	for _, h := range out.Hypervisors {
		if h.Service.Host == host {
			return h.Name
		}
	}
	t.Fatalf("no hypervisor for %s: %+v", host, out.Hypervisors)
	return ""
}
