//go:build integration

package ferryd

import (
	"context"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/ferrylab"
	"opendev.org/x/ferry/integration/lab"
)

// journalPhase waits until the source ferryd's journal has the migration in
// phase want, with reports still owed.
func journalPhase(t *testing.T, from *lab.Host, id int, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		j, err := env.Ferryd[from.Name].Journal(migUUID(id))
		if err == nil && j["phase"] == want {
			owed := 0
			reps, _ := j["reports"].([]any)
			for _, r := range reps {
				if d, _ := r.(map[string]any)["delivered"].(bool); !d {
					owed++
				}
			}
			t.Logf("journal: %s with %d reports owed", want, owed)
			if owed == 0 {
				t.Fatalf("the journal owes nothing: the reports went out while the broker was cut")
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("migration %d not %s in the source's journal within %s", id, want, timeout)
}

// The source ferryd loses the broker while the job runs; the job ends in
// libvirt meanwhile. Everything Nova is owed reaches it, in order, once the
// broker is back — also when ferryd is killed before that and restarted.
func TestReportsOutliveBrokerOutage(t *testing.T) {
	for _, tc := range []struct {
		id   int
		kill bool
	}{{1101, false}, {1102, true}} {
		from, to := where(t, vm)
		fd := env.Ferryd[from.Name]
		dirty(t, vm, 64, 20)
		dstOff := vm.LogOffset(to)
		claim(t, vm, from, to, tc.id)
		send(t, migrate(vm, from, to, tc.id))
		if e := precheck(t); e.Str("event") != "precheck_ok" {
			t.Fatalf("pre-check: %v", e)
		}
		status(t, tc.id, 3*time.Minute, "running")
		fd.Broker.Cut()
		t.Cleanup(fd.Broker.Restore) // a failure here must not leave the next tests without a broker
		t.Logf("migration %d: the source ferryd's broker connection cut", tc.id)
		journalPhase(t, from, tc.id, "completed", 4*time.Minute)
		if got := env.Conductor.Statuses(tc.id); slices.Contains(got, "completed") {
			t.Fatalf("statuses %v while the broker was cut", got)
		}
		if tc.kill {
			if err := fd.Kill(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			t.Log("source ferryd killed with the reports owed")
			t.Cleanup(func() { fd.Start(context.Background()) })
		}
		fd.Broker.Restore()
		if tc.kill {
			if err := fd.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if s := status(t, tc.id, 3*time.Minute, "completed", "failed", "cancelled", "error"); s != "completed" {
			t.Fatalf("migration %d ended %s", tc.id, s)
		}
		if diff := slices.Compare([]string{"queued", "preparing", "running", "completed"}, env.Conductor.Statuses(tc.id)); diff != 0 {
			t.Errorf("statuses %v", env.Conductor.Statuses(tc.id))
		}
		settledEventually(t, vm, tc.id, to)
		send(t, op("show", vm, from, to, tc.id))
		e, err := env.Conductor.Next(context.Background(), time.Minute, func(e ferrylab.Event) bool { return e.Str("event") == "state" })
		if err != nil || e["host"] != to.Hostname || e["task_state"] != nil {
			t.Errorf("Instance after the outage: %v %v", e, err)
		}
		continuous(t, vm, from, to, dstOff)
	}
	dirty(t, vm, 0, 0)
}

// ferryd (re)started while the broker is unreachable: its engine re-attaches
// to the journalled migration and monitors it to its end without the broker,
// serving no RPC meanwhile; what Nova is owed goes out once the broker answers.
func TestEngineResumesWhileBrokerDown(t *testing.T) {
	const id = 1103
	from, to := where(t, vm)
	fd := env.Ferryd[from.Name]
	dirty(t, vm, 64, 20)
	dstOff := vm.LogOffset(to)
	claim(t, vm, from, to, id)
	send(t, migrate(vm, from, to, id))
	if e := precheck(t); e.Str("event") != "precheck_ok" {
		t.Fatalf("pre-check: %v", e)
	}
	status(t, id, 3*time.Minute, "running")
	fd.Broker.Cut()
	t.Cleanup(fd.Broker.Restore)
	if err := fd.Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Start(context.Background()) })
	j, err := fd.Journal(migUUID(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source ferryd killed with the broker cut; its journal says %v", j["phase"])
	if j["phase"] != "running" {
		t.Fatalf("journal phase %v at the kill, want running (the job must still be in libvirt)", j["phase"])
	}
	off := ferrylab.FileSize(fd.Log)
	if err := fd.StartUnserved(context.Background()); err != nil {
		t.Fatalf("ferryd with the broker down: %v", err)
	}
	journalPhase(t, from, id, "completed", 4*time.Minute)
	if strings.Contains(ferrylab.Tail(fd.Log, off), `"msg":"serving: every queue consumed"`) {
		t.Fatal("ferryd says it serves while its broker is cut")
	}
	if got := env.Conductor.Statuses(id); slices.Contains(got, "completed") {
		t.Fatalf("statuses %v while the broker was cut", got)
	}
	fd.Broker.Restore()
	if s := status(t, id, 3*time.Minute, "completed", "failed", "cancelled", "error"); s != "completed" {
		t.Fatalf("migration %d ended %s", id, s)
	}
	if diff := slices.Compare([]string{"queued", "preparing", "running", "completed"}, env.Conductor.Statuses(id)); diff != 0 {
		t.Errorf("statuses %v", env.Conductor.Statuses(id))
	}
	settledEventually(t, vm, id, to)
	continuous(t, vm, from, to, dstOff)
	dirty(t, vm, 0, 0)
}

// settledEventually waits for the Placement report, the last but one.
func settledEventually(t *testing.T, g *lab.Guest, id int, on *lab.Host) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		mig, err := env.Placement.Allocations(migUUID(id))
		if err == nil && len(mig) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	settled(t, g, id, on)
}

// SIGTERM while the source host's libvirtd hangs mid-migration: ferryd
// still stops within its bound, and once libvirtd answers again the
// restarted ferryd re-attaches and completes the migration.
func TestSIGTERMWhileLibvirtdHangs(t *testing.T) {
	from, to := where(t, vm)
	fd := env.Ferryd[from.Name]
	dirty(t, vm, 64, 20)
	dstOff := vm.LogOffset(to)
	claim(t, vm, from, to, 1201)
	send(t, migrate(vm, from, to, 1201))
	if e := precheck(t); e.Str("event") != "precheck_ok" {
		t.Fatalf("pre-check: %v", e)
	}
	status(t, 1201, 3*time.Minute, "running")
	time.Sleep(2 * time.Second)
	pid := from.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := func() { syscall.Kill(pid, syscall.SIGCONT) }
	defer cont()
	t0 := time.Now()
	if err := fd.Kill(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM with libvirtd hung: %v", err)
	}
	took := time.Since(t0)
	t.Logf("ferryd stopped in %v with libvirtd hung", took.Round(100*time.Millisecond))
	if took > 45*time.Second {
		t.Errorf("SIGTERM took %v, want within the 30s shutdown bound and the libvirt call bounds", took)
	}
	cont()
	if err := fd.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := status(t, 1201, 4*time.Minute, "completed", "failed", "cancelled", "error"); s != "completed" {
		t.Fatalf("ended %s", s)
	}
	settledEventually(t, vm, 1201, to)
	continuous(t, vm, from, to, dstOff)
	dirty(t, vm, 0, 0)
}
