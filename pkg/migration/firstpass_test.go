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

// TestBandwidthIsPreCopy: once the job is in post-copy, its (uncapped)
// stream no longer moves B, which stays the bandwidth the decisions used.
func TestBandwidthIsPreCopy(t *testing.T) {
	const MiB = 1 << 20
	var st State
	p := Policy{}.WithDefaults()
	var proc uint64
	feed := func(i int, bps uint64) {
		proc += bps
		Decide(p, &st, Sample{At: time.Duration(i) * time.Second, Stats: virt.JobStats{
			Type: virt.JobUnbounded, Elapsed: time.Duration(i) * time.Second, MemIteration: 1,
			MemProcessed: proc, DataProcessed: proc, MemRemaining: 400 * MiB, MemTotal: 512 * MiB, MemBps: bps}})
	}
	for i := 0; i < 6; i++ {
		feed(i, 50*MiB)
	}
	st.PostCopy = true
	for i := 6; i < 12; i++ {
		feed(i, 500*MiB)
	}
	if b := st.Bps / MiB; b < 49 || b > 51 {
		t.Errorf("B = %.1f MiB/s after post-copy at 500 MiB/s, want the pre-copy 50 MiB/s", b)
	}
}
