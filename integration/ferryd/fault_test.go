//go:build integration

package ferryd

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/ferrylab"
	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/pkg/virt"
)

// The fault suite (issue 14, section 5), in native mode on the lab: each
// fault hits the migration of a dirtying guest while its job runs.
// Afterwards the guest runs on exactly one host, its heartbeat never broke,
// the conductor's Instance says that host with no task left, the Migration
// says how it ended (completed when the guest moved, failed when it stayed),
// and Placement holds the instance on that host only.

// fault is one fault injected while migration id's job runs, and what
// undoes it (nil: nothing to undo).
type fault func(t *testing.T, from, to *lab.Host) (undo func())

func runFault(t *testing.T, id int, name string, inject fault) {
	from, to := where(t, vm)
	logs := map[string]int64{}
	for h, fd := range env.Ferryd {
		logs[h] = ferrylab.FileSize(fd.Log)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for h, fd := range env.Ferryd {
				t.Logf("ferryd on %s during the test:\n%s", h, ferrylab.Tail(fd.Log, logs[h]))
			}
		}
	})
	dirty(t, vm, 128, 30) // converges, but not within the seconds before the fault
	srcOff, dstOff := vm.LogOffset(from), vm.LogOffset(to)
	claim(t, vm, from, to, id)
	send(t, migrate(vm, from, to, id))
	if e := precheck(t); e.Str("event") != "precheck_ok" {
		t.Fatalf("pre-check: %v", e)
	}
	status(t, id, 3*time.Minute, "running")
	time.Sleep(2 * time.Second)
	j, _ := env.Ferryd[from.Name].Journal(migUUID(id))
	left := jobLeft(t, from)
	t0 := time.Now()
	undo := inject(t, from, to)
	if undo != nil {
		undo()
	}
	s := ended(t, id)
	took := time.Since(t0)
	on := from
	if s == "completed" {
		on = to
	}
	t.Logf("FIGURE fault=%s phase=%v left_mib=%d outcome=%s on=%s recover_s=%.1f", name, j["phase"], left>>20, s, on.Name, took.Seconds())
	if s != "completed" && s != "failed" {
		t.Fatalf("migration %d ended %s: the guest's place should be known after %s", id, s, name)
	}
	if now, _ := where(t, vm); now != on {
		t.Fatalf("migration %s, but the guest runs on %s", s, now.Name)
	}
	settledEventually(t, vm, id, on)
	send(t, op("show", vm, from, to, id))
	e, err := env.Conductor.Next(context.Background(), time.Minute, func(e ferrylab.Event) bool { return e.Str("event") == "state" })
	if err != nil || e["host"] != on.Hostname || e["task_state"] != nil {
		t.Errorf("Instance after the fault: %v %v, want host %s and no task", e, err, on.Hostname)
	}
	if on == to {
		continuous(t, vm, from, to, dstOff)
	} else {
		beats, err := theLab.BeatsAfter(context.Background(), from, vm, srcOff, 10, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(beats); i++ {
			if beats[i].N != beats[i-1].N+1 || beats[i].Boot != beats[0].Boot {
				t.Fatalf("heartbeat on the source broke: n=%d (%s) then n=%d (%s)", beats[i-1].N, beats[i-1].Boot, beats[i].N, beats[i].Boot)
			}
		}
	}
	dirty(t, vm, 0, 0)
}

// ended waits until migration id has a final status and returns it.
func ended(t *testing.T, id int) string {
	t.Helper()
	final := []string{"completed", "failed", "cancelled", "error"}
	if got := env.Conductor.Statuses(id); len(got) > 0 && slices.Contains(final, got[len(got)-1]) {
		return got[len(got)-1] // already seen (by the fault's own wait)
	}
	return status(t, id, 5*time.Minute, final...)
}

// jobLeft is what the guest's job on from has left to copy; the fault must
// hit a job that runs.
func jobLeft(t *testing.T, from *lab.Host) uint64 {
	t.Helper()
	c, err := from.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	js, err := c.JobStats(context.Background(), vm.UUID, false)
	if err != nil || js.Type == virt.JobNone {
		t.Fatalf("no job on %s before the fault (%v): the test would prove nothing", from.Name, err)
	}
	return js.MemRemaining + js.DiskRemaining
}

// The source's libvirtd restarted (systemctl restart libvirtd) while the
// job runs.
func TestFaultLibvirtdRestartSource(t *testing.T) {
	runFault(t, 1301, "libvirtd-restart-source", func(t *testing.T, from, _ *lab.Host) func() {
		if err := theLab.RestartLibvirtd(context.Background(), from); err != nil {
			t.Fatal(err)
		}
		return nil
	})
}

// The destination's libvirtd restarted while the job runs.
func TestFaultLibvirtdRestartDestination(t *testing.T) {
	runFault(t, 1302, "libvirtd-restart-destination", func(t *testing.T, _, to *lab.Host) func() {
		if err := theLab.RestartLibvirtd(context.Background(), to); err != nil {
			t.Fatal(err)
		}
		return nil
	})
}

// The destination's ferryd killed (SIGKILL) while the job runs, started
// again 10 s later: what the source asks of it meanwhile waits in its queue.
func TestFaultFerrydKilledDestination(t *testing.T) {
	runFault(t, 1303, "ferryd-kill-destination", func(t *testing.T, _, to *lab.Host) func() {
		fd := env.Ferryd[to.Name]
		if err := fd.Kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fd.Start(context.Background()) })
		return func() {
			time.Sleep(10 * time.Second)
			if err := fd.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// The destination host lost (a power cut: links down, its QEMU, libvirtd
// and ferryd killed) while the job runs. The source cannot finish without
// it: the migration fails and the guest stays on the source. Once the host
// is back, its ferryd takes the rollback that waited in its queue and
// removes what the migration had made there.
func TestFaultDestinationHostLost(t *testing.T) {
	var lost *lab.Host
	runFault(t, 1304, "destination-host-lost", func(t *testing.T, _, to *lab.Host) func() {
		lost = to
		fd := env.Ferryd[to.Name]
		t.Cleanup(func() { fd.Start(context.Background()) }) // after the host's restore
		restored := false
		t.Cleanup(func() {
			if !restored {
				_ = theLab.RestoreHost(context.Background(), to)
			}
		})
		if err := theLab.LoseHost(context.Background(), to); err != nil {
			t.Fatal(err)
		}
		if err := fd.Kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		return func() {
			// The host stays away until the source gave the migration up
			// (runFault then reads the status the conductor was sent).
			ended(t, 1304)
			restored = true
			if err := theLab.RestoreHost(context.Background(), to); err != nil {
				t.Fatal(err)
			}
			if err := fd.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	})
	dir := lost.Path(lab.InstancesPath + "/" + vm.UUID)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the lost host's instance directory is still there a minute after it came back (%v)", err)
		}
	}
}

// The source's ferryd killed while the job runs, and one of its journal's
// other entries torn meanwhile (as a full disk or a crash in the middle of
// an older write could leave it). The restarted ferryd sets the torn entry
// aside, says so, lists it for the operator, and finishes the migration.
func TestFaultCorruptJournalEntryAtStart(t *testing.T) {
	runFault(t, 1305, "corrupt-journal-entry-at-start", func(t *testing.T, from, _ *lab.Host) func() {
		fd := env.Ferryd[from.Name]
		if err := fd.Kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fd.Start(context.Background()) })
		torn := filepath.Join(fd.StateDir, "migrations", migUUID(1399)+".json")
		if err := os.WriteFile(torn, []byte(`{"request":{"id":"`+migUUID(1399)+`","instance_uuid":`), 0o600); err != nil {
			t.Fatal(err)
		}
		off := ferrylab.FileSize(fd.Log)
		if err := fd.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		if log := ferrylab.Tail(fd.Log, off); !strings.Contains(log, migUUID(1399)) {
			t.Errorf("ferryd's start does not name the torn entry:\n%s", log)
		}
		if _, err := os.Stat(torn); !os.IsNotExist(err) {
			t.Errorf("the torn entry is still where the engine reads (%v)", err)
		}
		out, err := fd.CLI("journal", "list")
		if !strings.Contains(out, migUUID(1399)) || !strings.Contains(out, "unreadable") {
			t.Errorf("ferry journal list (%v) does not list the torn entry:\n%s", err, out)
		}
		return nil
	})
}
