package migration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/pkg/virt/virttest"
)

var _ Hypervisor = (*virt.Conn)(nil) // the real one fits the seam

// Guests of the fake world: instance uuids are the domains' names there.
const (
	vm1 = "6a3e0000-0000-4000-8000-000000000001"
	vm2 = "6a3e0000-0000-4000-8000-000000000002"
	vm3 = "6a3e0000-0000-4000-8000-000000000003"
)

// fakeDest is the destination's side: Prepare answers with the migration
// address, or fails, or waits.
type fakeDest struct {
	mu       sync.Mutex
	calls    int
	err      error
	wait     chan struct{} // when set, Prepare waits for it
	panicMsg string
	before   func() // runs inside Prepare
}

func (d *fakeDest) Prepare(ctx context.Context, m Migration) (Preparation, error) {
	d.mu.Lock()
	d.calls++
	wait, err, before, p := d.wait, d.err, d.before, d.panicMsg
	d.mu.Unlock()
	if before != nil {
		before()
	}
	if p != "" {
		panic(p)
	}
	if wait != nil {
		<-wait
	}
	return Preparation{MigrationAddr: "198.19.0.12", Copy: virt.CopyFull, CopyNote: "full: test", State: []byte(`{"prepared":true}`)}, err
}

// fakeRecords records the reports delivered, in order. Each phase owes a
// "status" report; a terminal one also "settle".
type fakeRecords struct {
	mu        sync.Mutex
	delivered []string // name@phase
	asked     []string // from→to
	progress  int
	deliver   func(ctx context.Context, r Report) error // optional
	slow      time.Duration                             // every call takes this long
}

func (f *fakeRecords) Reports(m Migration, from, to Phase) []string {
	f.mu.Lock()
	f.asked = append(f.asked, fmt.Sprintf("%s→%s", from, to))
	f.mu.Unlock()
	if to.Terminal() {
		return []string{"status", "settle"}
	}
	return []string{"status"}
}

func (f *fakeRecords) Deliver(ctx context.Context, m Migration, r Report) error {
	f.mu.Lock()
	slow, deliver := f.slow, f.deliver
	f.mu.Unlock()
	if slow > 0 {
		select {
		case <-time.After(slow):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if deliver != nil {
		if err := deliver(ctx, r); err != nil {
			return err
		}
	}
	f.mu.Lock()
	f.delivered = append(f.delivered, r.Name+"@"+string(r.Phase))
	f.mu.Unlock()
	return nil
}

func (f *fakeRecords) Progress(ctx context.Context, m Migration, js virt.JobStats) error {
	f.mu.Lock()
	slow := f.slow
	f.progress++
	f.mu.Unlock()
	if slow > 0 {
		select {
		case <-time.After(slow):
		case <-ctx.Done():
		}
	}
	return nil
}

func (f *fakeRecords) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.delivered...)
}

type fixture struct {
	w    *virttest.World
	dest *fakeDest
	recs *fakeRecords
	dir  string
	obs  Observer                                                  // nil for none
	log  io.Writer                                                 // nil: the test's log
	rec  Records                                                   // nil: recs
	cut  func(ctx context.Context, uuid, addr string) (int, error) // Options.CutStreams
}

func newFixture(t *testing.T) *fixture {
	w := virttest.NewWorld("src", "dst")
	w.Host("src").HostURI["qemu+tcp://198.18.0.12/system"] = "dst"
	w.Define("src", vm1)
	return &fixture{w: w, dest: &fakeDest{}, recs: &fakeRecords{}, dir: t.TempDir()}
}

func (f *fixture) manager(t *testing.T) *Manager {
	l := logrus.New()
	l.SetOutput(testWriter{t})
	if f.log != nil {
		l.SetOutput(io.MultiWriter(testWriter{t}, f.log))
	}
	var recs Records = f.recs
	if f.rec != nil {
		recs = f.rec
	}
	m, err := NewManager(Options{StateDir: f.dir, LocalURI: "src", Destination: f.dest, Records: recs, Log: logrus.NewEntry(l),
		Dial: func(ctx context.Context, uri string) (Hypervisor, error) { return f.w.Dial(ctx, uri) }, Observer: f.obs,
		CutStreams: f.cut})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func req(id, vm string, p Policy) Request {
	return Request{ID: id, InstanceUUID: vm, Dest: hostnet.Dest{Host: "dst", Mgmt: "198.18.0.12"}, DestCheckURI: "dst",
		Policy: p, Job: Job{Disks: []string{"vda"}}, State: []byte(`{"nova":"objects"}`)}
}

// running makes the fixture's manager and runs it until the test ends.
func (f *fixture) running(t *testing.T) *Manager {
	m := f.manager(t)
	t.Cleanup(runManager(m))
	synctest.Wait()
	return m
}

// runManager runs m until the returned stop is called.
func runManager(m *Manager) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

func start(t *testing.T, m *Manager, r Request) {
	t.Helper()
	if _, err := m.Start(context.Background(), r); err != nil {
		t.Fatal(err)
	}
}

func waitPhase(t *testing.T, m *Manager, id string, want Phase) Migration {
	t.Helper()
	for i := 0; i < 100000; i++ {
		if s, _ := m.Status(id); s.Phase == want {
			return s
		} else if s.Phase.Terminal() {
			t.Fatalf("migration %s ended %s (%s), want %s", id, s.Phase, s.Reason, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("migration %s never reached %s", id, want)
	return Migration{}
}

// waitDelivered waits until migration id owes no report.
func waitDelivered(t *testing.T, m *Manager, id string) Migration {
	t.Helper()
	for i := 0; i < 100000; i++ {
		if s, _ := m.Status(id); s.Phase.Terminal() && s.Pending() == 0 {
			return s
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("migration %s still owes reports", id)
	return Migration{}
}

func actions(s Migration) string {
	var acts []string
	for _, a := range s.Record.Actions {
		acts = append(acts, a.Action)
	}
	return strings.Join(acts, ",")
}

func TestManagerHappyPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		m := f.running(t)
		start(t, m, req("m1", vm1, Policy{}))
		s := waitDelivered(t, m, "m1")
		if s.Phase != PhaseCompleted {
			t.Fatalf("ended %s: %s", s.Phase, s.Reason)
		}
		want := []string{"status@queued", "status@preparing", "status@running", "status@completed", "settle@completed"}
		if diff := cmp.Diff(want, f.recs.list()); diff != "" {
			t.Errorf("reports (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"→queued", "queued→preparing", "preparing→running", "running→completed"}, f.recs.asked); diff != "" {
			t.Errorf("phase moves asked about (-want +got):\n%s", diff)
		}
		if st, ok := f.w.State("dst", vm1); !ok || st.State != virt.StateRunning {
			t.Errorf("destination domain = %+v %v", st, ok)
		}
		if _, ok := f.w.State("src", vm1); ok {
			t.Error("source domain still defined")
		}
		if s.Record.Downtime == 0 || s.Record.MemBytes == 0 || s.Record.Total == 0 || s.Record.Bandwidth <= 0 || len(s.Record.Actions) == 0 {
			t.Errorf("record = %+v", s.Record)
		}
		// The series of the picture: the samples in order, with the max
		// downtime the policy had set at each.
		pts := s.Record.Series
		if len(pts) == 0 || pts[0].MaxDowntime == 0 || pts[0].Bps == 0 {
			t.Errorf("series = %+v", pts)
		}
		for i := 1; i < len(pts); i++ {
			if pts[i].At <= pts[i-1].At {
				t.Errorf("series out of order at %d: %+v", i, pts)
			}
		}
		if string(s.State) != `{"prepared":true}` || s.Prep == nil || s.Prep.CopyNote != "full: test" {
			t.Errorf("state %s, preparation %+v: what Prepare returned is not journalled", s.State, s.Prep)
		}
		spec := f.w.Calls()[0].Spec
		wantSpec := virt.MigrateSpec{DestURI: "qemu+tcp://198.18.0.12/system", MigrateURI: "tcp://198.19.0.12",
			DisksURI: "tcp://198.19.0.12", Disks: []string{"vda"}, Copy: virt.CopyFull, PersistDest: true}
		if diff := cmp.Diff(wantSpec, spec); diff != "" {
			t.Errorf("job spec (-want +got):\n%s", diff)
		}
		// A second Start of the same id starts nothing.
		if _, err := m.Start(context.Background(), req("m1", vm1, Policy{})); !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("duplicate start = %v, want ErrConflict", err)
		}
	})
}

func TestManagerStartRefusesBadRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		m := f.running(t)
		for name, r := range map[string]Request{
			"instance ../victim": req("a", "../victim", Policy{}),
			"instance empty":     req("b", "", Policy{}),
			"id with a slash":    req("x/y", vm1, Policy{}),
			"no destination":     {ID: "c", InstanceUUID: vm1},
		} {
			if _, err := m.Start(context.Background(), r); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%s: Start = %v, want ErrInvalidArgument", name, err)
			}
		}
		if ents, _ := os.ReadDir(filepath.Join(f.dir, "migrations")); len(ents) != 0 {
			t.Errorf("journal entries written for refused requests: %v", ents)
		}
	})
}

// A migration refused before it is queued owes its reports like any other.
func TestManagerRefuse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		m := f.running(t)
		if _, err := m.Refuse(context.Background(), req("r1", vm2, Policy{}), "instance not found on this host"); err != nil {
			t.Fatal(err)
		}
		s := waitDelivered(t, m, "r1")
		if s.Phase != PhaseError || s.Reason != "instance not found on this host" {
			t.Errorf("refused migration: %s %q", s.Phase, s.Reason)
		}
		if diff := cmp.Diff([]string{"status@error", "settle@error"}, f.recs.list()); diff != "" {
			t.Errorf("reports (-want +got):\n%s", diff)
		}
		if len(f.w.Ops()) != 0 {
			t.Errorf("libvirt touched: %v", f.w.Ops())
		}
	})
}

func TestManagerAbortWhileQueued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Define("src", vm2)
		f.dest.wait = make(chan struct{})
		m := f.running(t)
		start(t, m, req("first", vm1, Policy{}))
		start(t, m, req("second", vm2, Policy{}))
		synctest.Wait()
		if s, _ := m.Status("second"); s.Phase != PhaseQueued {
			t.Fatalf("second = %s, want queued behind the first (one outbound slot)", s.Phase)
		}
		if err := m.Abort(context.Background(), "second"); err != nil {
			t.Fatal(err)
		}
		s := waitPhase(t, m, "second", PhaseCancelled)
		if s.Reason != "aborted while queued" {
			t.Errorf("reason %q", s.Reason)
		}
		for _, c := range f.w.Calls() {
			if c.Dom == vm2 {
				t.Errorf("libvirt touched for the queued migration: %+v", c)
			}
		}
		close(f.dest.wait)
		waitPhase(t, m, "first", PhaseCompleted)
	})
}

func TestManagerAbortRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}
		m := f.running(t)
		start(t, m, req("m", vm1, Policy{}))
		waitPhase(t, m, "m", PhaseRunning)
		time.Sleep(3 * time.Second)
		if err := m.Abort(context.Background(), "m"); err != nil {
			t.Fatal(err)
		}
		s := waitDelivered(t, m, "m")
		if s.Phase != PhaseCancelled || s.Reason != "aborted by the operator" {
			t.Errorf("ended %s %q", s.Phase, s.Reason)
		}
		if st, ok := f.w.State("src", vm1); !ok || st.State != virt.StateRunning {
			t.Errorf("source = %+v %v, want running", st, ok)
		}
		if _, ok := f.w.State("dst", vm1); ok {
			t.Error("a domain was left on the destination")
		}
		if got := f.recs.list(); got[len(got)-1] != "settle@cancelled" {
			t.Errorf("reports %v", got)
		}
	})
}

func TestManagerPolicyAbortAndForceComplete(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}
		m := f.running(t)
		start(t, m, req("hopeless", vm1, Policy{}))
		s := waitPhase(t, m, "hopeless", PhaseFailed)
		if !strings.Contains(s.Reason, "pre-copy does not converge") || s.Record.Total > 60*time.Second {
			t.Errorf("failed after %v: %q", s.Record.Total, s.Reason)
		}

		f.w.Define("src", vm3)
		start(t, m, req("forced", vm3, Policy{}))
		waitPhase(t, m, "forced", PhaseRunning)
		time.Sleep(2 * time.Second)
		if err := m.ForceComplete(context.Background(), "forced"); err != nil {
			t.Fatal(err)
		}
		s = waitPhase(t, m, "forced", PhaseCompleted)
		if !strings.Contains(actions(s), "pause") {
			t.Errorf("actions %v, want a pause (post-copy not permitted)", actions(s))
		}
	})
}

// Closing the engine detaches; a new engine on the same state directory
// re-attaches, the migration completes, and each report is delivered once.
func TestManagerDetachReattach(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 512, BandwidthMiBps: 50}
		m := f.manager(t)
		stop := runManager(m)
		synctest.Wait()
		start(t, m, req("m", vm1, Policy{}))
		waitPhase(t, m, "m", PhaseRunning)
		time.Sleep(3 * time.Second)
		stop()
		if s, _ := m.Status("m"); !s.Detached || s.Phase != PhaseRunning {
			t.Fatalf("after close: %+v", s)
		}
		for _, op := range f.w.Ops() {
			if op == "abort" {
				t.Fatal("closing the engine aborted the job")
			}
		}
		f.recs.mu.Lock()
		saved := f.recs.progress
		f.recs.mu.Unlock()
		m2 := f.manager(t)
		stop2 := runManager(m2)
		defer stop2()
		// The cast redelivered after the crash (at-least-once; the
		// broker's dedup is in memory and gone): the journal knows it, so
		// it starts nothing.
		synctest.Wait()
		if _, err := m2.Start(context.Background(), req("m", vm1, Policy{})); !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("the redelivered start = %v, want ErrConflict", err)
		}
		s := waitDelivered(t, m2, "m")
		if s.Phase != PhaseCompleted || s.Record.Attaches != 1 {
			t.Errorf("phase %s, attaches = %d", s.Phase, s.Record.Attaches)
		}
		// The re-attached job's progress reaches the records too (nothing
		// was owed at the restart, so no delivery loop ran for it).
		f.recs.mu.Lock()
		after := f.recs.progress
		f.recs.mu.Unlock()
		if after <= saved {
			t.Errorf("progress saves: %d before the restart, %d after: the re-attached job saved none", saved, after)
		}
		want := []string{"status@queued", "status@preparing", "status@running", "status@completed", "settle@completed"}
		if diff := cmp.Diff(want, f.recs.list()); diff != "" {
			t.Errorf("reports over both engines (-want +got):\n%s", diff)
		}
		migrates := 0
		for _, op := range f.w.Ops() {
			if op == "migrate" {
				migrates++
			}
		}
		if migrates != 1 {
			t.Errorf("%d Perform calls, want one", migrates)
		}
	})
}

// Reports that cannot be delivered (the broker is down) are retried, kept
// in the journal across a restart, and delivered in order once it is back;
// the migration itself never waits for them.
func TestManagerReportsOutliveOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		var mu sync.Mutex
		down := true
		f.recs.deliver = func(ctx context.Context, r Report) error {
			mu.Lock()
			defer mu.Unlock()
			if down {
				return fmt.Errorf("conductor: %w: broker unreachable", errdefs.ErrUnavailable)
			}
			return nil
		}
		m := f.manager(t)
		stop := runManager(m)
		synctest.Wait()
		start(t, m, req("m", vm1, Policy{}))
		s := waitPhase(t, m, "m", PhaseCompleted)
		if s.Pending() != 5 {
			t.Errorf("owed %d reports with the broker down, want 5: %+v", s.Pending(), s.Reports)
		}
		if s.Reports[0].Attempts == 0 || !strings.Contains(s.Reports[0].LastError, "broker unreachable") {
			t.Errorf("first report %+v: no failed attempt journalled", s.Reports[0])
		}
		stop() // ferryd stops (or is killed) before the broker is back
		mu.Lock()
		down = false
		mu.Unlock()
		m2 := f.manager(t)
		stop2 := runManager(m2)
		defer stop2()
		s = waitDelivered(t, m2, "m")
		want := []string{"status@queued", "status@preparing", "status@running", "status@completed", "settle@completed"}
		if diff := cmp.Diff(want, f.recs.list()); diff != "" {
			t.Errorf("reports after the outage (-want +got):\n%s", diff)
		}
		for _, r := range s.Reports {
			if !r.Delivered || r.Outcome != "delivered" {
				t.Errorf("report %+v", r)
			}
		}
	})
}

// A report the records answer with ErrSkipped is not re-sent.
func TestManagerSupersededReport(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.recs.deliver = func(ctx context.Context, r Report) error {
			if r.Name == "settle" {
				return fmt.Errorf("%w: status is already error (set by nova-compute)", ErrSkipped)
			}
			return nil
		}
		m := f.running(t)
		start(t, m, req("m", vm1, Policy{}))
		s := waitDelivered(t, m, "m")
		last := s.Reports[len(s.Reports)-1]
		if last.Attempts != 1 || !strings.Contains(last.Outcome, "set by nova-compute") {
			t.Errorf("superseded report %+v", last)
		}
	})
}

// A conductor that takes a minute per save delays neither an operator's
// abort nor a policy action by more than one sampling interval.
func TestManagerSlowRecordsDoNotDelayTheMonitor(t *testing.T) {
	run := func(t *testing.T, slow time.Duration) (abortAfter time.Duration, acts []ActionRecord) {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t)
			f.recs.slow = slow
			f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}
			m := f.manager(t)
			stop := runManager(m)
			defer stop()
			synctest.Wait()
			start(t, m, req("m", vm1, Policy{}))
			waitPhase(t, m, "m", PhaseRunning)
			time.Sleep(12 * time.Second) // progress saves are due every 5s
			t0 := time.Now()
			if err := m.Abort(context.Background(), "m"); err != nil {
				t.Fatal(err)
			}
			abortAfter = time.Since(t0)
			s := waitPhase(t, m, "m", PhaseCancelled)
			acts = s.Record.Actions
		})
		return abortAfter, acts
	}
	fastAbort, fastActs := run(t, 0)
	slowAbort, slowActs := run(t, time.Minute)
	const interval = 500 * time.Millisecond
	if slowAbort > interval {
		t.Errorf("abort took %v with a slow conductor (%v with a fast one), want ≤ %v", slowAbort, fastAbort, interval)
	}
	if len(slowActs) != len(fastActs) {
		t.Fatalf("actions with a slow conductor %v, with a fast one %v", slowActs, fastActs)
	}
	for i := range slowActs {
		if d := slowActs[i].At - fastActs[i].At; d > interval || d < -interval {
			t.Errorf("action %s at %v with a slow conductor, %v with a fast one", slowActs[i].Action, slowActs[i].At, fastActs[i].At)
		}
	}
}

func TestManagerPrepareFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.dest.err = fmt.Errorf("destination disk: no space")
		m := f.running(t)
		start(t, m, req("m", vm1, Policy{}))
		s := waitPhase(t, m, "m", PhaseFailed)
		if !strings.Contains(s.Reason, "no space") || len(f.w.Ops()) != 0 {
			t.Errorf("reason %q, ops %v", s.Reason, f.w.Ops())
		}
	})
}

// A panic in the caller's Prepare fails the migration instead of the engine.
func TestManagerPreparePanics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.dest.panicMsg = "nil map"
		m := f.running(t)
		start(t, m, req("m", vm1, Policy{}))
		s := waitPhase(t, m, "m", PhaseFailed)
		if !strings.Contains(s.Reason, "panic: nil map") {
			t.Errorf("reason %q", s.Reason)
		}
		if len(f.w.Ops()) != 0 { // failed, not error: the guest was not touched
			t.Errorf("libvirt touched: %v", f.w.Ops())
		}
	})
}

// When the journal cannot record that the job starts, no job starts.
func TestManagerJournalFailureStopsBeforeTheJob(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		dir := filepath.Join(f.dir, "migrations")
		f.dest.before = func() { // the state directory breaks while the destination prepares
			if err := os.Rename(dir, dir+".gone"); err != nil {
				t.Error(err)
			}
			if err := os.WriteFile(dir, nil, 0o600); err != nil {
				t.Error(err)
			}
		}
		m := f.running(t)
		start(t, m, req("m", vm1, Policy{}))
		s := waitPhase(t, m, "m", PhaseFailed)
		if !strings.Contains(s.Reason, "journal cannot record the job's start") {
			t.Errorf("reason %q", s.Reason)
		}
		if len(f.w.Ops()) != 0 {
			t.Errorf("libvirt was asked to migrate anyway: %v", f.w.Ops())
		}
		if st, _ := f.w.State("src", vm1); st.State != virt.StateRunning {
			t.Errorf("source %+v", st)
		}
	})
}

// Only the write of the job-started step fails, at each of its steps: the
// job is not started, the migration fails saying why, and the journal holds
// no job-started a restarted engine would re-attach to. A failed directory
// sync counts: the entry was renamed, but a crash may still lose it.
func TestManagerJobStartedWriteFails(t *testing.T) {
	for _, op := range []string{"write", "sync", "rename", "sync-dir"} {
		t.Run(op, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFixture(t)
				m := f.manager(t)
				m.j.fs = &recordFS{fail: failAt(op, `"job-started"`)}
				t.Cleanup(runManager(m))
				synctest.Wait()
				start(t, m, req("m", vm1, Policy{}))
				s := waitDelivered(t, m, "m")
				if s.Phase != PhaseFailed || !strings.Contains(s.Reason, "journal cannot record the job's start") ||
					!strings.Contains(s.Reason, "injected "+op+" failure") {
					t.Errorf("ended %s %q", s.Phase, s.Reason)
				}
				if len(f.w.Ops()) != 0 {
					t.Errorf("libvirt was asked to migrate anyway: %v", f.w.Ops())
				}
				j, err := ReadEntry(f.dir, "m")
				if err != nil || j.Phase != PhaseFailed || j.done("job-started") {
					t.Errorf("journal: %s, steps %v, %v", j.Phase, j.Steps, err)
				}
			})
		})
	}
}

func TestManagerStallAbort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		var down bool
		var mu sync.Mutex
		f.w.Job = virttest.Job{RAMMiB: 512, BandwidthMiBps: 50, LinkDown: func() bool { mu.Lock(); defer mu.Unlock(); return down }}
		m := f.running(t)
		start(t, m, req("m", vm1, Policy{}))
		waitPhase(t, m, "m", PhaseRunning)
		time.Sleep(2 * time.Second)
		mu.Lock()
		down = true
		mu.Unlock()
		s := waitPhase(t, m, "m", PhaseFailed)
		if !strings.HasPrefix(s.Reason, "transport stall: no bytes for 3") || s.Record.Stalls != 1 {
			t.Errorf("reason %q, stalls %d", s.Reason, s.Record.Stalls)
		}
	})
}

// postcopyMigration runs migration "m" of a guest dirtying faster than the
// link, with post-copy permitted, until it has switched to post-copy. link
// cuts (true) and restores (false) the migration link; hang makes the fake
// hang its Perform call once post-copy fails. The manager stops when the
// test ends.
func postcopyMigration(t *testing.T, f *fixture, hang bool) (m *Manager, link func(down bool)) {
	var mu sync.Mutex
	down := false
	f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50, HangOnPostcopyFailure: hang,
		LinkDown: func() bool { mu.Lock(); defer mu.Unlock(); return down }}
	m = f.manager(t)
	t.Cleanup(runManager(m))
	synctest.Wait()
	start(t, m, req("m", vm1, Policy{PostCopy: true}))
	waitPhase(t, m, "m", PhasePostCopy)
	return m, func(d bool) { mu.Lock(); down = d; mu.Unlock() }
}

// The link fails after the switch to post-copy: the engine pauses the
// stalled stream and resumes it once the link is back.
func TestManagerPostcopyRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		m, link := postcopyMigration(t, f, false)
		link(true)
		time.Sleep(8 * time.Second)
		if st, _ := f.w.State("src", vm1); st.Reason != virt.ReasonPausedPostcopyFailed {
			t.Errorf("source = %+v, want paused (post-copy failed)", st)
		}
		link(false)
		s := waitPhase(t, m, "m", PhaseCompleted)
		for _, want := range []string{"post-copy", "post-copy-pause", "post-copy-resume"} {
			if !strings.Contains(actions(s), want) {
				t.Errorf("actions %v lack %s", actions(s), want)
			}
		}
		if st, ok := f.w.State("dst", vm1); !ok || st.State != virt.StateRunning {
			t.Errorf("destination = %+v", st)
		}
		var resume *virttest.Call
		for _, c := range f.w.Calls() {
			if c.Op == "migrate" && c.Spec.PostcopyResume {
				resume = &c
			}
		}
		if resume == nil || resume.Spec.Copy != virt.CopyNone || len(resume.Spec.Disks) != 0 || resume.Spec.MigrateURI != "tcp://198.19.0.12" {
			t.Errorf("resume spec %+v: want the job's URIs, RAM only", resume)
		}
	})
}

// libvirt 9.0 can leave the Perform call hanging after post-copy failed,
// with stale job statistics and every resume refused. The migration still
// ends: after PostcopyHang the engine stops waiting on the call, tries to
// resume for PostcopyRecovery, and ends in error saying the guest's memory
// is split, without resuming the stale source.
func TestManagerPostcopyHang(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		m, link := postcopyMigration(t, f, true)
		link(true)
		time.Sleep(10 * time.Second)
		link(false) // the link is back, but the hung call holds the job
		start := time.Now()
		s := waitPhase(t, m, "m", PhaseError)
		if took := time.Since(start); took > 7*time.Minute {
			t.Errorf("ended %v after the link came back, want within PostcopyHang + PostcopyRecovery", took)
		}
		if !strings.Contains(s.Reason, "could not be resumed within 5m0s") {
			t.Errorf("reason %q", s.Reason)
		}
		refused := 0
		for _, a := range s.Record.Actions {
			if a.Action == "post-copy-resume" && strings.Contains(a.Reason, "actively monitored by another thread") {
				refused++
			}
		}
		if refused == 0 {
			t.Errorf("no refused resume attempt recorded: %+v", s.Record.Actions)
		}
		if st, _ := f.w.State("src", vm1); st.State != virt.StatePaused {
			t.Errorf("the stale source was resumed: %+v", st)
		}
	})
}

// A report the records refuse outright (not an outage) is given up after a
// few tries, and the reports after it are delivered.
func TestManagerRefusedReportGivenUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.recs.deliver = func(ctx context.Context, r Report) error {
			if r.Name == "status" && r.Phase == PhaseQueued {
				return fmt.Errorf("conductor: MigrationNotFound: %w", errdefs.ErrNotFound)
			}
			return nil
		}
		m := f.running(t)
		start(t, m, req("m", vm1, Policy{}))
		s := waitDelivered(t, m, "m")
		first := s.Reports[0]
		if first.Attempts != maxRefusals || !strings.HasPrefix(first.Outcome, "given up after 5 refusals") {
			t.Errorf("refused report %+v", first)
		}
		want := []string{"status@preparing", "status@running", "status@completed", "settle@completed"}
		if diff := cmp.Diff(want, f.recs.list()); diff != "" {
			t.Errorf("reports after it (-want +got):\n%s", diff)
		}
	})
}

// enderRecords are records with another writer (companion mode's
// nova-compute): Ended says how it ended a job, if it did.
type enderRecords struct {
	*fakeRecords
	ended func() (Phase, string, bool)
}

func (e enderRecords) EndedElsewhere(context.Context, Migration, error) (Phase, string, bool) {
	return e.ended()
}

// A job aborted by someone other than ferry (nova-compute's restart
// recovery aborts the domain's job and sets Nova's record to error): the
// engine takes the outcome the records show and marks it external, so
// nothing is reported over it. With no such outcome it is ferry's failure.
func TestManagerEndedElsewhere(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ended      bool
		wantPhase  Phase
		wantExtern bool
	}{
		{"the records ended it", true, PhaseError, true},
		{"nobody says so", false, PhaseFailed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFixture(t)
				f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}
				l := logrus.New()
				l.SetOutput(testWriter{t})
				recs := enderRecords{f.recs, func() (Phase, string, bool) { return PhaseError, "nova-compute reset it", tc.ended }}
				m, err := NewManager(Options{StateDir: f.dir, LocalURI: "src", Destination: f.dest, Records: recs, Log: logrus.NewEntry(l),
					Dial: func(ctx context.Context, uri string) (Hypervisor, error) { return f.w.Dial(ctx, uri) }})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(runManager(m))
				synctest.Wait()
				start(t, m, req("m", vm1, Policy{}))
				waitPhase(t, m, "m", PhaseRunning)
				time.Sleep(2 * time.Second)
				other, err := f.w.Dial(context.Background(), "src") // not the engine: nova-compute's own libvirt connection
				if err != nil {
					t.Fatal(err)
				}
				if err := other.Control(context.Background(), vm1, virt.Control{Op: virt.OpAbort}); err != nil {
					t.Fatal(err)
				}
				other.Close()
				s := waitDelivered(t, m, "m")
				if s.Phase != tc.wantPhase || s.External != tc.wantExtern || s.AbortRequested {
					t.Errorf("ended %s (external %v, abort requested %v) %q", s.Phase, s.External, s.AbortRequested, s.Reason)
				}
				if tc.ended && s.Reason != "nova-compute reset it" {
					t.Errorf("reason %q", s.Reason)
				}
			})
		})
	}
}

// commandRecords owe reports for the operator's commands too (Commander).
type commandRecords struct{ *fakeRecords }

func (c commandRecords) CommandReports(m Migration, command string) []string {
	return []string{command + "-start", command + "-end"}
}

// An operator's abort that took effect journals its own reports at once,
// before those of the cancellation it causes, and they are delivered in
// that order.
func TestManagerCommandReports(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}
		l := logrus.New()
		l.SetOutput(testWriter{t})
		m, err := NewManager(Options{StateDir: f.dir, LocalURI: "src", Destination: f.dest, Records: commandRecords{f.recs},
			Log: logrus.NewEntry(l), Dial: func(ctx context.Context, uri string) (Hypervisor, error) { return f.w.Dial(ctx, uri) }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(runManager(m))
		synctest.Wait()
		start(t, m, req("m", vm1, Policy{}))
		waitPhase(t, m, "m", PhaseRunning)
		time.Sleep(3 * time.Second)
		if err := m.Abort(context.Background(), "m"); err != nil {
			t.Fatal(err)
		}
		waitDelivered(t, m, "m")
		want := []string{"status@queued", "status@preparing", "status@running", "abort-start@running", "abort-end@running",
			"status@cancelled", "settle@cancelled"}
		if diff := cmp.Diff(want, f.recs.list()); diff != "" {
			t.Errorf("reports (-want +got):\n%s", diff)
		}
	})
}

// A journal that cannot be written (a full state_dir) refuses a new
// migration before anything is started, and a refusal still reaches the
// records, from memory (issue 9, item 2: an early failure is never lost).
func TestManagerJournalUnwritableAtAdmission(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		m := f.running(t)
		// The journal's directory replaced by a file: every write fails,
		// as on a full disk (root ignores permission bits).
		jdir := filepath.Join(f.dir, "migrations")
		if err := os.RemoveAll(jdir); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(jdir, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Start(context.Background(), req("s1", vm1, Policy{})); err == nil {
			t.Error("a migration started without its journal entry")
		}
		if _, err := m.Refuse(context.Background(), req("r1", vm2, Policy{}), "qemu-img: no space left on device"); err != nil {
			t.Fatal(err)
		}
		s := waitDelivered(t, m, "r1")
		if s.Phase != PhaseError || s.Reason != "qemu-img: no space left on device" {
			t.Errorf("refusal: %s %q", s.Phase, s.Reason)
		}
		if diff := cmp.Diff([]string{"status@error", "settle@error"}, f.recs.list()); diff != "" {
			t.Errorf("reports (-want +got):\n%s", diff)
		}
		if len(f.w.Ops()) != 0 {
			t.Errorf("libvirt touched: %v", f.w.Ops())
		}
	})
}

// A job that ends before the monitor's first sample (an idle guest on a
// fast link) still gets a complete record, from the completed-job
// statistics (issue 9, item 8: TestIdleGuest's "record incomplete").
func TestManagerRecordOfAJobShorterThanASample(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 16, BandwidthMiBps: 4000}
		m := f.running(t)
		start(t, m, req("m", vm1, Policy{}))
		s := waitDelivered(t, m, "m")
		rec := s.Record
		if s.Phase != PhaseCompleted || rec.MemBytes == 0 || rec.Bandwidth <= 0 || rec.Floor == 0 || rec.Total <= 0 {
			t.Errorf("phase %s, record %+v: incomplete", s.Phase, rec)
		}
	})
}

// Another client's abort can end the job as a failure of another kind (the
// peer connection cut: libvirt's "Unable to write to socket: Broken pipe",
// seen on the stack after nova-compute's _reset_live_migration): the
// records are asked about that too, and their outcome taken.
func TestManagerEndedElsewhereOtherFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 512, BandwidthMiBps: 50,
			FailPerform: errors.New("operation failed: job 'migration out' failed: Unable to write to socket: Broken pipe")}
		l := logrus.New()
		l.SetOutput(testWriter{t})
		var asked error
		recs := enderRecords{f.recs, func() (Phase, string, bool) { return PhaseError, "nova-compute reset it", true }}
		m, err := NewManager(Options{StateDir: f.dir, LocalURI: "src", Destination: f.dest,
			Records: recordingEnder{recs, &asked}, Log: logrus.NewEntry(l),
			Dial: func(ctx context.Context, uri string) (Hypervisor, error) { return f.w.Dial(ctx, uri) }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(runManager(m))
		synctest.Wait()
		start(t, m, req("m", vm1, Policy{}))
		s := waitDelivered(t, m, "m")
		if s.Phase != PhaseError || !s.External || s.Reason != "nova-compute reset it" {
			t.Errorf("ended %s (external %v) %q, want Nova's outcome", s.Phase, s.External, s.Reason)
		}
		if asked == nil || !strings.Contains(asked.Error(), "Broken pipe") {
			t.Errorf("the records were asked with %v", asked)
		}
	})
}

// recordingEnder remembers the job error it was asked about.
type recordingEnder struct {
	enderRecords
	asked *error
}

func (r recordingEnder) EndedElsewhere(ctx context.Context, m Migration, jobErr error) (Phase, string, bool) {
	*r.asked = jobErr
	return r.enderRecords.EndedElsewhere(ctx, m, jobErr)
}
