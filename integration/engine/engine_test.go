//go:build integration

package engine

import (
	"context"
	"fmt"
	"os"
	"strings"
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
// local disk pre-created, same format and size) and undoes it on rollback.
type labHooks struct {
	t        *testing.T
	g        *lab.Guest
	to       *lab.Host
	finishes int
}

func (h *labHooks) Prepare(ctx context.Context, m *migration.Migration) error {
	return theLab.PrecreateDisk(ctx, h.to, h.g)
}
func (h *labHooks) Rollback(_ context.Context, m *migration.Migration, cause string) {
	os.Remove(h.to.Path(h.g.LocalDisk))
}
func (h *labHooks) Finish(context.Context, *migration.Migration) error { h.finishes++; return nil }
func (h *labHooks) Phase(_ context.Context, m *migration.Migration) {
	h.t.Logf("phase %s %s", m.Phase, m.Reason)
}
func (h *labHooks) Progress(_ context.Context, m *migration.Migration, js virt.JobStats) {
	h.t.Logf("progress: iteration %d memory %d/%d MiB remaining %d MiB disk %d/%d MiB %.1f MiB/s",
		js.MemIteration, js.MemProcessed>>20, js.MemTotal>>20, js.MemRemaining>>20, js.DiskProcessed>>20, js.DiskTotal>>20,
		float64(js.MemBps)/(1<<20))
}

func dial(ctx context.Context, uri string) (migration.Hypervisor, error) {
	return virt.Dial(ctx, uri, virt.Timeouts{})
}

type run struct {
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
	ctx := context.Background()
	g := guest(t)
	from, to := where(t, g)
	r := &run{from: from, to: to, hooks: &labHooks{t: t, g: g, to: to}, id: fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano())}
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
	uris, err := hostnet.For(hostnet.Dest{Host: to.Hostname, Mgmt: to.Mgmt.String(), Migration: to.Mig.String()}, false)
	if err != nil {
		t.Fatal(err)
	}
	r.srcOff, r.dstOff = g.LogOffset(from), g.LogOffset(to)
	req := migration.Request{ID: r.id, Domain: g.Spec.Name, InstanceUUID: g.UUID, DestHost: to.Hostname,
		DestCheckURI: to.URI(), Policy: policy,
		Spec: virt.MigrateSpec{DestURI: uris.Control, MigrateURI: uris.Migrate, DisksURI: uris.Disks,
			Disks: sel.Copy, Copy: virt.CopyFull, Bandwidth: bandwidth, AutoConvergeIni: ifAC(policy, 60), AutoConvergeInc: ifAC(policy, 20)}}
	if _, err := r.m.Start(ctx, req); err != nil {
		t.Fatal(err)
	}
	t.Logf("migrating %s from %s to %s (migrate_disks %v, cap %d MiB/s)", g.Spec.Name, from.Name, to.Name, sel.Copy, bandwidth)
	return r
}

func ifAC(p migration.Policy, v int) int {
	if p.AutoConverge {
		return v
	}
	return 0
}

func newManager(t *testing.T, dir string, from *lab.Host, hooks migration.Hooks) *migration.Manager {
	l := logrus.New()
	l.SetOutput(logWriter{t})
	m, err := migration.NewManager(migration.Options{StateDir: dir, LocalURI: from.URI(), Dial: dial, Hooks: hooks,
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

// wait waits for the migration to end.
func (r *run) wait(t *testing.T, timeout time.Duration) migration.Migration {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if s, _ := r.m.Status(r.id); s.Phase.Terminal() {
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
	g := guest(t)
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
		if _, err := c.DomainState(ctx, g.Spec.Name); err == nil {
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
	g := guest(t)
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
	if st, err := c.DomainState(ctx, g.Spec.Name); err == nil {
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
