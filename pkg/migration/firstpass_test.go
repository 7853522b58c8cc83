package migration

import (
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/virt"
)

// TestFirstPass: the first pass is what the job sent before the second
// bitmap sync, never more than the job had sent by the sample that saw it.
func TestFirstPass(t *testing.T) {
	const MiB = 1 << 20
	type smp struct{ it, proc, rem uint64 }
	for _, tc := range []struct {
		name    string
		samples []smp
		want    uint64
	}{
		{"pass ends between samples, all pages sent", []smp{{1, 100, 200}, {1, 250, 50}, {2, 310, 40}}, 300},
		{"remaining counted zero pages the pass sent for free", []smp{{1, 50, 300}, {2, 80, 20}}, 80},
		{"still in the first pass", []smp{{1, 50, 300}, {1, 150, 200}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st State
			p := Policy{}.WithDefaults()
			// The first sample only sets the initial downtime.
			for i, s := range append([]smp{{0, 0, 0}}, tc.samples...) {
				Decide(p, &st, Sample{At: time.Duration(i+1) * time.Second, Stats: virt.JobStats{
					Type: virt.JobUnbounded, Elapsed: time.Duration(i+1) * time.Second, MemIteration: s.it,
					MemProcessed: s.proc * MiB, DataProcessed: s.proc * MiB, MemRemaining: s.rem * MiB, MemTotal: 512 * MiB, MemBps: 50 * MiB,
				}})
			}
			if got := st.FirstPass / MiB; got != tc.want {
				t.Errorf("first pass = %d MiB, want %d", got, tc.want)
			}
		})
	}
}
