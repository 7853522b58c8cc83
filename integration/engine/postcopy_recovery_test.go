//go:build integration

package engine

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

// After the switch to post-copy the link drops for 5 s. ferry sees the
// stream stall, pauses it on purpose (QEMU only recovers a stream declared
// broken) so both sides enter PAUSED_POSTCOPY_FAILED, and asks libvirt to
// resume it once the link is back. It migrates a guest of its own: when the
// resume does not work that guest's memory stays split between the hosts,
// and no other test may depend on it.
// knownResumeFailures are the two ways post-copy resume fails on libvirt 9.0
// with QEMU 7.2 (see below).
var knownResumeFailures = []string{"context deadline exceeded", "actively monitored by another thread",
	"is not processing incoming migration"}

func TestPostcopyRecovery(t *testing.T) {
	ctx := t.Context()
	g, err := theLab.StartGuest(ctx, theLab.Host("a"), lab.GuestSpec{Name: "postcopy", MemMiB: 384, WSMiB: 256, RateMiBps: 200})
	if err != nil {
		t.Fatal(err)
	}
	r := startGuest(t, g, migration.Policy{PostCopy: true}, 30, "")
	waitPhase(t, r, migration.PhasePostCopy)
	waitSourceState(t, r, virt.StatePaused, virt.ReasonPausedPostcopy) // the guest now runs on the destination
	linkBack := cut(t, r, 0, 5*time.Second)
	waitSourceState(t, r, virt.StatePaused, virt.ReasonPausedPostcopyFailed)
	<-linkBack
	s := r.wait(t, 5*time.Minute)
	a := actions(s)
	if !slices.Contains(a, "post-copy-pause") || !slices.Contains(a, "post-copy-resume") {
		t.Fatalf("actions %v, want the stalled stream paused and a resume attempted", a)
	}
	if s.Phase == migration.PhaseCompleted {
		r.moved(t)
		return
	}
	// libvirt 9.0 with QEMU 7.2 under TCG: both QEMUs report "Detected IO
	// failure for postcopy. Migration paused.", and then either the
	// POSTCOPY_RESUME Perform3Params call never returns (later attempts are
	// refused with "migration of domain ... is being actively monitored by
	// another thread"), or the destination's incoming side has already died
	// ("postcopy_ram_listen_thread: loadvm failed: -5") and every resume is
	// refused with "domain ... is not processing incoming migration", or the
	// first Perform3Params call itself never returns while its job shows
	// stale statistics: the engine stops waiting on it after PostcopyHang,
	// and the resumes are refused as "actively monitored".
	evidence := ""
	for _, h := range theLab.Hosts {
		out, _ := exec.Command("sh", "-c", "grep -hE 'postcopy|post-copy|Migration paused|loadvm' "+h.LogDir()+"/libvirtd.log "+h.LogDir()+"/qemu/postcopy.log | tail -4").CombinedOutput()
		evidence += "host " + h.Name + ":\n" + string(out)
	}
	stuck := false
	for _, x := range s.Record.Actions {
		if x.Action != "post-copy-resume" {
			continue
		}
		for _, sig := range knownResumeFailures {
			if strings.Contains(x.Reason, sig) {
				stuck = true
			}
		}
	}
	if s.Phase == migration.PhaseError && strings.Contains(s.Reason, "destination's guest is gone") {
		stuck = true
	}
	if s.Phase != migration.PhaseError || !stuck {
		t.Fatalf("phase %s (%s): neither completed nor the known hang of post-copy resume\n%s", s.Phase, s.Reason, evidence)
	}
	t.Skipf("post-copy resume does not complete on this libvirt/QEMU (the engine ended in %q: %s); evidence:\n%s", s.Phase, s.Reason, evidence)
}
