//go:build integration

package engine

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

// labHooks prepares the destination the way pre_live_migration would (the
// local disk pre-created, same format and size) and undoes it when a phase
// owes a rollback; every other report is logged.
type labHooks struct {
	t  *testing.T
	g  *lab.Guest
	to *lab.Host

	mu       sync.Mutex
	finishes int
	samples  []time.Time // when Progress was called
}

func (h *labHooks) Prepare(ctx context.Context, m migration.Migration) (migration.Preparation, error) {
	return migration.Preparation{MigrationAddr: h.to.Mig.String(), Copy: virt.CopyFull, CopyNote: "full: lab"},
		theLab.PrecreateDisk(ctx, h.to, h.g)
}

func (h *labHooks) Reports(m migration.Migration, from, to migration.Phase) []string {
	switch to {
	case migration.PhaseCompleted:
		return []string{"finish"}
	case migration.PhaseFailed, migration.PhaseCancelled:
		return []string{"rollback"}
	}
	return []string{"phase"}
}

func (h *labHooks) Deliver(_ context.Context, m migration.Migration, r migration.Report) error {
	h.t.Logf("report %s: phase %s %s", r.Name, r.Phase, r.Reason)
	switch r.Name {
	case "finish":
		h.mu.Lock()
		h.finishes++
		h.mu.Unlock()
	case "rollback":
		os.Remove(h.to.Path(h.g.LocalDisk))
	}
	return nil
}

func (h *labHooks) Progress(_ context.Context, m migration.Migration, js virt.JobStats) error {
	h.mu.Lock()
	h.samples = append(h.samples, time.Now())
	h.mu.Unlock()
	h.t.Logf("progress: iteration %d memory %d/%d MiB remaining %d MiB disk %d/%d MiB %.1f MiB/s",
		js.MemIteration, js.MemProcessed>>20, js.MemTotal>>20, js.MemRemaining>>20, js.DiskProcessed>>20, js.DiskTotal>>20,
		float64(js.MemBps)/(1<<20))
	return nil
}

func dial(ctx context.Context, uri string) (migration.Hypervisor, error) {
	return virt.Dial(ctx, uri, virt.Timeouts{})
}

type run struct {
	g        *lab.Guest
	from, to *lab.Host
	m        *migration.Manager
	hooks    *labHooks
	id       string
	stop     func()
	srcOff   int64
	dstOff   int64
}

// start begins a migration of the package's guest through the engine.
func start(t *testing.T, policy migration.Policy, bandwidth uint64, stateDir string) *run {
	t.Helper()
	return startGuest(t, guest(t), policy, bandwidth, stateDir)
}

// startGuest begins a migration of g through the engine.
func startGuest(t *testing.T, g *lab.Guest, policy migration.Policy, bandwidth uint64, stateDir string) *run {
	t.Helper()
	ctx := context.Background()
	from, to := where(t, g)
	r := &run{g: g, from: from, to: to, hooks: &labHooks{t: t, g: g, to: to}, id: fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano())}
	r.id = strings.NewReplacer("/", "-", " ", "-").Replace(r.id)
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	r.m = newManager(t, stateDir, from, r.hooks)
	r.stop = runManager(r.m)
	t.Cleanup(func() { r.stop() })

	c, err := from.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	xml, err := c.DomainXML(ctx, g.Spec.Name, false)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	all, err := virt.ParseDisks(xml)
	if err != nil {
		t.Fatal(err)
	}
	sel := disks.Select(all, []disks.Volume{{ID: g.LoopSerial}, {ID: g.NBDSerial}}, nil)
	r.srcOff, r.dstOff = g.LogOffset(from), g.LogOffset(to)
	if policy.AutoConverge {
		policy.AutoConvergeInitial, policy.AutoConvergeIncrement = 60, 20
	}
	req := migration.Request{ID: r.id, InstanceUUID: g.UUID, Dest: hostnet.Dest{Host: to.Hostname, Mgmt: to.Mgmt.String()},
		DestCheckURI: to.URI(), Policy: policy, Job: migration.Job{Disks: sel.Copy, Bandwidth: bandwidth}}
	if _, err := r.m.Start(ctx, req); err != nil {
		t.Fatal(err)
	}
	t.Logf("migrating %s from %s to %s (migrate_disks %v, cap %d MiB/s)", g.Spec.Name, from.Name, to.Name, sel.Copy, bandwidth)
	return r
}

func newManager(t *testing.T, dir string, from *lab.Host, hooks *labHooks) *migration.Manager {
	l := logrus.New()
	l.SetOutput(logWriter{t})
	m, err := migration.NewManager(migration.Options{StateDir: dir, LocalURI: from.URI(), Dial: dial, Destination: hooks, Records: hooks,
		Log: logrus.NewEntry(l), PostcopyRecovery: 45 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func runManager(m *migration.Manager) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	time.Sleep(50 * time.Millisecond)
	return func() { cancel(); <-done }
}

// wait waits for the migration to end and its reports to be delivered.
func (r *run) wait(t *testing.T, timeout time.Duration) migration.Migration {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if s, _ := r.m.Status(r.id); s.Phase.Terminal() && s.Pending() == 0 {
			t.Logf("ended %s (%s): total %v downtime %v memory %d MiB disk %d MiB iterations %d B %.1f MiB/s F %.1f MiB stalls %d",
				s.Phase, s.Reason, s.Record.Total, s.Record.Downtime, s.Record.MemBytes>>20, s.Record.DiskBytes>>20,
				s.Record.Iterations, s.Record.Bandwidth/(1<<20), float64(s.Record.Floor)/(1<<20), s.Record.Stalls)
			for _, a := range s.Record.Actions {
				t.Logf("  action at %v: %s %v %s", a.At.Round(100*time.Millisecond), a.Action, a.Downtime, a.Reason)
			}
			return s
		}
		time.Sleep(200 * time.Millisecond)
	}
	s, _ := r.m.Status(r.id)
	t.Fatalf("migration still %s after %s", s.Phase, timeout)
	return s
}

// moved checks that the guest runs on the destination with its heartbeat
// continuous and the same boot id, and nothing on the source.
func (r *run) moved(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	g := r.g
	src, err := g.Heartbeats(r.from)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := theLab.BeatsAfter(ctx, r.to, g, r.dstOff, 20, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.Continuity(src, dst); err != nil {
		t.Errorf("heartbeat: %v", err)
	}
	if c, err := r.from.Dial(ctx); err == nil {
		if _, err := c.DomainState(ctx, g.UUID); err == nil {
			t.Error("the source still has the domain")
		}
		c.Close()
	}
}

// stayed checks that the guest still runs on the source, heartbeat going,
// and that the destination has no domain.
func (r *run) stayed(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	g := r.g
	before, _ := g.Heartbeats(r.from)
	off := g.LogOffset(r.from)
	after, err := theLab.BeatsAfter(ctx, r.from, g, off, 20, time.Minute)
	if err != nil {
		t.Fatalf("source heartbeat: %v", err)
	}
	if len(before) == 0 || after[0].Boot != before[len(before)-1].Boot {
		t.Errorf("the guest rebooted on the source")
	}
	c, err := r.to.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st, err := c.DomainState(ctx, g.UUID); err == nil {
		t.Errorf("the destination still has the domain (%v)", st.State)
	}
}

func actions(s migration.Migration) []string {
	var a []string
	for _, x := range s.Record.Actions {
		a = append(a, x.Action)
	}
	return a
}

func dirty(t *testing.T, ws, rate int) {
	t.Helper()
	g := guest(t)
	from, _ := where(t, g)
	if err := theLab.SetDirty(context.Background(), from, g, ws, rate); err != nil {
		t.Fatal(err)
	}
}
