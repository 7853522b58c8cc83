package migration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/virt/virttest"
)

// sim is the fake hosts' QEMU model (virttest.Model) driven directly, with
// link drops at fixed times.
type sim struct {
	*virttest.Model
	drops [][2]time.Duration
}

const mibF = float64(1 << 20)

func newSim(ramMiB, wsMiB, diskMiB int, dirtyMiBps, bwMiBps float64) *sim {
	s := &sim{Model: virttest.NewModel(ramMiB, wsMiB, diskMiB, dirtyMiBps, bwMiBps)}
	s.LinkUp = func(t time.Duration) bool {
		for _, d := range s.drops {
			if t >= d[0] && t < d[1] {
				return false
			}
		}
		return true
	}
	return s
}

func (s *sim) apply(a Action) {
	switch a.Kind {
	case ActSetDowntime:
		s.SetDowntime(a.Downtime)
	case ActPostCopy:
		s.StartPostCopy()
	case ActPause:
		s.Pause()
	case ActAbort:
		s.Abort()
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
	for s.Elapsed() < limit && !s.Done() && !s.Aborted() {
		a := Decide(p, &r.st, Sample{At: s.Elapsed(), Stats: s.Stats()})
		if a.Kind != ActNone {
			r.actions = append(r.actions, a)
			r.at = append(r.at, s.Elapsed())
			s.apply(a)
		}
		s.Advance(500 * time.Millisecond)
	}
	r.sim, r.complete = s, s.Done()
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
				if r.sim.Downtime() > 2*time.Second {
					t.Errorf("downtime %v over the budget", r.sim.Downtime())
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
				s.AutoConverge, s.ACInitial, s.ACIncrement = true, 60, 20
				return s
			},
			kinds:    "set-downtime",
			complete: true,
			check: func(t *testing.T, r simResult) {
				if r.sim.Throttle() == 0 {
					t.Error("auto-converge never throttled")
				}
			},
		},
		{
			name:   "auto-converge grace runs out: abort",
			policy: Policy{AutoConverge: true, AutoConvergeGrace: 20 * time.Second},
			sim: func() *sim {
				s := newSim(512, 256, 0, 200, 50)
				s.AutoConverge, s.ACInitial, s.ACIncrement = true, 5, 1
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
				t.Errorf("completed = %v at %v, want %v", r.complete, r.sim.Elapsed(), tc.complete)
			}
			for i, a := range r.actions {
				t.Logf("t=%5.1fs %s %v %s", r.at[i].Seconds(), a.Kind, a.Downtime, a.Reason)
			}
			t.Logf("end t=%.1fs downtime=%v B=%.1f MiB/s F=%.1f MiB stalls=%d", r.sim.Elapsed().Seconds(), r.sim.Downtime(),
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
	for !s.Done() {
		if a := Decide(p, &st, Sample{At: s.Elapsed(), Stats: s.Stats()}); a.Kind != ActNone {
			fmt.Printf("%s %v (%s)\n", a.Kind, a.Downtime, a.Reason)
			s.apply(a)
		}
		s.Advance(500 * time.Millisecond)
	}
	// Output:
	// set-downtime 100ms (initial max downtime)
	// set-downtime 1.54s (floor 64.0 MiB at 50.0 MiB/s needs 1.28s)
}
