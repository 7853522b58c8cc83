//go:build integration

package ferryd

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/integration/ferrylab"
	"opendev.org/x/ferry/integration/lab"
)

// where returns the host the guest runs on and the other one.
func where(t *testing.T, g *lab.Guest) (from, to *lab.Host) {
	t.Helper()
	from, to, err := theLab.Where(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	return from, to
}

func migUUID(id int) string { return fmt.Sprintf("5f3c2a10-7e4b-4d8e-a1c2-%012d", id) }

func migrate(g *lab.Guest, from, to *lab.Host, id int) map[string]any {
	return map[string]any{"op": "migrate", "uuid": g.UUID, "name": g.Spec.Name, "source": from.Hostname,
		"dest": to.Hostname, "migration_id": id, "migration_uuid": migUUID(id)}
}

func op(name string, g *lab.Guest, from, to *lab.Host, id int) map[string]any {
	c := migrate(g, from, to, id)
	c["op"] = name
	return c
}

func send(t *testing.T, cmd map[string]any) {
	t.Helper()
	if err := env.Conductor.Send(cmd); err != nil {
		t.Fatal(err)
	}
}

// status waits until Migration id is saved with one of the statuses.
func status(t *testing.T, id int, timeout time.Duration, want ...string) string {
	t.Helper()
	e, err := env.Conductor.Next(context.Background(), timeout, func(e ferrylab.Event) bool {
		if e.Str("object") != "Migration" || e["id"] != float64(id) {
			return false
		}
		f, _ := e["fields"].(map[string]any)
		s, _ := f["status"].(string)
		return slices.Contains(want, s)
	})
	if err != nil {
		t.Fatalf("migration %d: waiting for %v: %v (so far %v)", id, want, err, env.Conductor.Statuses(id))
	}
	return e["fields"].(map[string]any)["status"].(string)
}

func precheck(t *testing.T) ferrylab.Event {
	t.Helper()
	e, err := env.Conductor.Next(context.Background(), 3*time.Minute, func(e ferrylab.Event) bool {
		return e.Str("event") == "precheck_ok" || e.Str("event") == "precheck_failed"
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func dirty(t *testing.T, g *lab.Guest, ws, rate int) {
	t.Helper()
	from, _ := where(t, g)
	if err := theLab.SetDirty(context.Background(), from, g, ws, rate); err != nil {
		t.Fatal(err)
	}
}

// continuous checks the guest's heartbeat went on on to.
func continuous(t *testing.T, g *lab.Guest, from, to *lab.Host, dstOff int64) {
	t.Helper()
	src, _ := g.Heartbeats(from)
	dst, err := theLab.BeatsAfter(context.Background(), to, g, dstOff, 20, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.Continuity(src, dst); err != nil {
		t.Errorf("heartbeat: %v", err)
	}
}

// seenWithin waits until an event matching pred has been seen (read by an
// earlier Next or now), and returns every such event.
func seenWithin(timeout time.Duration, pred func(ferrylab.Event) bool) []ferrylab.Event {
	deadline := time.Now().Add(timeout)
	for {
		if got := events(pred); len(got) > 0 || time.Now().After(deadline) {
			return got
		}
		env.Conductor.Next(context.Background(), time.Second, pred)
	}
}

func events(pred func(ferrylab.Event) bool) []ferrylab.Event {
	var out []ferrylab.Event
	for _, e := range env.Conductor.Seen() {
		if pred(e) {
			out = append(out, e)
		}
	}
	return out
}

// claim does the conductor's Placement part before a live_migration cast.
func claim(t *testing.T, g *lab.Guest, from, to *lab.Host, id int) {
	t.Helper()
	if err := env.Placement.Claim(g.UUID, migUUID(id), from.Hostname, to.Hostname); err != nil {
		t.Fatal(err)
	}
}

// settled checks what ferry left in Placement: the migration holds nothing
// and the instance holds its flavor on the host it runs on, and only there.
func settled(t *testing.T, g *lab.Guest, id int, on *lab.Host) {
	t.Helper()
	mig, err := env.Placement.Allocations(migUUID(id))
	if err != nil {
		t.Fatal(err)
	}
	inst, err := env.Placement.Allocations(g.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if len(mig) != 0 {
		t.Errorf("placement: migration %d still holds %v", id, mig)
	}
	if diff := cmp.Diff(map[string]map[string]int{on.Hostname: ferrylab.Flavor}, inst); diff != "" {
		t.Errorf("placement: instance allocations (-want +got):\n%s", diff)
	}
}

// forInstance tells whether a conductor event concerns the instance: an
// Instance's own action, or a class action naming it.
func forInstance(e ferrylab.Event, uuid string) bool {
	if e.Str("instance") == uuid {
		return true
	}
	if kw, _ := e["kwargs"].(map[string]any); kw["instance_uuid"] == uuid {
		return true
	}
	args, _ := e["args"].([]any)
	return slices.Contains(args, any(uuid))
}

func TestHappyPath(t *testing.T) {
	for _, id := range []int{101, 102} {
		from, to := where(t, vm)
		dirty(t, vm, 64, 100)
		dstOff := vm.LogOffset(to)
		hostSave := func(e ferrylab.Event) bool {
			f, _ := e["fields"].(map[string]any)
			return e.Str("object") == "Instance" && e.Str("method") == "save" && f["host"] == to.Hostname && forInstance(e, vm.UUID)
		}
		savesBefore := len(events(hostSave)) // earlier tests' migrations to the same host
		decorated := []string{"compute_check_can_live_migrate_destination", "compute_check_can_live_migrate_source",
			"compute_live_migration", "compute_pre_live_migration", "compute_post_live_migration_at_destination",
			"ferry_live_migration"}
		eventIs := func(name string) func(ferrylab.Event) bool {
			return func(e ferrylab.Event) bool {
				args, _ := e["args"].([]any)
				return e.Str("object") == "InstanceActionEvent" && len(args) == 2 && args[0] == vm.UUID && args[1] == name
			}
		}
		finishedOf := func(name string) func(ferrylab.Event) bool {
			return func(e ferrylab.Event) bool { return eventIs(name)(e) && e.Str("method") == "event_finish_with_failure" }
		}
		finishedBefore := map[string]int{}
		for _, name := range decorated {
			finishedBefore[name] = len(events(finishedOf(name)))
		}
		claim(t, vm, from, to, id)
		send(t, migrate(vm, from, to, id))
		if e := precheck(t); e.Str("event") != "precheck_ok" {
			t.Fatalf("pre-check refused: %v", e)
		}
		if s := status(t, id, 5*time.Minute, "completed", "failed", "cancelled", "error"); s != "completed" {
			t.Fatalf("migration %d ended %s", id, s)
		}
		settledEventually(t, vm, id, to) // Zed releases the allocations after the status
		if _, err := env.Conductor.Next(context.Background(), time.Minute, func(e ferrylab.Event) bool {
			return e.Str("object") == "InstanceActionEvent" && e.Str("method") == "event_finish_with_failure"
		}); err != nil {
			t.Errorf("no event_finish_with_failure: %v", err)
		}
		if diff := cmp.Diff([]string{"queued", "preparing", "running", "completed"}, env.Conductor.Statuses(id)); diff != "" {
			t.Errorf("status sequence (-want +got):\n%s", diff)
		}
		continuous(t, vm, from, to, dstOff)
		if _, err := os.Stat(from.Path(lab.InstancesPath + "/" + vm.UUID)); !os.IsNotExist(err) {
			t.Errorf("the source's instance directory is still there (%v)", err)
		}
		progress := events(func(e ferrylab.Event) bool {
			ch, _ := e["changes"].([]any)
			return e.Str("object") == "Migration" && e["id"] == float64(id) && slices.Contains(ch, "memory_processed")
		})
		if len(progress) == 0 {
			t.Error("no progress (memory_*/disk_*) saved on the Migration")
		}
		hostSaves := events(hostSave)[savesBefore:]
		if len(hostSaves) != 1 || hostSaves[0]["kwargs"].(map[string]any)["expected_task_state"] != "migrating" {
			t.Errorf("Instance.save with the new host: %v", hostSaves)
		} else if f := hostSaves[0]["fields"].(map[string]any); f["node"] != to.Hostname+".hv" {
			t.Errorf("Instance.node = %v, want the compute node's hypervisor host name %s.hv", f["node"], to.Hostname)
		}
		// One event per method nova-compute decorates, as nova-compute
		// records them, each started and finished without a failure.
		for _, name := range decorated {
			finished := finishedOf(name)
			for deadline := time.Now().Add(time.Minute); len(events(finished)) <= finishedBefore[name] && time.Now().Before(deadline); {
				env.Conductor.Next(context.Background(), time.Second, finished)
			}
			evs := events(eventIs(name))
			if n := len(evs); n < 2 || evs[n-2].Str("method") != "event_start" || evs[n-1].Str("method") != "event_finish_with_failure" {
				t.Errorf("%s: events %v", name, evs)
			} else if kw, _ := evs[n-1]["kwargs"].(map[string]any); kw["exc_val"] != nil {
				t.Errorf("%s finished with a failure: %v", name, kw)
			}
		}
		out, err := env.Ferryd[from.Name].CLI("journal", "show", migUUID(id))
		if err != nil || !strings.Contains(out, "completed") || !strings.Contains(out, "set-downtime") {
			t.Errorf("ferry journal show: %v\n%s", err, out)
		}
		t.Logf("ferry journal show %s:\n%s", migUUID(id), out)
	}
	dirty(t, vm, 0, 0)
}

// A queued migration is cancelled without libvirt; a force-complete ends a
// dirtying guest's migration.
func TestAbortQueuedAndForceComplete(t *testing.T) {
	from, to := where(t, vm)
	dirty(t, vm, 256, 200)
	second, err := theLab.StartGuest(context.Background(), from, lab.GuestSpec{Name: "queued-vm", DefineOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	dstOff := vm.LogOffset(to)
	send(t, migrate(vm, from, to, 201))
	precheck(t)
	status(t, 201, 3*time.Minute, "running")
	claim(t, second, from, to, 202)
	send(t, migrate(second, from, to, 202))
	precheck(t)
	status(t, 202, time.Minute, "queued")
	send(t, op("abort", second, from, to, 202))
	if s := status(t, 202, time.Minute, "cancelled", "failed", "error", "completed"); s != "cancelled" {
		t.Fatalf("queued migration ended %s", s)
	}
	settled(t, second, 202, from)
	if got := env.Conductor.Statuses(202); !slices.Equal(got, []string{"queued", "cancelled"}) {
		t.Errorf("statuses of the aborted queued migration: %v", got)
	}
	send(t, op("force_complete", vm, from, to, 201))
	if s := status(t, 201, 5*time.Minute, "completed", "failed", "cancelled", "error"); s != "completed" {
		t.Fatalf("force-completed migration ended %s", s)
	}
	continuous(t, vm, from, to, dstOff)
	dirty(t, vm, 0, 0)
}

func TestAbortRunning(t *testing.T) {
	from, to := where(t, vm)
	dirty(t, vm, 256, 200)
	claim(t, vm, from, to, 301)
	send(t, migrate(vm, from, to, 301))
	precheck(t)
	status(t, 301, 3*time.Minute, "running")
	time.Sleep(4 * time.Second)
	// 70 calls whose callers went away first (issue 12, item 7): neither a
	// normal call nor the abort waits behind their reply retries (60 s each).
	send(t, map[string]any{"op": "flood", "host": from.Hostname, "n": 70})
	e, err := env.Conductor.Next(context.Background(), 2*time.Minute, func(e ferrylab.Event) bool { return e.Str("event") == "flood_answered" })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE call_after_70_vanished_s=%.3f (%s)", e["seconds"], e["answer"])
	if secs, _ := e["seconds"].(float64); secs > 5 {
		t.Errorf("a call after 70 vanished-caller calls was answered after %.1fs, want within 5s", secs)
	}
	fd := env.Ferryd[from.Name]
	logOff := ferrylab.FileSize(fd.Log)
	sent := time.Now()
	send(t, op("abort", vm, from, to, 301))
	for !strings.Contains(ferrylab.Tail(fd.Log, logOff), `"msg":"requested by the operator"`) {
		if time.Since(sent) > time.Minute {
			t.Fatal("the abort never reached the engine")
		}
		time.Sleep(20 * time.Millisecond)
	}
	d := time.Since(sent)
	t.Logf("FIGURE abort_reached_engine_s=%.3f", d.Seconds())
	if d > 5*time.Second {
		t.Errorf("the abort reached the engine after %s, want within 5s", d)
	}
	if s := status(t, 301, 3*time.Minute, "cancelled", "failed", "error", "completed"); s != "cancelled" {
		t.Fatalf("ended %s", s)
	}
	settled(t, vm, 301, from)
	off := vm.LogOffset(from)
	if _, err := theLab.BeatsAfter(context.Background(), from, vm, off, 10, time.Minute); err != nil {
		t.Errorf("guest not alive on the source: %v", err)
	}
	c, _ := to.Dial(context.Background())
	if _, err := c.DomainState(context.Background(), vm.UUID); err == nil {
		t.Error("a domain was left on the destination")
	}
	c.Close()
	if _, err := os.Stat(to.Path(lab.InstancesPath + "/" + vm.UUID)); !os.IsNotExist(err) {
		t.Errorf("the destination's instance directory is still there (%v)", err)
	}
	dirty(t, vm, 0, 0)
}

// SIGKILL of the source ferryd while running; on restart it re-attaches,
// the migration completes and the conductor sees "completed" once.
func TestSIGKILLRestart(t *testing.T) {
	from, to := where(t, vm)
	dirty(t, vm, 64, 100)
	dstOff := vm.LogOffset(to)
	send(t, migrate(vm, from, to, 401))
	precheck(t)
	status(t, 401, 3*time.Minute, "running")
	time.Sleep(2 * time.Second)
	fd := env.Ferryd[from.Name]
	if err := fd.Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Log("source ferryd killed")
	time.Sleep(3 * time.Second)
	if err := fd.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := status(t, 401, 5*time.Minute, "completed", "failed", "cancelled", "error"); s != "completed" {
		t.Fatalf("ended %s", s)
	}
	time.Sleep(3 * time.Second)
	n := 0
	for _, s := range env.Conductor.Statuses(401) {
		if s == "completed" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the conductor saw completed %d times: %v", n, env.Conductor.Statuses(401))
	}
	send(t, op("show", vm, from, to, 401))
	e, err := env.Conductor.Next(context.Background(), time.Minute, func(e ferrylab.Event) bool { return e.Str("event") == "state" })
	if err != nil || e.Str("host") != to.Hostname {
		t.Errorf("Instance after the restart: %v %v", e, err)
	}
	continuous(t, vm, from, to, dstOff)
	dirty(t, vm, 0, 0)
}

// The same live_migration re-sent (same migration uuid) starts nothing.
func TestDuplicateCast(t *testing.T) {
	from, to := where(t, vm)
	send(t, migrate(vm, from, to, 501))
	precheck(t)
	send(t, op("resend", vm, from, to, 501))
	if s := status(t, 501, 5*time.Minute, "completed", "failed", "cancelled", "error"); s != "completed" {
		t.Fatalf("ended %s", s)
	}
	time.Sleep(3 * time.Second)
	if got := env.Conductor.Statuses(501); !slices.Equal(got, []string{"queued", "preparing", "running", "completed"}) {
		t.Errorf("statuses %v: a second migration ran", got)
	}
	j, err := env.Ferryd[from.Name].Journal(migUUID(501))
	if err != nil {
		t.Fatal(err)
	}
	steps, _ := j["steps"].([]any)
	n := 0
	for _, s := range steps {
		if s == "job-started" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the journal records %d job starts: %v", n, steps)
	}
	started := 0
	for _, op := range events(func(e ferrylab.Event) bool { return e.Str("event") == "cast_sent" }) {
		if op.Str("method") == "live_migration" {
			started++
		}
	}
	if started < 2 {
		t.Errorf("the conductor sent live_migration %d times, want the cast and its re-send", started)
	}
}
