package migration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/virt"
)

// sim is a pre-copy model: a disk mirror, then memory passes over a link of
// bandwidth B while the guest dirties a working set at rate D. QEMU switches
// over once the pending bytes fit B × max downtime. It produces the job
// stats libvirt would report and takes the policy's actions.
type sim struct {
	ram, ws, disk uint64
	dirty         float64 // bytes/s
	bw            float64 // bytes/s
	drops         [][2]time.Duration
	autoConverge  bool
	acIni, acInc  int

	t                time.Duration
	diskLeft         float64
	iter             uint64
	iterLeft         float64
	dirtyAcc         float64
	sentIter         float64
	processed        float64
	memProcessed     float64
	downtimeLimit    time.Duration
	throttle         int
	acTrigger        int
	paused, postcopy bool
	pausedAt         time.Duration
	pcLeft           float64
	done, aborted    bool
	downtime         time.Duration
	bpsNow           float64
}

const mibF = float64(1 << 20)

func newSim(ramMiB, wsMiB, diskMiB int, dirtyMiBps, bwMiBps float64) *sim {
	s := &sim{ram: uint64(ramMiB) << 20, ws: uint64(wsMiB) << 20, disk: uint64(diskMiB) << 20,
		dirty: dirtyMiBps * mibF, bw: bwMiBps * mibF, downtimeLimit: 300 * time.Millisecond, acIni: 20, acInc: 10}
	s.diskLeft = float64(s.disk)
	if s.disk == 0 {
		s.startMemory()
	}
	return s
}

func (s *sim) startMemory() { s.iter, s.iterLeft = 1, float64(s.ram) }

func (s *sim) linkUp() bool {
	for _, d := range s.drops {
		if s.t >= d[0] && s.t < d[1] {
			return false
		}
	}
	return true
}

// advance runs the model for d in 10 ms steps.
func (s *sim) advance(d time.Duration) {
	const step = 10 * time.Millisecond
	for end := s.t + d; s.t < end && !s.done && !s.aborted; s.t += step {
		b := 0.0
		if s.linkUp() {
			b = s.bw * step.Seconds()
		}
		s.bpsNow = b / step.Seconds()
		switch {
		case s.diskLeft > 0:
			x := min(b, s.diskLeft)
			s.diskLeft -= x
			s.processed += x
			if s.diskLeft == 0 {
				s.startMemory()
			}
		case s.postcopy:
			s.pcLeft -= b
			s.processed += b
			if s.pcLeft <= 0 {
				s.done = true
			}
		default:
			s.memoryStep(b, step)
		}
	}
}

func (s *sim) memoryStep(b float64, step time.Duration) {
	x := min(b, s.iterLeft)
	s.iterLeft -= x
	s.sentIter += x
	s.processed += x
	s.memProcessed += x
	if !s.paused {
		d := s.dirty * (1 - float64(s.throttle)/100) * step.Seconds()
		s.dirtyAcc = min(float64(s.ws), s.dirtyAcc+d)
	}
	pending := s.iterLeft + s.dirtyAcc
	if s.iter >= 2 && s.bpsNow > 0 && pending <= s.bpsNow*s.downtimeLimit.Seconds() {
		s.done = true
		s.downtime = time.Duration(pending / s.bpsNow * float64(time.Second))
		if s.paused {
			s.downtime += s.t - s.pausedAt
		}
		return
	}
	if s.iterLeft == 0 { // bitmap sync: the next pass resends what was dirtied
		if s.autoConverge && s.dirtyAcc > 0.5*s.sentIter {
			if s.acTrigger++; s.acTrigger >= 2 {
				if s.throttle == 0 {
					s.throttle = s.acIni
				} else {
					s.throttle = min(99, s.throttle+s.acInc)
				}
			}
		}
		s.iter++
		s.iterLeft, s.dirtyAcc, s.sentIter = s.dirtyAcc, 0, 0
	}
}

func (s *sim) stats() virt.JobStats {
	js := virt.JobStats{Type: virt.JobUnbounded, Elapsed: s.t, DataProcessed: uint64(s.processed),
		MemTotal: s.ram, MemProcessed: uint64(s.memProcessed), MemRemaining: uint64(s.iterLeft),
		MemIteration: s.iter, DiskTotal: s.disk, DiskProcessed: s.disk - uint64(s.diskLeft),
		DiskRemaining: uint64(s.diskLeft), AutoConvergePct: s.throttle}
	if s.diskLeft == 0 && !s.postcopy {
		js.MemBps = uint64(s.bpsNow)
	} else {
		js.DiskBps = uint64(s.bpsNow)
	}
	if s.done {
		js.Type = virt.JobCompleted
	}
	if s.aborted {
		js.Type = virt.JobCancelled
	}
	return js
}

func (s *sim) apply(a Action) {
	switch a.Kind {
	case ActSetDowntime:
		s.downtimeLimit = a.Downtime
	case ActPostCopy:
		s.postcopy = true
		s.pcLeft = s.iterLeft + s.dirtyAcc
		s.downtime = 50 * time.Millisecond // device state only
	case ActPause:
		s.paused, s.pausedAt = true, s.t
	case ActAbort:
		s.aborted = true
	}
}

type simResult struct {
	actions  []Action
	at       []time.Duration
	st       State
	sim      *sim
	complete bool
}

func (r simResult) kinds() string {
	var k []string
	for _, a := range r.actions {
		k = append(k, a.Kind.String())
	}
	return strings.Join(k, ",")
}

// run drives the policy from the model every 500 ms, as the monitor does.
func run(p Policy, s *sim, limit time.Duration) simResult {
	p = p.WithDefaults()
	var r simResult
	for s.t < limit && !s.done && !s.aborted {
		a := Decide(p, &r.st, Sample{At: s.t, Stats: s.stats()})
		if a.Kind != ActNone {
			r.actions = append(r.actions, a)
			r.at = append(r.at, s.t)
			s.apply(a)
		}
		s.advance(500 * time.Millisecond)
	}
	r.sim, r.complete = s, s.done
	return r
}

func TestPolicyScenarios(t *testing.T) {
	tests := []struct {
		name     string
		policy   Policy
		sim      func() *sim
		kinds    string
		complete bool
		check    func(t *testing.T, r simResult)
	}{
		{
			name:     "idle guest converges with the initial downtime",
			sim:      func() *sim { return newSim(256, 0, 0, 0, 50) },
			kinds:    "set-downtime",
			complete: true,
		},
		{
			name:     "a guest dirtying at half the bandwidth converges alone",
			sim:      func() *sim { return newSim(256, 256, 0, 25, 50) },
			kinds:    "set-downtime",
			complete: true,
		},
		{
			name:     "downtime lever: floor 64 MiB at 50 MiB/s fits a 2 s budget",
			policy:   Policy{DowntimeBudget: 2 * time.Second},
			sim:      func() *sim { return newSim(384, 64, 0, 100, 50) },
			kinds:    "set-downtime,set-downtime",
			complete: true,
			check: func(t *testing.T, r simResult) {
				if d := r.actions[1].Downtime; d < 1200*time.Millisecond || d > 2*time.Second {
					t.Errorf("raised downtime to %v, want ≈ 1.2 × 64 MiB / 50 MiB/s", d)
				}
				if r.at[1] > 15*time.Second {
					t.Errorf("raised at %v, want early (first re-send passes)", r.at[1])
				}
				if r.sim.downtime > 2*time.Second {
					t.Errorf("downtime %v over the budget", r.sim.downtime)
				}
				if fp := r.st.FirstPass >> 20; fp < 380 || fp > 390 {
					t.Errorf("first pass %d MiB, want the 384 MiB of RAM", fp)
				}
			},
		},
		{
			name:     "floor too big, post-copy permitted: switch early",
			policy:   Policy{PostCopy: true},
			sim:      func() *sim { return newSim(512, 256, 0, 200, 50) },
			kinds:    "set-downtime,post-copy",
			complete: true,
			check: func(t *testing.T, r simResult) {
				if r.at[1] > 30*time.Second || !strings.Contains(r.actions[1].Reason, "needs ≥") {
					t.Errorf("post-copy at %v (%q)", r.at[1], r.actions[1].Reason)
				}
			},
		},
		{
			name:     "floor too big, pause permitted",
			policy:   Policy{Pause: true},
			sim:      func() *sim { return newSim(512, 256, 0, 200, 50) },
			kinds:    "set-downtime,pause",
			complete: true,
		},
		{
			name:     "floor too big, nothing permitted: abort early with what it would take",
			sim:      func() *sim { return newSim(512, 256, 0, 200, 50) },
			kinds:    "set-downtime,abort",
			complete: false,
			check: func(t *testing.T, r simResult) {
				a := r.actions[1]
				if r.at[1] > 30*time.Second {
					t.Errorf("aborted at %v; Nova's 800 s/GiB would wait 400 s, want far earlier", r.at[1])
				}
				if !strings.Contains(a.Reason, "needs ≥ 5.") || !strings.Contains(a.Reason, "Gbit/s") {
					t.Errorf("reason %q, want the downtime (≈ 5.1 s) and bandwidth it would take", a.Reason)
				}
			},
		},
		{
			name:   "auto-converge gets its grace and the throttled guest converges",
			policy: Policy{AutoConverge: true, DowntimeBudget: 2 * time.Second, AutoConvergeGrace: 120 * time.Second},
			sim: func() *sim {
				s := newSim(512, 256, 0, 200, 50)
				s.autoConverge, s.acIni, s.acInc = true, 60, 20
				return s
			},
			kinds:    "set-downtime",
			complete: true,
			check: func(t *testing.T, r simResult) {
				if r.sim.throttle == 0 {
					t.Error("auto-converge never throttled")
				}
			},
		},
		{
			name:   "auto-converge grace runs out: abort",
			policy: Policy{AutoConverge: true, AutoConvergeGrace: 20 * time.Second},
			sim: func() *sim {
				s := newSim(512, 256, 0, 200, 50)
				s.autoConverge, s.acIni, s.acInc = true, 5, 1
				return s
			},
			kinds:    "set-downtime,abort",
			complete: false,
		},
		{
			name:   "a 10 s link drop under the stall limit: one stall, nothing else",
			policy: Policy{PostCopy: true},
			sim: func() *sim {
				s := newSim(256, 0, 0, 0, 50)
				s.drops = [][2]time.Duration{{2 * time.Second, 12 * time.Second}}
				return s
			},
			kinds:    "set-downtime",
			complete: true,
			check: func(t *testing.T, r simResult) {
				if r.st.Stalls != 1 || r.st.LongestStall < 9*time.Second {
					t.Errorf("stalls = %d (longest %v), want one of about 10 s", r.st.Stalls, r.st.LongestStall)
				}
			},
		},
		{
			name:   "a link drop past the stall limit aborts with the stall as reason",
			policy: Policy{PostCopy: true, Pause: true},
			sim: func() *sim {
				s := newSim(256, 0, 0, 0, 50)
				s.drops = [][2]time.Duration{{2 * time.Second, time.Hour}}
				return s
			},
			kinds:    "set-downtime,abort",
			complete: false,
			check: func(t *testing.T, r simResult) {
				if !strings.HasPrefix(r.actions[1].Reason, "transport stall: no bytes for 3") {
					t.Errorf("reason %q", r.actions[1].Reason)
				}
			},
		},
		{
			name:   "non-convergence during a stall: no post-copy until the link is healthy again",
			policy: Policy{PostCopy: true},
			sim: func() *sim {
				s := newSim(512, 256, 0, 200, 50)
				s.drops = [][2]time.Duration{{13 * time.Second, 23 * time.Second}}
				return s
			},
			kinds:    "set-downtime,post-copy",
			complete: true,
			check: func(t *testing.T, r simResult) {
				if r.at[1] < 23*time.Second+10*time.Second {
					t.Errorf("post-copy at %v, want after 10 s of healthy link (link back at 23 s)", r.at[1])
				}
			},
		},
		{
			name:     "disk mirror phase is progress, not a stall",
			sim:      func() *sim { return newSim(256, 32, 1024, 10, 50) },
			kinds:    "set-downtime",
			complete: true,
		},
		{
			name:     "completion timeout with force_complete: post-copy when permitted",
			policy:   Policy{CompletionTimeout: 20 * time.Second, TimeoutAction: "force_complete", PostCopy: true, DowntimeBudget: 30 * time.Second, SlowIteration: time.Hour},
			sim:      func() *sim { return newSim(2048, 2048, 0, 40, 50) },
			kinds:    "set-downtime,post-copy",
			complete: true,
			check: func(t *testing.T, r simResult) {
				if !strings.Contains(r.actions[1].Reason, "completion timeout") {
					t.Errorf("reason %q", r.actions[1].Reason)
				}
			},
		},
		{
			name:     "completion timeout with abort",
			policy:   Policy{CompletionTimeout: 20 * time.Second, DowntimeBudget: 30 * time.Second, SlowIteration: time.Hour},
			sim:      func() *sim { return newSim(2048, 2048, 0, 40, 50) },
			kinds:    "set-downtime,abort",
			complete: false,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := run(tc.policy, tc.sim(), 10*time.Minute)
			if got := r.kinds(); got != tc.kinds {
				t.Errorf("actions = %s, want %s", got, tc.kinds)
			}
			if r.complete != tc.complete {
				t.Errorf("completed = %v at %v, want %v", r.complete, r.sim.t, tc.complete)
			}
			for i, a := range r.actions {
				t.Logf("t=%5.1fs %s %v %s", r.at[i].Seconds(), a.Kind, a.Downtime, a.Reason)
			}
			t.Logf("end t=%.1fs downtime=%v B=%.1f MiB/s F=%.1f MiB stalls=%d", r.sim.t.Seconds(), r.sim.downtime,
				r.st.Bps/mibF, float64(r.st.Floor)/mibF, r.st.Stalls)
			if tc.check != nil && len(r.actions) >= len(strings.Split(tc.kinds, ",")) {
				tc.check(t, r)
			}
		})
	}
}

func TestForceComplete(t *testing.T) {
	p := Policy{PostCopy: true}.WithDefaults()
	st := State{}
	if a := ForceComplete(p, &st, time.Minute, "admin"); a.Kind != ActPostCopy {
		t.Errorf("healthy link, post-copy permitted: %v", a.Kind)
	}
	if a := ForceComplete(p, &st, time.Minute, "admin"); a.Kind != ActNone {
		t.Errorf("second force-complete: %v, want none", a.Kind)
	}
	st = State{stalled: true, Stalls: 1}
	if a := ForceComplete(p, &st, time.Minute, "admin"); a.Kind != ActPause {
		t.Errorf("stalled link: %v, want pause", a.Kind)
	}
	st = State{}
	if a := ForceComplete(Policy{}.WithDefaults(), &st, time.Minute, "admin"); a.Kind != ActPause {
		t.Errorf("post-copy not permitted: %v, want pause", a.Kind)
	}
}

func Example_decide() {
	p := Policy{DowntimeBudget: 2 * time.Second}.WithDefaults()
	var st State
	s := newSim(384, 64, 0, 100, 50)
	for !s.done {
		if a := Decide(p, &st, Sample{At: s.t, Stats: s.stats()}); a.Kind != ActNone {
			fmt.Printf("%s %v (%s)\n", a.Kind, a.Downtime, a.Reason)
			s.apply(a)
		}
		s.advance(500 * time.Millisecond)
	}
	// Output:
	// set-downtime 100ms (initial max downtime)
	// set-downtime 1.54s (floor 64.0 MiB at 50.0 MiB/s needs 1.28s)
}
