package migration

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/pkg/virt/virttest"
)

// A panic in the engine or in a caller's hook (issue 12) ends the
// migration instead of ferryd, with the panic in the reason. Before the
// libvirt job started nothing happened to the guest, so the migration has
// failed; once the job started ferry no longer watches it and cannot say
// where the guest runs, so it ends in error.

// panickyObserver panics on entering a phase, or on the first action.
type panickyObserver struct {
	nopObserver
	phase  Phase  // Phase panics when a migration enters it ("" never)
	action bool   // Action panics
	named  string // Action panics for an action of this name only
}

func (o panickyObserver) Phase(m Migration, from Phase) {
	if o.phase != "" && m.Phase == o.phase {
		panic("observer: assignment to entry in nil map")
	}
}

func (o panickyObserver) Action(_ Migration, ar ActionRecord, _ error) {
	if o.action || (o.named != "" && ar.Action == o.named) {
		panic("observer: assignment to entry in nil map")
	}
}

// panickyRecords are fakeRecords whose Reports panics for a move to one
// phase, and whose Progress panics when progress is set.
type panickyRecords struct {
	*fakeRecords
	reportsTo Phase
	progress  bool
	mu        sync.Mutex
	calls     int // Progress calls
}

func (p *panickyRecords) Reports(m Migration, from, to Phase) []string {
	if p.reportsTo != "" && to == p.reportsTo {
		panic("records: assignment to entry in nil map")
	}
	return p.fakeRecords.Reports(m, from, to)
}

func (p *panickyRecords) Progress(ctx context.Context, m Migration, js virt.JobStats) error {
	p.mu.Lock()
	p.calls++
	p.mu.Unlock()
	if p.progress {
		panic("records: progress: index out of range [3] with length 3")
	}
	return p.fakeRecords.Progress(ctx, m, js)
}

func TestManagerHookPanics(t *testing.T) {
	for _, tc := range []struct {
		name    string
		obs     Observer
		reports Phase // Records.Reports panics for a move to it
		job     virttest.Job
		policy  Policy
		want    Phase
		ops     string // the libvirt calls, exactly; "*": any, but no abort
	}{
		{name: "reports hook, leaving the queue", reports: PhasePreparing, want: PhaseFailed},
		{name: "phase hook, entering running", obs: panickyObserver{phase: PhaseRunning}, want: PhaseFailed},
		{name: "action hook, while the job runs", obs: panickyObserver{action: true}, want: PhaseError, ops: "migrate,set-max-downtime,abort"},
		{name: "phase hook, entering post-copy", obs: panickyObserver{phase: PhasePostCopy}, want: PhaseError, ops: "*",
			job: virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}, policy: Policy{PostCopy: true}},
		// The migration had ended: it stays as it ended.
		{name: "phase hook, entering completed", obs: panickyObserver{phase: PhaseCompleted}, want: PhaseCompleted, ops: "*"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFixture(t)
				if tc.job.RAMMiB != 0 {
					f.w.Job = tc.job
				}
				f.obs = tc.obs
				f.rec = &panickyRecords{fakeRecords: f.recs, reportsTo: tc.reports}
				m := f.running(t)
				start(t, m, req("m", vm1, tc.policy))
				s := waitDelivered(t, m, "m")
				if s.Phase != tc.want || (tc.want != PhaseCompleted && !strings.Contains(s.Reason, "assignment to entry in nil map")) {
					t.Errorf("ended %s %q, want %s with the panic", s.Phase, s.Reason, tc.want)
				}
				if tc.policy.PostCopy {
					// A job in post-copy cannot be aborted: it goes on to its end.
					c, err := f.w.Dial(t.Context(), "src")
					if err != nil {
						t.Fatal(err)
					}
					for i := 0; i < 600; i++ {
						if js, err := c.JobStats(t.Context(), vm1, false); err != nil || js.Type == virt.JobNone {
							break
						}
						time.Sleep(time.Second)
					}
					c.Close()
					if ops := strings.Join(f.w.Ops(), ","); !strings.Contains(ops, "start-post-copy") {
						t.Errorf("libvirt ops %s: no switch to post-copy", ops)
					}
				}
				switch ops := strings.Join(f.w.Ops(), ","); {
				case tc.ops == "*" && (!strings.HasPrefix(ops, "migrate,") || strings.Contains(ops, "abort")):
					t.Errorf("libvirt ops %q, want the job and no abort", ops)
				case tc.ops != "*" && ops != tc.ops:
					t.Errorf("libvirt ops %q, want %q", ops, tc.ops)
				}
				if tc.want == PhaseFailed || strings.HasSuffix(tc.ops, "abort") {
					if st, ok := f.w.State("src", vm1); !ok || st.State != virt.StateRunning {
						t.Errorf("source %+v %v, want the guest running there", st, ok)
					}
				}
				if j, err := ReadEntry(f.dir, "m"); err != nil || j.Phase != tc.want {
					t.Errorf("journal: %s, %v", j.Phase, err)
				}
			})
		})
	}
}

// An operator's command whose handling panics is answered with the panic,
// not left to wait for its caller's deadline (a cast's handler has none);
// the migration then ends as any panic while the job runs does.
func TestManagerCommandPanics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}
		f.obs = panickyObserver{named: "abort"}
		m := f.running(t)
		start(t, m, req("m", vm1, Policy{}))
		waitPhase(t, m, "m", PhaseRunning)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if err := m.Abort(ctx, "m"); err == nil || !strings.Contains(err.Error(), "assignment to entry in nil map") {
			t.Errorf("Abort = %v, want the panic", err)
		}
		if s := waitDelivered(t, m, "m"); s.Phase != PhaseError || !strings.Contains(s.Reason, "assignment to entry in nil map") {
			t.Errorf("ended %s %q, want error with the panic", s.Phase, s.Reason)
		}
	})
}

// A panic in the delivery path, in the caller's Deliver or Progress, costs
// the report or the sample it was handling, never the engine: a report
// whose delivery panics is given up like one refused, with the panic as its
// outcome; the migration and its other reports go on.
func TestManagerDeliveryPanics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.recs.deliver = func(ctx context.Context, r Report) error {
			if r.Name == "settle" {
				panic("records: deliver: nil pointer dereference")
			}
			return nil
		}
		recs := &panickyRecords{fakeRecords: f.recs, progress: true}
		f.rec = recs
		logs := &syncBuffer{}
		f.log = logs
		m := f.running(t)
		start(t, m, req("m", vm1, Policy{}))
		s := waitDelivered(t, m, "m")
		if s.Phase != PhaseCompleted {
			t.Errorf("ended %s %q", s.Phase, s.Reason)
		}
		settle := s.Reports[len(s.Reports)-1]
		if settle.Name != "settle" || settle.Attempts != maxRefusals ||
			!strings.Contains(settle.Outcome, "panic: records: deliver: nil pointer dereference") {
			t.Errorf("the report whose delivery panicked: %+v", settle)
		}
		want := []string{"status@queued", "status@preparing", "status@running", "status@completed"}
		if diff := cmp.Diff(want, f.recs.list()); diff != "" {
			t.Errorf("reports delivered (-want +got):\n%s", diff)
		}
		recs.mu.Lock()
		calls := recs.calls
		recs.mu.Unlock()
		if calls == 0 {
			t.Error("Progress was never called: the test proves nothing")
		}
		if !strings.Contains(string(logs.bytes()), "index out of range [3] with length 3") {
			t.Error("the panic in Progress is not in the log")
		}
	})
}
