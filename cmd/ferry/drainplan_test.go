package main

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/status"
)

func names(cs []drainCandidate) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func TestDrainOrder(t *testing.T) {
	for _, tt := range []struct {
		name string
		bw   float64
		cs   []drainCandidate
		want []string
	}{
		{"B unknown: smallest RAM first, unknown RAM last, ties by name", 0,
			[]drainCandidate{{Name: "big", RAMMiB: 8192}, {Name: "nosize"}, {Name: "b-small", RAMMiB: 512}, {Name: "a-small", RAMMiB: 512, DirtyMiB: 900}},
			[]string{"a-small", "b-small", "big", "nosize"}},
		{"B known: the expected time M/(B−d) decides, not the RAM", 100,
			// hot: 1024/(100−90) = 102 s; cold: 4096/100 = 41 s; tiny 5 s.
			[]drainCandidate{{Name: "hot", RAMMiB: 1024, DirtyMiB: 90}, {Name: "cold", RAMMiB: 4096}, {Name: "tiny", RAMMiB: 512}},
			[]string{"tiny", "cold", "hot"}},
		{"B known: the ones that would not converge alone go last, smallest first", 100,
			[]drainCandidate{{Name: "never-big", RAMMiB: 2048, DirtyMiB: 150}, {Name: "never-small", RAMMiB: 512, DirtyMiB: 100}, {Name: "ok", RAMMiB: 16384}},
			[]string{"ok", "never-small", "never-big"}},
	} {
		if diff := cmp.Diff(tt.want, names(drainOrder(tt.cs, tt.bw))); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestAdmit(t *testing.T) {
	hot := drainCandidate{Name: "hot", RAMMiB: 1024, DirtyMiB: 40}
	cool := drainCandidate{Name: "cool", RAMMiB: 1024, DirtyMiB: 10}
	unknown := drainCandidate{Name: "unknown", RAMMiB: 1024}
	for _, tt := range []struct {
		name    string
		l       drainLimits
		running []drainCandidate
		next    drainCandidate
		ok      bool
		why     string
	}{
		{"the first always starts, even one that would not converge", drainLimits{BandwidthMiB: 10, MaxParallel: 2}, nil, hot, true, ""},
		{"B unknown: up to --max-parallel", drainLimits{MaxParallel: 3}, []drainCandidate{hot, hot}, hot, true, ""},
		{"B unknown: never beyond it", drainLimits{MaxParallel: 2}, []drainCandidate{cool, cool}, cool, false, "2 running (--max-parallel 2)"},
		{"B known caps too", drainLimits{BandwidthMiB: 1000, MaxParallel: 1}, []drainCandidate{cool}, cool, false, "--max-parallel 1"},
		{"three shares of 100 leave 33 > 10 each", drainLimits{BandwidthMiB: 100, MaxParallel: 4}, []drainCandidate{cool, cool}, cool, true, ""},
		{"a running one would no longer converge: 100/2 = 50 > 40, 100/3 = 33 ≤ 40", drainLimits{BandwidthMiB: 100, MaxParallel: 4},
			[]drainCandidate{hot, cool}, cool, false, "hot dirties 40 MiB/s; 3 at once would leave each 33 MiB/s of 100"},
		{"nor may the next one start where it would not converge", drainLimits{BandwidthMiB: 100, MaxParallel: 4},
			[]drainCandidate{cool, cool}, hot, false, "hot dirties 40"},
		{"a share equal to the dirty rate does not converge", drainLimits{BandwidthMiB: 80, MaxParallel: 4}, []drainCandidate{cool}, hot, false, "hot"},
		{"unknown dirty rates are not held against anyone", drainLimits{BandwidthMiB: 10, MaxParallel: 3}, []drainCandidate{unknown}, unknown, true, ""},
		{"a ferryd that runs one job at a time never shares the link: next waits in its queue", drainLimits{BandwidthMiB: 80, MaxParallel: 2, SourceSlots: 1},
			[]drainCandidate{hot}, hot, true, ""},
		{"with two slots, three requests share the link two ways: 100/2 = 50 > 40", drainLimits{BandwidthMiB: 100, MaxParallel: 3, SourceSlots: 2},
			[]drainCandidate{hot, cool}, cool, true, ""},
	} {
		ok, why := admit(tt.l, tt.running, tt.next)
		if ok != tt.ok || !strings.Contains(why, tt.why) || (ok && why != "") {
			t.Errorf("%s: admit = %v %q, want %v %q", tt.name, ok, why, tt.ok, tt.why)
		}
	}
}

func TestExpectedSeconds(t *testing.T) {
	for _, tt := range []struct {
		c    drainCandidate
		bw   float64
		want float64
	}{
		{drainCandidate{RAMMiB: 1000, DirtyMiB: 50}, 100, 20},
		{drainCandidate{RAMMiB: 1000}, 100, 10},
		{drainCandidate{RAMMiB: 1000, DirtyMiB: 50}, 0, 1000},
		{drainCandidate{RAMMiB: 1000, DirtyMiB: 100}, 100, math.Inf(1)},
		{drainCandidate{}, 100, math.Inf(1)},
	} {
		if got := expectedSeconds(tt.c, tt.bw); got != tt.want {
			t.Errorf("expectedSeconds(%+v, %v) = %v, want %v", tt.c, tt.bw, got, tt.want)
		}
	}
}

// The record of a migration in the pre-copy model: 1 GiB at 100 MiB/s
// with the guest dirtying 25 MiB/s moves 1024·100/75 MiB in all.
func TestDirtyRateOf(t *testing.T) {
	movedMiB := 1024 * 100 / 75.0
	moved := uint64(movedMiB * (1 << 20))
	d, ok := dirtyRateOf(status.Record{MemoryBytes: moved, FirstPassBytes: 1 << 30, BandwidthBps: 100 << 20})
	if !ok || math.Abs(d-25) > 0.01 {
		t.Errorf("dirty rate %.3f %v, want 25", d, ok)
	}
	for _, r := range []status.Record{{}, {MemoryBytes: 1 << 30, FirstPassBytes: 1 << 30}, {MemoryBytes: 1, FirstPassBytes: 2, BandwidthBps: 1}} {
		if _, ok := dirtyRateOf(r); ok {
			t.Errorf("a rate from %+v", r)
		}
	}
}
