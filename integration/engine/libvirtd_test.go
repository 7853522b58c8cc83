//go:build integration

package engine

import (
	"syscall"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/migration"
)

// stopLibvirtd stops the host's libvirtd as SIGSTOP does (a wedged daemon:
// its sockets stay open, nothing answers) and returns the function that
// lets it go on.
func stopLibvirtd(t *testing.T, r *run) (cont func()) {
	t.Helper()
	pid := r.from.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Logf("libvirtd on %s (pid %d) stopped", r.from.Name, pid)
	done := false
	cont = func() {
		if !done {
			done = true
			syscall.Kill(pid, syscall.SIGCONT)
			t.Logf("libvirtd on %s continued", r.from.Name)
		}
	}
	t.Cleanup(cont)
	return cont
}

// samplesAfter counts the job samples the engine reported after t0.
func (h *labHooks) samplesAfter(t0 time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, s := range h.samples {
		if s.After(t0) {
			n++
		}
	}
	return n
}

// The source libvirtd hangs for 12 s in the middle of a job (the job itself
// goes on in QEMU). Once it answers again the engine samples the job through
// a new connection, an abort works, and closing the engine while the daemon
// hangs again returns within its bounds.
func TestLibvirtdStoppedShort(t *testing.T) {
	dirty(t, 0, 0)
	r := start(t, migration.Policy{}, 5, "")
	waitMoving(t, r, 8<<20)
	cont := stopLibvirtd(t, r)
	time.Sleep(12 * time.Second)
	cont()
	back := time.Now()
	deadline := back.Add(90 * time.Second)
	for r.hooks.samplesAfter(back) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the engine did not sample the job again within 90s of libvirtd answering")
		}
		if s, _ := r.m.Status(r.id); s.Phase.Terminal() {
			t.Fatalf("the migration ended %s (%s) before it could be aborted", s.Phase, s.Reason)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("sampling again %v after libvirtd answered", time.Since(back).Round(100*time.Millisecond))
	if err := r.m.Abort(t.Context(), r.id); err != nil {
		t.Fatalf("abort after the hang: %v", err)
	}
	s := r.wait(t, 2*time.Minute)
	if s.Phase != migration.PhaseCancelled {
		t.Fatalf("phase %s (%s), want cancelled", s.Phase, s.Reason)
	}
	r.stayed(t)

	// Closing the engine (ferryd's SIGTERM) while libvirtd hangs mid-job:
	// it detaches within its call bounds, and a new engine on the same state
	// directory re-attaches once libvirtd answers and finishes the job.
	dir := t.TempDir()
	r2 := start(t, migration.Policy{}, 20, dir)
	waitMoving(t, r2, 8<<20)
	cont2 := stopLibvirtd(t, r2)
	t0 := time.Now()
	r2.stop()
	took := time.Since(t0)
	cont2()
	t.Logf("engine closed in %v with libvirtd hung", took.Round(100*time.Millisecond))
	if took > 45*time.Second {
		t.Errorf("closing the engine took %v with libvirtd hung, want within its call bounds (45s)", took)
	}
	r2.m = newManager(t, dir, r2.from, r2.hooks)
	r2.stop = runManager(r2.m)
	if s := r2.wait(t, 3*time.Minute); s.Phase != migration.PhaseCompleted {
		t.Fatalf("re-attached migration ended %s (%s)", s.Phase, s.Reason)
	}
	r2.moved(t)
}

// A hang longer than libvirt's keepalive (about 30 s): the destination's
// libvirtd drops the peer-to-peer connection and the job fails; the guest
// still runs on the source and the engine says so.
func TestLibvirtdStoppedPastKeepalive(t *testing.T) {
	dirty(t, 0, 0)
	r := start(t, migration.Policy{}, 5, "")
	waitMoving(t, r, 8<<20)
	cont := stopLibvirtd(t, r)
	time.Sleep(40 * time.Second)
	cont()
	s := r.wait(t, 3*time.Minute)
	if s.Phase != migration.PhaseFailed {
		t.Fatalf("phase %s (%s), want failed with the guest on the source", s.Phase, s.Reason)
	}
	r.stayed(t)
}
