package migration

import (
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/virt"
)

// A pass whose remainder QEMU can send within the max downtime ends in the
// switch-over (or a smaller pass that is judged then): the policy does not
// judge on that sample, however flat the dirty sets looked. Seen on the
// stack (TestFerryPlan): a guest dirtying 17 MiB/s over 61 MiB/s, with
// 4.9 MiB left, aborted as "floor 30.7 MiB needs 502ms" while converging.
func TestNoVerdictOnTheLastStretch(t *testing.T) {
	const mib = 1 << 20
	p := Policy{}.WithDefaults()
	feed := func(left uint64) Action {
		st := &State{}
		var a Action
		var processed uint64
		at := time.Duration(0)
		step := func(it, remaining uint64) {
			at += 500 * time.Millisecond
			processed += 30 * mib
			a = Decide(p, st, Sample{At: at, Stats: virt.JobStats{Type: virt.JobUnbounded, DataProcessed: processed,
				MemProcessed: processed, MemRemaining: remaining, MemIteration: it, MemBps: 60 * mib}})
		}
		step(1, 256*mib)
		step(1, 200*mib)
		step(1, 100*mib)
		step(2, 40*mib) // pass 2: a 40 MiB dirty set
		step(2, 20*mib)
		step(3, 38*mib) // pass 3: as large again (flat)
		step(3, left)
		return a
	}
	if a := feed(30 * mib); a.Kind != ActAbort {
		t.Fatalf("flat passes with 30 MiB left: %+v, want the abort (the rule still judges)", a)
	}
	if a := feed(4 * mib); a.Kind != ActNone {
		t.Errorf("4 MiB left at 60 MiB/s with 100ms max downtime: %+v, want no verdict", a)
	}
}
