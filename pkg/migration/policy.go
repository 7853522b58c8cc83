package migration

import (
	"fmt"
	"time"

	"opendev.org/x/ferry/pkg/virt"
)

// Policy configures the convergence policy. Zero durations take defaults
// (WithDefaults). The Nova knobs keep their meaning as outer bounds: the
// downtime never exceeds DowntimeBudget (live_migration_downtime), the job
// never outlives CompletionTimeout (live_migration_completion_timeout × GiB)
// without TimeoutAction being applied.
type Policy struct {
	DowntimeBudget    time.Duration // longest stop-and-copy pause ferry may set; default 500ms
	InitialDowntime   time.Duration // set when the job starts; default min(100ms, budget)
	StallAfter        time.Duration // no bytes moving this long is a transport stall; default 3s
	StallLimit        time.Duration // a transport stall this long aborts; default 30s
	CompletionTimeout time.Duration // whole-job bound; 0 = none
	TimeoutAction     string        // "abort" (default) or "force_complete"
	PostCopy          bool          // the job was started with the post-copy flag
	AutoConverge      bool          // the job was started with auto-converge
	AutoConvergeGrace time.Duration // time auto-converge gets once pre-copy stops converging; default 60s
	// AutoConvergeInitial and AutoConvergeIncrement are the throttle's start
	// and step in percent (libvirt's auto_converge.initial and .increment);
	// 0 leaves QEMU's defaults (20 and 10), which take minutes to bite.
	AutoConvergeInitial   int
	AutoConvergeIncrement int
	Pause                 bool          // pausing the guest is a permitted escalation
	HealthyLink           time.Duration // stall-free time required before a post-copy switch; default 10s
	SlowIteration         time.Duration // one re-send pass longer than this counts as not converging; default 30s
}

// WithDefaults fills zero fields.
func (p Policy) WithDefaults() Policy {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&p.DowntimeBudget, 500*time.Millisecond)
	def(&p.InitialDowntime, min(100*time.Millisecond, p.DowntimeBudget))
	def(&p.StallAfter, 3*time.Second)
	def(&p.StallLimit, 30*time.Second)
	def(&p.AutoConvergeGrace, 60*time.Second)
	def(&p.HealthyLink, 10*time.Second)
	def(&p.SlowIteration, 30*time.Second)
	if p.TimeoutAction == "" {
		p.TimeoutAction = "abort"
	}
	return p
}

// ActionKind is what the policy asks the monitor to do.
type ActionKind int

// The run-time levers. Auto-converge and post-copy permission are start flags;
// during the job only these exist.
const (
	ActNone ActionKind = iota
	ActSetDowntime
	ActPostCopy
	ActPause
	ActAbort
	// ActPostcopyPause breaks a stalled post-copy stream so that it can be
	// resumed once the link is back (QEMU only recovers a stream that was
	// declared broken; a dead link alone leaves TCP retrying for minutes).
	ActPostcopyPause
)

func (k ActionKind) String() string {
	return [...]string{"none", "set-downtime", "post-copy", "pause", "abort", "post-copy-pause"}[k]
}

// Action is one decision, with the reason an operator reads.
type Action struct {
	Kind     ActionKind
	Downtime time.Duration // ActSetDowntime
	Reason   string
}

// Sample is one job-stats reading, At after the job started.
type Sample struct {
	At    time.Duration
	Stats virt.JobStats
}

// State is what the policy remembers between samples. The monitor keeps it;
// the policy never does I/O.
type State struct {
	started        bool
	lastAt         time.Duration
	lastProcessed  uint64
	progressAt     time.Duration
	stalled        bool
	stallStart     time.Duration
	lastStallEnd   time.Duration
	iter           uint64
	iterPeak       map[uint64]uint64
	iterStart      map[uint64]time.Duration
	iterBase       uint64 // memory_processed at the last bitmap sync (estimated)
	prevMemProc    uint64
	prevRemaining  uint64
	raisedIter     uint64 // iteration of the last downtime raise
	prevPeak       uint64 // dirty set of the previously observed pass
	throttleMaxIt  uint64 // iteration at which auto-converge reached its maximum
	nonConvergedAt time.Duration
	timedOut       bool
	pcBroken       bool

	Bps          float64       // smoothed memory bandwidth, bytes/s, only while bytes flow, pre-copy only
	FirstPass    uint64        // bytes the first memory pass sent (the RAM that had to move); 0 until it ends
	Floor        uint64        // F: lowest per-iteration dirty set over recent iterations
	Downtime     time.Duration // max downtime currently set
	Stalls       int           // transport stalls seen
	LongestStall time.Duration
	PostCopy     bool // switched to post-copy
	Paused       bool // the guest was paused
}

// ResumeState is the State of a monitor that takes over a job the journal
// describes: already in post-copy, paused by ferry, with a max downtime set.
func ResumeState(postCopy, paused bool, downtime time.Duration) State {
	return State{PostCopy: postCopy, Paused: paused, Downtime: downtime}
}

// Failed tells the policy that carrying out its action failed, so that it
// may choose the same lever again later (the switch to post-copy may be
// refused before the job's first pass, a pause by a guest that is shutting
// down).
func (st *State) Failed(a Action) {
	switch a.Kind {
	case ActPostCopy:
		st.PostCopy = false
	case ActPause:
		st.Paused = false
	case ActPostcopyPause:
		st.pcBroken = false
	}
}

const ewmaAlpha = 0.4 // weight of a new bandwidth reading (KubeVirt's stall detector uses the same)

// Decide is the convergence policy: from the job's latest sample it returns
// the action to take now, updating st. It separates three situations: a
// transport stall (no bytes move: wait up to StallLimit, never post-copy), the
// disk-mirror phase (disk bytes falling is progress) and pre-copy that no
// longer converges (bytes move, the per-iteration dirty set stays flat),
// which it answers from the physics: the floor F of remaining bytes and the
// bandwidth B give the downtime a switch-over needs, F/B.
func Decide(p Policy, st *State, s Sample) Action {
	js := s.Stats
	if !st.started {
		st.started = true
		st.progressAt, st.lastAt, st.lastProcessed = s.At, s.At, js.DataProcessed
		st.iterPeak, st.iterStart = map[uint64]uint64{}, map[uint64]time.Duration{}
		st.nonConvergedAt = -1
		if st.Downtime == 0 { // a re-attached monitor keeps what was set before
			st.Downtime = p.InitialDowntime
			return Action{Kind: ActSetDowntime, Downtime: p.InitialDowntime, Reason: "initial max downtime"}
		}
	}
	if js.Type != virt.JobUnbounded {
		return Action{}
	}
	dt := s.At - st.lastAt
	st.lastAt = s.At
	if js.DataProcessed > st.lastProcessed {
		moved := js.DataProcessed - st.lastProcessed
		st.lastProcessed = js.DataProcessed
		if st.stalled {
			st.stalled = false
			st.LongestStall = max(st.LongestStall, s.At-st.stallStart)
			st.lastStallEnd = s.At
		}
		st.progressAt = s.At
		bps := float64(js.MemBps)
		if bps == 0 && dt > 0 {
			bps = float64(moved) / dt.Seconds()
		}
		switch {
		case st.PostCopy:
			// B stays the pre-copy bandwidth the decisions rested on: the
			// post-copy stream runs under its own limit (QEMU's
			// max-postcopy-bandwidth, unlimited unless set, as under Nova).
		case st.Bps == 0:
			st.Bps = bps
		default:
			st.Bps = ewmaAlpha*bps + (1-ewmaAlpha)*st.Bps
		}
	} else {
		idle := s.At - st.progressAt
		if !st.stalled && idle >= p.StallAfter {
			st.stalled, st.stallStart = true, st.progressAt
			st.Stalls++
		}
		if st.stalled && st.PostCopy && !st.pcBroken {
			st.pcBroken = true
			return Action{Kind: ActPostcopyPause, Reason: fmt.Sprintf("post-copy stream stalled for %s: pausing it to resume once the link is back", round(idle))}
		}
		if st.stalled && !st.PostCopy && idle >= p.StallLimit {
			return Action{Kind: ActAbort, Reason: fmt.Sprintf("transport stall: no bytes for %s", round(idle))}
		}
		return Action{}
	}
	if p.CompletionTimeout > 0 && s.At >= p.CompletionTimeout && !st.timedOut && !st.PostCopy && !st.Paused {
		st.timedOut = true
		reason := fmt.Sprintf("completion timeout of %s reached", round(p.CompletionTimeout))
		if p.TimeoutAction == "force_complete" {
			return ForceComplete(p, st, s.At, reason)
		}
		return Action{Kind: ActAbort, Reason: reason}
	}
	if st.PostCopy || st.Paused || js.MemIteration == 0 || js.MemProcessed == 0 {
		return Action{} // post-copy or paused: let it finish; disk mirror: progress
	}
	return st.converge(p, s)
}

// converge handles pre-copy once memory moves.
func (st *State) converge(p Policy, s Sample) Action {
	js := s.Stats
	it := js.MemIteration
	if it != st.iter {
		// A bitmap sync happened since the last sample: the old pass sent
		// what it had left, then the new pass started with the dirty set.
		st.prevPeak = st.iterPeak[st.iter]
		st.iter = it
		st.iterStart[it] = s.At
		st.iterBase = st.prevMemProc + st.prevRemaining
		if st.FirstPass == 0 && it >= 2 {
			// memory_remaining counts unsent pages at page size, zero pages
			// included, which cost almost nothing to send: the pass cannot
			// have sent more than the job had sent by now.
			st.FirstPass = min(st.iterBase, js.MemProcessed)
		}
	}
	st.prevMemProc, st.prevRemaining = js.MemProcessed, js.MemRemaining
	// The dirty set of this pass: what is left plus what it already sent.
	set := js.MemRemaining
	if js.MemProcessed > st.iterBase {
		set += js.MemProcessed - st.iterBase
	}
	st.iterPeak[it] = max(st.iterPeak[it], set)
	if js.AutoConvergePct >= 99 && st.throttleMaxIt == 0 {
		st.throttleMaxIt = it
	}
	if it < 2 || st.Bps <= 0 {
		return Action{} // the first pass sends all of RAM; nothing to judge yet
	}
	st.Floor = st.iterPeak[it]
	for i := max(2, it-2); i < it; i++ {
		if v, ok := st.iterPeak[i]; ok {
			st.Floor = min(st.Floor, v)
		}
	}
	if float64(js.MemRemaining) <= st.Bps*st.Downtime.Seconds() {
		// What this pass has left goes within the max downtime: QEMU
		// switches over at its end, or the smaller pass after it is judged.
		return Action{}
	}
	need := time.Duration(float64(st.Floor) / st.Bps * float64(time.Second))
	flat := it >= 3 && st.prevPeak > 0 && float64(st.iterPeak[it]) >= 0.8*float64(st.prevPeak)
	// After a raise QEMU should switch over within a pass or two; if the
	// passes go on flat, our estimate was low (QEMU measures its own
	// bandwidth): ask for a quarter more.
	stuck := st.raisedIter > 0 && it >= st.raisedIter+2 && flat
	if stuck {
		need = max(need, st.Downtime*5/4)
	}
	if need <= st.Downtime {
		return Action{} // QEMU switches over by itself
	}
	slow := s.At-st.iterStart[it] >= p.SlowIteration
	if !flat && !slow {
		return Action{} // the dirty set still shrinks pass by pass
	}
	if st.nonConvergedAt < 0 {
		st.nonConvergedAt = s.At
	}
	if need <= p.DowntimeBudget {
		want := min(p.DowntimeBudget, (need*12/10 + 9*time.Millisecond).Truncate(10*time.Millisecond))
		if want > st.Downtime {
			st.Downtime, st.raisedIter = want, it
			return Action{Kind: ActSetDowntime, Downtime: want, Reason: fmt.Sprintf("floor %s at %s needs %s",
				mib(st.Floor), rate(st.Bps), round(need))}
		}
		return Action{}
	}
	throttleSpent := st.throttleMaxIt > 0 && it >= st.throttleMaxIt+2
	if p.AutoConverge && s.At-st.nonConvergedAt < p.AutoConvergeGrace && !throttleSpent {
		return Action{} // auto-converge throttles the guest; give it its time (and two passes at its maximum)
	}
	why := fmt.Sprintf("pre-copy does not converge: floor %s at %s needs ≥ %s downtime (budget %s) or ≥ %.1f Gbit/s",
		mib(st.Floor), rate(st.Bps), round(need), round(p.DowntimeBudget),
		float64(st.Floor)*8/p.DowntimeBudget.Seconds()/1e9)
	if p.PostCopy {
		if !st.linkHealthy(p, s.At) {
			return Action{} // post-copy over a shaky link risks the guest; wait
		}
		st.PostCopy = true
		return Action{Kind: ActPostCopy, Reason: why}
	}
	if p.Pause {
		st.Paused = true
		return Action{Kind: ActPause, Reason: why}
	}
	return Action{Kind: ActAbort, Reason: why}
}

func (st *State) linkHealthy(p Policy, at time.Duration) bool {
	return !st.stalled && (st.Stalls == 0 || at-st.lastStallEnd >= p.HealthyLink)
}

// ForceComplete is what an operator's force-complete (or the force_complete
// timeout action) does: switch to post-copy when the job permits it and the
// link is healthy, otherwise pause the guest so the job ends as
// stop-and-copy.
func ForceComplete(p Policy, st *State, at time.Duration, reason string) Action {
	if st.PostCopy || st.Paused {
		return Action{}
	}
	if p.PostCopy && st.linkHealthy(p, at) {
		st.PostCopy = true
		return Action{Kind: ActPostCopy, Reason: reason}
	}
	st.Paused = true
	return Action{Kind: ActPause, Reason: reason}
}

func mib(b uint64) string     { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
func rate(bps float64) string { return fmt.Sprintf("%.1f MiB/s", bps/(1<<20)) }
func round(d time.Duration) time.Duration {
	if d > 10*time.Second {
		return d.Round(time.Second)
	}
	return d.Round(10 * time.Millisecond)
}
