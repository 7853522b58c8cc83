package migration

import (
	"fmt"
	"time"
)

// Prediction is what the physics says a live migration would do, and what
// the convergence policy (Decide) would do about it.
type Prediction struct {
	// Known is false when the bandwidth is unknown; nothing else is set
	// but Reason.
	Known bool
	// Converges: pre-copy switches over within the downtime budget, by
	// itself or once the monitor raised the max downtime.
	Converges bool
	// Verdict names the outcome: converges, converges-with-raised-downtime,
	// auto-converge (the throttle makes it converge), post-copy, pause,
	// abort or completion-timeout.
	Verdict string
	// Lever is the run-time action the monitor would take last: ActNone
	// (QEMU switches over by itself), ActSetDowntime, ActPostCopy, ActPause
	// or ActAbort.
	Lever ActionKind
	// AutoConverge: the throttle would be engaged (the job starts with it
	// and the guest dirties more than half of what a pass sends).
	AutoConverge bool
	// MaxDowntime is the max downtime set on the job when it switches over.
	MaxDowntime time.Duration
	// Downtime is the predicted stop-and-copy pause; 0 after post-copy
	// (only device state moves in the pause), or when it aborts.
	Downtime time.Duration
	Total    time.Duration // disk copy plus memory, until the guest runs on the destination (or the abort)
	DiskTime time.Duration // the disk mirror's first sync, before memory moves
	Passes   int           // memory passes before the switch-over (or the abort)
	// Floor is the dirty set of the last pass, the remaining bytes at which
	// the switch-over (or the lever) happens.
	Floor  uint64
	Reason string
}

// Predict runs the pre-copy physics for a guest: ramBytes is the memory a
// first pass sends at full cost (the guest's RAM; its resident pages when
// known: zero pages are nearly free), diskBytes what the disk mirror copies
// before memory moves, dirtyBps the measured dirty rate D and bandwidthBps
// the migration bandwidth B (0: unknown, no prediction). Pass i+1 resends
// what pass i's sending time let the guest dirty, V(i+1) = min(RAM, D·V(i)/B),
// until what is left fits B × the max downtime; at each pass it applies the
// rules of Decide (a flat or slow pass with a need above the max downtime
// raises it up to the budget, then auto-converge gets its grace, then
// post-copy, pause or abort as the policy permits), so the plan says what
// the monitor would do. It ignores stalls and what the guest writes to its
// disks during the mirror.
func Predict(p Policy, ramBytes, diskBytes, dirtyBps, bandwidthBps uint64) Prediction {
	p = p.WithDefaults()
	if bandwidthBps == 0 {
		return Prediction{Reason: "the migration bandwidth is unknown (unlimited in the configuration, and no migration measured it yet)"}
	}
	s := predictor{p: p, ram: float64(ramBytes), d: float64(dirtyBps), b: float64(bandwidthBps), downtime: p.InitialDowntime}
	out := Prediction{Known: true, DiskTime: secs(float64(diskBytes) / s.b)}
	s.t = out.DiskTime.Seconds()
	s.run(&out)
	out.Total = secs(s.t)
	out.MaxDowntime = s.downtime
	out.AutoConverge = s.throttle > 0
	return out
}

type predictor struct {
	p         Policy
	ram, d, b float64
	t         float64 // elapsed seconds
	downtime  time.Duration
	raised    bool
	throttle  float64 // auto-converge's cut of D, 0..0.99
	hot       int     // consecutive passes that dirtied more than half what they sent (QEMU's trigger, seen twice)
	atMax     int     // passes run at the throttle's maximum
	nonConvAt float64 // when a pass was first flat or slow; -1 never
}

func (s *predictor) run(out *Prediction) {
	s.nonConvAt = -1
	set := s.ram // the first pass sends all of RAM
	var prev float64
	for pass := 1; pass <= 10000; pass++ {
		out.Passes, out.Floor = pass, uint64(set)
		if pass > 1 && set <= s.b*s.downtime.Seconds() {
			s.switchOver(out, set)
			return
		}
		passT := set / s.b
		if s.p.CompletionTimeout > 0 && s.t+passT >= s.p.CompletionTimeout.Seconds() {
			s.timeout(out, set)
			return
		}
		if pass >= 2 && s.judge(out, pass, set, prev, passT) {
			return
		}
		if pass > 1 && set <= s.b*s.downtime.Seconds() { // the monitor raised the max downtime: QEMU switches now
			s.switchOver(out, set)
			return
		}
		s.t += passT
		next := min(s.ram, s.d*(1-s.throttle)*passT)
		s.autoConverge(next, set)
		prev, set = set, next
	}
	out.Verdict, out.Lever, out.Reason = "abort", ActAbort, "pre-copy did not end within 10000 passes"
}

// judge is Decide's converge for one pass: it returns true when the
// monitor would escalate (the outcome is then in out).
func (s *predictor) judge(out *Prediction, pass int, set, prev, passT float64) bool {
	need := secs(set / s.b)
	if need <= s.downtime {
		return false
	}
	flat := pass >= 3 && prev > 0 && set >= 0.8*prev
	slow := secs(passT) >= s.p.SlowIteration
	if !flat && !slow {
		return false // the dirty set still shrinks pass by pass
	}
	if s.nonConvAt < 0 {
		s.nonConvAt = s.t
	}
	if need <= s.p.DowntimeBudget {
		if want := min(s.p.DowntimeBudget, (need*12/10 + 9*time.Millisecond).Truncate(10*time.Millisecond)); want > s.downtime {
			s.downtime, s.raised = want, true
		}
		return false
	}
	if s.p.AutoConverge && secs(s.t-s.nonConvAt) < s.p.AutoConvergeGrace && s.atMax < 2 {
		return false // auto-converge gets its grace
	}
	why := fmt.Sprintf("pre-copy does not converge: floor %s at %s needs ≥ %s downtime (budget %s) or ≥ %.1f Gbit/s",
		mib(uint64(set)), rate(s.b), round(need), round(s.p.DowntimeBudget), set*8/s.p.DowntimeBudget.Seconds()/1e9)
	out.Reason = why
	switch {
	case s.p.PostCopy:
		out.Verdict, out.Lever = "post-copy", ActPostCopy
		s.t += set / s.b // after the switch the pages dirtied since they were sent move once, as the guest faults or the stream sends them
	case s.p.Pause:
		out.Verdict, out.Lever = "pause", ActPause
		out.Downtime = need // paused, the guest dirties nothing: what is left goes in one pass
		s.t += set / s.b
	default:
		out.Verdict, out.Lever = "abort", ActAbort
	}
	return true
}

// autoConverge models QEMU's throttle: engaged once two passes in a row
// dirtied more than half of what they sent (throttle-trigger-threshold),
// then raised each pass by the increment, up to 99 %.
func (s *predictor) autoConverge(next, set float64) {
	if !s.p.AutoConverge {
		return
	}
	if next > 0.5*set {
		s.hot++
	} else {
		s.hot = 0
	}
	initial, step := float64(s.p.AutoConvergeInitial), float64(s.p.AutoConvergeIncrement)
	if initial == 0 {
		initial = 20
	}
	if step == 0 {
		step = 10
	}
	switch {
	case s.throttle >= 0.99:
		s.atMax++
	case s.throttle > 0 && s.hot > 0:
		s.throttle = min(0.99, s.throttle+step/100)
	case s.throttle == 0 && s.hot >= 2:
		s.throttle = min(0.99, initial/100)
	}
}

func (s *predictor) switchOver(out *Prediction, set float64) {
	out.Converges, out.Downtime = true, secs(set/s.b)
	s.t += set / s.b
	switch {
	case s.throttle > 0:
		out.Verdict, out.Reason = "auto-converge", fmt.Sprintf("converges once auto-converge throttles the guest to %.0f %%", s.throttle*100)
	case s.raised:
		out.Verdict, out.Lever, out.Reason = "converges-with-raised-downtime", ActSetDowntime,
			fmt.Sprintf("the dirty set stops shrinking at %s; the monitor raises the max downtime to %s", mib(uint64(set)), round(s.downtime))
	default:
		out.Verdict, out.Reason = "converges", fmt.Sprintf("the dirty set falls below %s (%s at %s) after %d passes",
			mib(uint64(s.b*s.downtime.Seconds())), round(s.downtime), rate(s.b), out.Passes)
	}
	if s.raised {
		out.Lever = ActSetDowntime
	}
}

func (s *predictor) timeout(out *Prediction, set float64) {
	out.Verdict, out.Reason = "completion-timeout", fmt.Sprintf("completion timeout of %s reached", round(s.p.CompletionTimeout))
	s.t = s.p.CompletionTimeout.Seconds()
	if s.p.TimeoutAction != "force_complete" {
		out.Lever = ActAbort
		return
	}
	if s.p.PostCopy {
		out.Lever = ActPostCopy
	} else {
		out.Lever, out.Downtime = ActPause, secs(set/s.b)
	}
	s.t += set / s.b
}

func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
