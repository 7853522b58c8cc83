package migration

import (
	"strings"
	"testing"
	"time"
)

func TestPredict(t *testing.T) {
	const (
		mib = 1 << 20
		gib = 1 << 30
	)
	budget := Policy{DowntimeBudget: 500 * time.Millisecond}
	tests := []struct {
		name             string
		p                Policy
		ram, disk, d, b  uint64
		verdict          string
		lever            ActionKind
		converges        bool
		totalLo, totalHi time.Duration
		downtimeMax      time.Duration
	}{
		{name: "idle guest converges in two passes", p: budget, ram: 1 * gib, d: 0, b: 100 * mib,
			verdict: "converges", lever: ActNone, converges: true, totalLo: 10 * time.Second, totalHi: 11 * time.Second, downtimeMax: 10 * time.Millisecond},
		{name: "a light writer converges at the initial max downtime", p: budget, ram: 1 * gib, d: 10 * mib, b: 100 * mib,
			verdict: "converges", lever: ActNone, converges: true, totalLo: 11 * time.Second, totalHi: 12 * time.Second, downtimeMax: 100 * time.Millisecond},
		{name: "the disk copy comes first", p: budget, ram: 1 * gib, disk: 2 * gib, d: 0, b: 100 * mib,
			verdict: "converges", lever: ActNone, converges: true, totalLo: 30 * time.Second, totalHi: 31 * time.Second, downtimeMax: 10 * time.Millisecond},
		// D/B = 0.9: the set shrinks by a tenth a pass, flat to the monitor,
		// which raises the max downtime at the third pass: 52 MiB at 100
		// MiB/s fits a 1s budget.
		{name: "D close to B with a small set: raise the downtime", p: Policy{DowntimeBudget: time.Second}, ram: 64 * mib, d: 90 * mib, b: 100 * mib,
			verdict: "converges-with-raised-downtime", lever: ActSetDowntime, converges: true, totalLo: time.Second, totalHi: 3 * time.Second, downtimeMax: time.Second},
		{name: "D close to B, no permits: abort", p: budget, ram: 4 * gib, d: 95 * mib, b: 100 * mib,
			verdict: "abort", lever: ActAbort, totalLo: 40 * time.Second, totalHi: 200 * time.Second},
		{name: "D > B with post-copy permitted: post-copy", p: Policy{DowntimeBudget: 500 * time.Millisecond, PostCopy: true},
			ram: 2 * gib, d: 200 * mib, b: 100 * mib, verdict: "post-copy", lever: ActPostCopy, totalLo: 40 * time.Second, totalHi: 70 * time.Second},
		{name: "D > B with pause permitted: pause", p: Policy{DowntimeBudget: 500 * time.Millisecond, Pause: true},
			ram: 2 * gib, d: 200 * mib, b: 100 * mib, verdict: "pause", lever: ActPause, totalLo: 40 * time.Second, totalHi: 70 * time.Second, downtimeMax: 25 * time.Second},
		{name: "D > B, nothing permitted: abort", p: budget, ram: 2 * gib, d: 200 * mib, b: 100 * mib, verdict: "abort", lever: ActAbort,
			totalLo: 40 * time.Second, totalHi: 70 * time.Second},
		{name: "auto-converge throttles a fast writer down", p: Policy{DowntimeBudget: 500 * time.Millisecond, AutoConverge: true,
			AutoConvergeInitial: 50, AutoConvergeIncrement: 20}, ram: 2 * gib, d: 150 * mib, b: 100 * mib, verdict: "auto-converge", converges: true,
			lever: ActNone, totalLo: 20 * time.Second, totalHi: 120 * time.Second, downtimeMax: 500 * time.Millisecond},
		{name: "a completion timeout ends it first", p: Policy{DowntimeBudget: 500 * time.Millisecond, CompletionTimeout: 30 * time.Second},
			ram: 8 * gib, d: 0, b: 100 * mib, verdict: "completion-timeout", lever: ActAbort, totalLo: 30 * time.Second, totalHi: 30 * time.Second},
	}
	for _, tc := range tests {
		got := Predict(tc.p, tc.ram, tc.disk, tc.d, tc.b)
		if !got.Known || got.Verdict != tc.verdict || got.Lever != tc.lever || got.Converges != tc.converges {
			t.Errorf("%s: Predict = %s/%s converges=%v (%s), want %s/%s converges=%v", tc.name, got.Verdict, got.Lever, got.Converges,
				got.Reason, tc.verdict, tc.lever, tc.converges)
		}
		if got.Total < tc.totalLo || got.Total > tc.totalHi {
			t.Errorf("%s: total %s, want %s..%s", tc.name, got.Total, tc.totalLo, tc.totalHi)
		}
		if got.Downtime > tc.downtimeMax {
			t.Errorf("%s: downtime %s, want ≤ %s", tc.name, got.Downtime, tc.downtimeMax)
		}
		if got.Converges && got.Downtime > got.MaxDowntime {
			t.Errorf("%s: downtime %s above the max downtime set, %s", tc.name, got.Downtime, got.MaxDowntime)
		}
		if got.Reason == "" {
			t.Errorf("%s: no reason", tc.name)
		}
	}
	if got := Predict(budget, gib, 0, 0, 0); got.Known || !strings.Contains(got.Reason, "bandwidth is unknown") {
		t.Errorf("unknown bandwidth: %+v", got)
	}
	if got := Predict(budget, 4*gib, 0, 95*mib, 100*mib); !strings.Contains(got.Reason, "needs ≥") {
		t.Errorf("an abort's reason says what it would take: %q", got.Reason)
	}
}
