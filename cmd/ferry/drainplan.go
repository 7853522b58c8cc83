package main

// The drain's plan: which server goes next and whether it may start now.
// Both are pure functions of what the drain knows — each server's RAM and,
// when an earlier migration measured it, its dirty rate; the link's
// bandwidth B when the admin gave it; --max-parallel — so they are tested
// with tables and never wait on the network.
//
// The model is the classic pre-copy one: a guest of RAM M dirtying memory
// at d over a link of b moves M·b/(b−d) bytes in M/(b−d) seconds when
// d < b, and never converges by itself when d ≥ b. n migrations at once
// share the link, b = B/n each.

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"opendev.org/x/ferry/pkg/status"
)

// drainCandidate is one server as the planner sees it.
type drainCandidate struct {
	ID, Name string
	RAMMiB   int64   // 0: unknown
	DirtyMiB float64 // MiB/s an earlier migration measured; 0: unknown
}

// drainLimits is what bounds a drain.
type drainLimits struct {
	BandwidthMiB float64 // B, MiB/s; 0: unknown
	MaxParallel  int     // ≥ 1
	// Sample is how long the host's ferryd measures the dirty rate of a
	// server no earlier migration measured; 0: not measured.
	Sample time.Duration
	// SourceSlots is how many jobs the host's ferryd runs at once
	// (max_concurrent_live_migrations; 0: not known): the others wait in
	// its queue, so at most that many share the link.
	SourceSlots int
}

// expectedSeconds is how long c would take with the whole link to itself:
// M/(B−d), M/B when d is unknown; +Inf when it would not converge (d ≥ B).
// With B unknown it is the RAM in MiB, which orders the same way; a
// server whose RAM is unknown is +Inf.
func expectedSeconds(c drainCandidate, bw float64) float64 {
	if c.RAMMiB <= 0 {
		return math.Inf(1)
	}
	if bw <= 0 {
		return float64(c.RAMMiB)
	}
	if c.DirtyMiB >= bw {
		return math.Inf(1)
	}
	return float64(c.RAMMiB) / (bw - c.DirtyMiB)
}

// drainOrder is the order servers start in: shortest expected migration
// first (smallest RAM when B is unknown), ties by RAM, then name, then id.
// Short ones first finish the most servers soonest and free the link for
// the long ones, which then run with fewer beside them — the ones that
// would not converge even alone go last, when the link is theirs. The
// list is fixed when the drain starts, so nothing is overtaken forever.
func drainOrder(cs []drainCandidate, bw float64) []drainCandidate {
	out := slices.Clone(cs)
	slices.SortStableFunc(out, func(a, b drainCandidate) int {
		return cmp.Or(
			cmp.Compare(expectedSeconds(a, bw), expectedSeconds(b, bw)),
			cmp.Compare(ramOrMax(a), ramOrMax(b)),
			cmp.Compare(a.Name, b.Name),
			cmp.Compare(a.ID, b.ID))
	})
	return out
}

func ramOrMax(c drainCandidate) int64 {
	if c.RAMMiB <= 0 {
		return math.MaxInt64
	}
	return c.RAMMiB
}

// admit says whether next may start beside running, and why not. The
// first always starts (nothing else competes for the link). Beyond it,
// --max-parallel caps how many run at once; and when B is known, next
// starts only if, with the link split n+1 ways, every one of them whose
// dirty rate is known — the running ones and next — would still converge
// on its share: B/(n+1) > d. A dirty rate not known is not held against
// a server. The head of the queue waits rather than being overtaken, so
// the order stays the one drainOrder chose.
func admit(l drainLimits, running []drainCandidate, next drainCandidate) (bool, string) {
	n := len(running)
	if n == 0 {
		return true, ""
	}
	if n >= l.MaxParallel {
		return false, fmt.Sprintf("%d running (--max-parallel %d)", n, l.MaxParallel)
	}
	if l.BandwidthMiB <= 0 {
		return true, ""
	}
	sharing := n + 1
	if l.SourceSlots > 0 {
		sharing = min(sharing, l.SourceSlots)
	}
	if sharing == 1 { // the host's ferryd runs one job at a time: next waits there, the link to itself
		return true, ""
	}
	share := l.BandwidthMiB / float64(sharing)
	for _, c := range append(slices.Clone(running), next) {
		if c.DirtyMiB > 0 && share <= c.DirtyMiB {
			return false, fmt.Sprintf("%s dirties %.0f MiB/s; %d at once would leave each %.0f MiB/s of %.0f",
				c.Name, c.DirtyMiB, sharing, share, l.BandwidthMiB)
		}
	}
	return true, ""
}

// dirtyRateOf is the dirty rate, in MiB/s, an earlier migration's record
// shows, and whether it shows one. Everything sent after the first pass
// was memory the guest dirtied again; in the model above the share of
// re-sent bytes is d/b, so d = b·(moved−first pass)/moved, where b is the
// bandwidth ferry measured on that job. It reads low for a guest that
// rewrites the same pages (each is sent once per pass), which is the rate
// that matters for the link.
func dirtyRateOf(r status.Record) (float64, bool) {
	if r.BandwidthBps <= 0 || r.FirstPassBytes == 0 || r.MemoryBytes < r.FirstPassBytes {
		return 0, false
	}
	resent := float64(r.MemoryBytes - r.FirstPassBytes)
	return r.BandwidthBps * resent / float64(r.MemoryBytes) / (1 << 20), true
}
