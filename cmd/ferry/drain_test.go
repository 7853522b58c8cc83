package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/openstack"
	"opendev.org/x/ferry/pkg/status"
)

func onA(name string, ramMiB int64) openstack.Server {
	return openstack.Server{ID: "id-" + name, Name: name, Status: "ACTIVE", Host: "lab-a", Flavor: openstack.Flavor{RAMMiB: ramMiB}}
}

// drainCloud is lab-a with servers on it, each migration going
// accepted → running → completed unless a test says otherwise.
func drainCloud(servers ...openstack.Server) (*fakeNova, *fakeFerryds) {
	n := &fakeNova{servers: map[string]openstack.Server{}, script: []string{"running", "completed"}, started: make(chan string, 16),
		hold: map[string]chan struct{}{}, found: map[string]chan struct{}{}}
	for _, s := range servers {
		n.servers[s.ID] = s
		n.found[s.ID] = make(chan struct{})
	}
	return n, &fakeFerryds{hosts: map[string][]status.Migration{}}
}

func executeCtx(ctx context.Context, a *app, args ...string) int {
	root := a.root()
	root.SetArgs(args)
	root.SetOut(a.out)
	root.SetErr(a.errw)
	return exitOf(root.ExecuteContext(ctx), a.errw)
}

func liveMigrates(calls []string) []string {
	var out []string
	for _, c := range calls {
		if strings.HasPrefix(c, "live-migrate ") {
			out = append(out, c)
		}
	}
	return out
}

func decodeReport(t *testing.T, b []byte) drainReport {
	t.Helper()
	var r drainReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("-f json: %v\n%s", err, b)
	}
	return r
}

type drained struct {
	Name, Outcome string
	ID            int64
	Resumed       bool
}

func outcomes(r drainReport) []drained {
	var out []drained
	for _, s := range r.Servers {
		out = append(out, drained{s.Name, s.Outcome, s.MigrationID, s.Resumed})
	}
	return out
}

// One at a time, smallest first, each through the scheduler with block
// migration auto; the servers that cannot live-migrate are skipped with
// the reason, the one elsewhere is not the drain's; exit 0.
func TestDrainOrderAndReport(t *testing.T) {
	off, busy := onA("off", 256), onA("busy", 256)
	off.Status, busy.TaskState = "SHUTOFF", "resize_prep"
	elsewhere := onA("elsewhere", 256)
	elsewhere.Host = "lab-c"
	n, fd := drainCloud(onA("big", 4096), onA("small", 512), onA("mid", 1024), off, busy, elsewhere)
	a, out, errw := newApp(n, fd)
	if code := execute(a, "drain", "lab-a", "--max-parallel", "1", "-f", "json"); code != 0 {
		t.Fatalf("exit %d:\n%s", code, errw)
	}
	want := []string{`live-migrate id-small host="" block=auto`, `live-migrate id-mid host="" block=auto`, `live-migrate id-big host="" block=auto`}
	if diff := cmp.Diff(want, liveMigrates(n.calls)); diff != "" {
		t.Errorf("live-migrates (-want +got):\n%s", diff)
	}
	r := decodeReport(t, out.Bytes())
	wantOut := []drained{{"small", drainMigrated, 43, false}, {"mid", drainMigrated, 44, false}, {"big", drainMigrated, 45, false},
		{"busy", drainSkipped, 0, false}, {"off", drainSkipped, 0, false}}
	if diff := cmp.Diff(wantOut, outcomes(r)); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	if s := r.Servers[0]; s.Dest != "lab-b" || s.Status != "completed" || s.MigrationUUID != uuidOf(43) || s.RAMMiB != 512 {
		t.Errorf("small: %+v", s)
	}
	if !strings.Contains(r.Servers[3].Reason, "task_state resize_prep") || !strings.Contains(r.Servers[4].Reason, "status SHUTOFF") {
		t.Errorf("skip reasons: %q %q", r.Servers[3].Reason, r.Servers[4].Reason)
	}
	if n.maxRunning != 1 || r.MaxParallel != 1 || r.BandwidthMiB != 0 {
		t.Errorf("at most %d at once; report %+v", n.maxRunning, r)
	}
	for _, s := range []string{"to migrate, in this order: small, mid, big", "drain lab-a: 1 running, 0 done, 0 failed, 2 waiting · small ",
		"drain lab-a: 0 running, 3 done, 0 failed, 0 waiting", "small: migration 43 completed, now on lab-b", "skipping off (id-off): status SHUTOFF"} {
		if !strings.Contains(errw.String(), s) {
			t.Errorf("stderr lacks %q:\n%s", s, errw)
		}
	}
	if strings.Contains(errw.String(), "\r") {
		t.Errorf("a redraw on a non-terminal:\n%q", errw)
	}
	// The table, again (nothing left to move: exit 0, the skipped shown).
	out.Reset()
	if code := execute(a, "drain", "lab-a"); code != 0 || !strings.Contains(out.String(), "OUTCOME") || !strings.Contains(out.String(), "status SHUTOFF") ||
		strings.Contains(out.String(), "small") {
		t.Errorf("table: exit %d\n%s", code, out)
	}
}

// With the link's bandwidth known (ferry.yaml's drain: bandwidth:) and a
// dirty rate an earlier migration measured, a third migration waits while
// three at once would leave the hot guest less than it dirties, and
// starts once one of the two ends.
func TestDrainAdmission(t *testing.T) {
	n, fd := drainCloud(onA("hot", 512), onA("b", 1024), onA("c", 2048))
	// hot came to lab-a from lab-b; ferry's record there says it dirties
	// 40 MiB/s (moved = first pass·B/(B−d)).
	n.ms = []openstack.Migration{{ID: 30, UUID: uuidOf(30), InstanceUUID: "id-hot", Status: "completed", SourceCompute: "lab-b", DestCompute: "lab-a"}}
	movedMiB := 512 * 100 / 60.0
	fd.hosts["lab-b"] = []status.Migration{{ID: uuidOf(30), Phase: "completed",
		Record: status.Record{MemoryBytes: uint64(math.Ceil(movedMiB * (1 << 20))), FirstPassBytes: 512 << 20, BandwidthBps: 100 << 20}}}
	n.hold["id-hot"], n.hold["id-b"] = make(chan struct{}), make(chan struct{})
	a, out, errw := newApp(n, fd)
	a.conf = &config.CLI{Drain: config.CLIDrain{Bandwidth: 100}}
	done := make(chan int, 1)
	go func() { done <- execute(a, "drain", "lab-a", "--max-parallel", "3", "--json") }()
	first, second := <-n.started, <-n.started
	if first != "id-hot" || second != "id-b" {
		t.Fatalf("started %s, %s; want hot (8.5 s expected), then b", first, second)
	}
	close(n.hold["id-b"]) // b ends; with two running each gets 50 > 40
	if third := <-n.started; third != "id-c" {
		t.Fatalf("third started: %s", third)
	}
	close(n.hold["id-hot"])
	if code := <-done; code != 0 {
		t.Fatalf("exit %d:\n%s", code, errw)
	}
	if n.maxRunning != 2 {
		t.Errorf("at most %d migrations at once, want 2 (c waited for b)", n.maxRunning)
	}
	if !strings.Contains(errw.String(), "c waits: hot dirties 40 MiB/s; 3 at once would leave each 33 MiB/s of 100") {
		t.Errorf("stderr does not say why c waited:\n%s", errw)
	}
	r := decodeReport(t, out.Bytes())
	if r.BandwidthMiB != 100 || math.Abs(r.Servers[0].DirtyMiB-40) > 0.01 || r.Servers[1].DirtyMiB != 0 {
		t.Errorf("report: %+v", r)
	}
	// --bandwidth overrides ferry.yaml; 0 is unknown: --max-parallel alone.
	n2, fd2 := drainCloud(onA("x", 512))
	a2, out2, _ := newApp(n2, fd2)
	a2.conf = a.conf
	if code := execute(a2, "drain", "lab-a", "--bandwidth", "0", "-f", "json"); code != 0 || decodeReport(t, out2.Bytes()).BandwidthMiB != 0 {
		t.Errorf("--bandwidth 0: exit %d\n%s", code, out2)
	}
}

// A server that fails — its migration ends in error (ferry's reason), or
// Nova refuses it — does not stop the others; the drain exits 1 naming
// them.
func TestDrainFailureDoesNotStopOthers(t *testing.T) {
	n, fd := drainCloud(onA("a", 512), onA("b", 1024), onA("c", 2048))
	n.scripts = map[string][]string{"id-a": {"running", "error"}}
	n.refuseOf = map[string]error{"id-b": fmt.Errorf("live-migrate id-b: %w: 409 no valid host", errdefs.ErrConflict)}
	fd.hosts["lab-a"] = []status.Migration{{ID: uuidOf(43), Phase: "error", Reason: "libvirtd on lab-a stopped answering"}}
	a, out, errw := newApp(n, fd)
	if code := execute(a, "drain", "lab-a", "--max-parallel", "1", "-f", "yaml"); code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, errw)
	}
	if len(liveMigrates(n.calls)) != 3 {
		t.Errorf("live-migrates: %v", liveMigrates(n.calls))
	}
	for _, s := range []string{"outcome: failed", "reason: libvirtd on lab-a stopped answering", "409 no valid host", "outcome: migrated"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	if !strings.Contains(errw.String(), "ferry: drain lab-a: 2 failed: a (migration 43), b\n") ||
		!strings.Contains(errw.String(), "a: migration 43 ended error: libvirtd on lab-a stopped answering") {
		t.Errorf("stderr:\n%s", errw)
	}
}

// Interrupted, the drain starts nothing more and aborts nothing: it says
// which still run and exits 1. Run again, it skips the server that left,
// waits on the two still migrating (starting neither again) and starts
// the one the interrupt kept from starting.
func TestDrainInterruptAndResume(t *testing.T) {
	n, fd := drainCloud(onA("a", 512), onA("b", 1024), onA("c", 2048), onA("d", 4096))
	n.hold["id-a"], n.hold["id-c"] = make(chan struct{}), make(chan struct{})
	a, out, errw := newApp(n, fd)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- executeCtx(ctx, a, "drain", "lab-a", "-f", "json") }()
	for _, want := range []string{"id-a", "id-b", "id-c"} { // b ends, c takes its place; d waits behind a and c
		if got := <-n.started; got != want {
			t.Fatalf("started %s, want %s", got, want)
		}
	}
	<-n.found["id-a"]
	<-n.found["id-c"] // both workers poll their migration
	cancel()          // SIGINT
	if code := <-done; code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, errw)
	}
	for _, c := range n.calls {
		if strings.HasPrefix(c, "abort") {
			t.Errorf("the interrupt aborted a migration: %v", n.calls)
		}
	}
	r := decodeReport(t, out.Bytes())
	want := []drained{{"a", drainRunning, 43, false}, {"b", drainMigrated, 44, false}, {"c", drainRunning, 45, false}, {"d", drainNotStarted, 0, false}}
	if diff := cmp.Diff(want, outcomes(r)); diff != "" || !r.Interrupted {
		t.Errorf("interrupted report (-want +got):\n%s%+v", diff, r)
	}
	for _, s := range []string{"interrupted: starting no more migrations",
		"drain lab-a: 2 still running, not aborted: a (migration 43), c (migration 45); 1 not started: d (run `ferry drain lab-a` again to go on)"} {
		if !strings.Contains(errw.String(), s) {
			t.Errorf("stderr lacks %q:\n%s", s, errw)
		}
	}

	// Again: a and c are still migrating.
	before := len(liveMigrates(n.calls))
	close(n.hold["id-a"])
	close(n.hold["id-c"])
	out.Reset()
	errw.Reset()
	if code := execute(a, "drain", "lab-a", "-f", "json"); code != 0 {
		t.Fatalf("resumed: exit %d:\n%s", code, errw)
	}
	if got := liveMigrates(n.calls)[before:]; len(got) != 1 || !strings.HasPrefix(got[0], "live-migrate id-d ") {
		t.Errorf("the resumed drain started %v, want d alone", got)
	}
	r = decodeReport(t, out.Bytes())
	want = []drained{{"a", drainMigrated, 43, true}, {"c", drainMigrated, 45, true}, {"d", drainMigrated, 46, false}}
	if diff := cmp.Diff(want, outcomes(r)); diff != "" {
		t.Errorf("resumed report (-want +got):\n%s", diff)
	}
	if !strings.Contains(errw.String(), "waiting on the migrations already running: a (migration 43), c (migration 45)") {
		t.Errorf("stderr:\n%s", errw)
	}
}

// A migration record left running while its server is idle (a crash) is
// not waited on: the server is migrated afresh.
func TestDrainStaleRecordNotResumed(t *testing.T) {
	n, fd := drainCloud(onA("a", 512))
	n.ms = []openstack.Migration{{ID: 20, UUID: uuidOf(20), InstanceUUID: "id-a", Status: "running", SourceCompute: "lab-a", DestCompute: "lab-b"}}
	a, out, errw := newApp(n, fd)
	if code := execute(a, "drain", "lab-a", "-f", "json"); code != 0 {
		t.Fatalf("exit %d:\n%s", code, errw)
	}
	if diff := cmp.Diff([]drained{{"a", drainMigrated, 43, false}}, outcomes(decodeReport(t, out.Bytes()))); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
}

// Servers no earlier migration measured are measured now, all at once,
// through the host's ferryd's plan (its libvirt dirty-rate calculation):
// the idle ones go first and together; the one dirtying 30 of the link's
// 50 MiB/s goes last and alone (beside it, either would get 25 MiB/s).
func TestDrainMeasuresDirtyRates(t *testing.T) {
	n, fd := drainCloud(onA("hot", 512), onA("idle-1", 512), onA("idle-2", 512))
	fd.plans = map[string]map[string]status.Plan{"lab-a": {
		"id-hot":    {Memory: status.PlanMemory{DirtyBps: 30 << 20}},
		"id-idle-1": {Memory: status.PlanMemory{DirtyBps: 0}},
		"id-idle-2": {Memory: status.PlanMemory{DirtyBps: 0}},
	}}
	a, out, errw := newApp(n, fd)
	if code := execute(a, "drain", "lab-a", "--bandwidth", "50", "--sample", "3s", "-f", "json"); code != 0 {
		t.Fatalf("exit %d:\n%s", code, errw)
	}
	if got := liveMigrates(n.calls); len(got) != 3 || !strings.Contains(got[2], "id-hot") {
		t.Errorf("live-migrates %v: the hot one last", got)
	}
	if n.maxRunning != 2 {
		t.Errorf("at most %d at once, want the two idle ones together", n.maxRunning)
	}
	if len(fd.planAsked) != 3 || !strings.HasSuffix(fd.planAsked[0], " 3s") {
		t.Errorf("plans asked %v: want each server measured over 3s", fd.planAsked)
	}
	r := decodeReport(t, out.Bytes())
	for _, s := range r.Servers {
		if s.Name == "hot" && s.DirtyMiB != 30 {
			t.Errorf("hot's dirty rate in the report: %v", s.DirtyMiB)
		}
	}
	// --sample 0 measures nothing.
	n, fd = drainCloud(onA("x", 512))
	a, _, errw = newApp(n, fd)
	if code := execute(a, "drain", "lab-a", "--sample", "0"); code != 0 || len(fd.planAsked) != 0 {
		t.Errorf("--sample 0: exit %d, plans asked %v\n%s", code, fd.planAsked, errw)
	}
}
