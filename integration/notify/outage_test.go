//go:build integration

package notify_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/integration/rabbit"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/pkg/virt/virttest"
	"opendev.org/x/ferry/rpc/nova"
)

// notesOnly is the companion bookkeeping reduced to its notifications:
// the engine journals and delivers them as it does every report, and the
// records' other reports (which need a conductor) are left out.
type notesOnly struct{ b *nova.Bookkeeper }

func notes(names []string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, "notify-") {
			out = append(out, n)
		}
	}
	return out
}

func (n notesOnly) Reports(m migration.Migration, from, to migration.Phase) []string {
	return notes(n.b.Reports(m, from, to))
}

func (n notesOnly) CommandReports(m migration.Migration, command string) []string {
	return notes(n.b.CommandReports(m, command))
}

func (n notesOnly) Deliver(ctx context.Context, m migration.Migration, r migration.Report) error {
	return n.b.Deliver(ctx, m, r)
}

func (notesOnly) Progress(context.Context, migration.Migration, virt.JobStats) error { return nil }

type prepared struct{}

func (prepared) Prepare(context.Context, migration.Migration) (migration.Preparation, error) {
	return migration.Preparation{MigrationAddr: "198.19.0.12", Copy: virt.CopyFull}, nil
}

// engine is one ferryd's notification path: its own Notifier (as the
// package's own user), the bookkeeping and the engine on a state
// directory, the notifier's reconnect kicking the engine as wire.go does.
type engine struct {
	mgr  *migration.Manager
	stop func()
}

func startEngine(t *testing.T, c capture, w *virttest.World, dir string) *engine {
	t.Helper()
	var ref atomic.Pointer[migration.Manager]
	n := notifier(t, own, func() { // as wire.go does: the broker is back, what is owed goes now
		if m := ref.Load(); m != nil {
			m.Kick()
		}
	})
	b := nova.NewBookkeeper(nova.BookOptions{Host: c.Host, Companion: true, Notify: &nova.NotifyOptions{Notifier: n,
		Drivers: []string{"messagingv2"}, Topics: []string{"notifications"}, Format: "unversioned", Timeout: 2 * time.Second},
		Log: testLog(t)}, nil, nova.Computes{}, nil, nil)
	mgr, err := migration.NewManager(migration.Options{StateDir: dir, LocalURI: "src", Destination: prepared{}, Records: notesOnly{b},
		Log: testLog(t), Dial: func(ctx context.Context, uri string) (migration.Hypervisor, error) { return w.Dial(ctx, uri) }})
	if err != nil {
		t.Fatal(err)
	}
	ref.Store(mgr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = mgr.Run(ctx); close(done) }() // owner: stop
	e := &engine{mgr: mgr}
	e.stop = func() { cancel(); <-done; n.Close() }
	return e
}

// outage cuts the broker off from the package's own user: its rights on
// the virtual host revoked (a reconnect is refused) and its connections
// closed; the listener's user keeps its own. restore gives them back.
func outage(t *testing.T) (restore func()) {
	t.Helper()
	ctx := context.Background()
	if _, err := rabbit.Ctl(ctx, "-q", "clear_permissions", "-p", vhost, own.User); err != nil {
		t.Fatal(err)
	}
	out, err := rabbit.Ctl(ctx, "-q", "list_connections", "--no-table-headers", "user", "pid")
	if err != nil {
		t.Fatal(err)
	}
	closed := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == own.User {
			if _, err := rabbit.Ctl(ctx, "-q", "close_connection", f[1], "ferry integration test: broker outage"); err != nil {
				t.Fatal(err)
			}
			closed++
		}
	}
	t.Logf("outage: %s's permissions on %s revoked, %d connections closed", own.User, vhost, closed)
	return func() {
		if _, err := rabbit.Ctl(ctx, "-q", "set_permissions", "-p", vhost, own.User, ".*", ".*", ".*"); err != nil {
			t.Error(err)
		}
	}
}

func waitPhase(t *testing.T, m *migration.Manager, id string, want migration.Phase) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if s, _ := m.Status(id); s.Phase == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	s, _ := m.Status(id)
	t.Fatalf("migration %s is %s (%s), want %s", id, s.Phase, s.Reason, want)
}

// A broker outage delays notifications, never loses them: two migrations
// end while the notifier's user is cut off (one completed, one aborted by
// the operator), their notifications wait in the journal, survive a
// restart of the engine (a new notifier, a new manager on the same state
// directory), and once the broker takes the user again every one arrives
// at the oslo listener, once, in each migration's order.
func TestOutageDelaysNeverLoses(t *testing.T) {
	c := loadCapture(t)
	l := startListener(t, "notifications")
	w := virttest.NewWorld("src", "dst")
	w.Host("src").HostURI["qemu+tcp://198.18.0.12/system"] = "dst"
	inst1, _ := nova.UUID(c.Instance, "uuid")
	const inst2 = "f6a9e4d2-3b1c-4c55-9d1e-0c6f1a2b3c4e"
	w.Define("src", inst1)
	w.Define("src", inst2)
	dir := t.TempDir()

	e1 := startEngine(t, c, w, dir)
	time.Sleep(time.Second) // the notifier connects
	restore := outage(t)
	restored := false
	defer func() {
		if !restored {
			restore()
		}
	}()

	const m1, m2 = "5f3c2a10-7e4b-4d8e-a1c2-3344556600a1", "5f3c2a10-7e4b-4d8e-a1c2-3344556600a2"
	w.Job = virttest.Job{RAMMiB: 64, BandwidthMiBps: 1000}
	if _, err := e1.mgr.Start(t.Context(), request(t, c, m1, inst1)); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, e1.mgr, m1, migration.PhaseCompleted)
	w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}
	if _, err := e1.mgr.Start(t.Context(), request(t, c, m2, inst2)); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, e1.mgr, m2, migration.PhaseRunning)
	time.Sleep(time.Second)
	if err := e1.mgr.Abort(t.Context(), m2); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, e1.mgr, m2, migration.PhaseCancelled)
	if !l.quiet(3 * time.Second) {
		t.Fatal("a notification went out during the outage")
	}
	e1.stop() // ferryd restarts while the broker is still out

	owed := map[string][]string{}
	ms, _, err := migration.ReadJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		for _, r := range m.Reports {
			if !r.Delivered {
				owed[m.ID] = append(owed[m.ID], r.Name)
			}
		}
	}
	wantOwed := map[string][]string{m1: {"notify-post-start", "notify-post-end"},
		m2: {"notify-abort-start", "notify-abort-end", "notify-rollback-start", "notify-rollback-end"}}
	if diff := cmp.Diff(wantOwed, owed); diff != "" {
		t.Fatalf("the journal owes (-want +got):\n%s", diff)
	}

	e2 := startEngine(t, c, w, dir)
	defer e2.stop()
	time.Sleep(2 * time.Second) // still out: the new notifier is refused too
	restore()
	restored = true
	got := map[string][]string{}
	for range 6 {
		r, ok := l.next(t, 60*time.Second)
		if !ok {
			t.Fatalf("after the outage only %v arrived", got)
		}
		uuid, _ := r.Payload.(map[string]any)["instance_id"].(string)
		got[uuid] = append(got[uuid], r.EventType)
	}
	want := map[string][]string{
		inst1: {"compute.instance.live_migration._post.start", "compute.instance.live_migration._post.end"},
		inst2: {"compute.instance.live.migration.abort.start", "compute.instance.live.migration.abort.end",
			"compute.instance.live_migration._rollback.start", "compute.instance.live_migration._rollback.end"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after the outage (-want +got):\n%s", diff)
	}
	if !l.quiet(3 * time.Second) {
		t.Error("a notification arrived twice")
	}
	for _, id := range []string{m1, m2} {
		if s, _ := e2.mgr.Status(id); s.Pending() != 0 {
			t.Errorf("%s still owes %d reports", id, s.Pending())
		}
	}
}

// request is a migration of instance inst with the fixture's records.
func request(t *testing.T, c capture, id, inst string) migration.Request {
	t.Helper()
	m := migrationOf(t, c, id)
	st := map[string]json.RawMessage{}
	if err := json.Unmarshal(m.State, &st); err != nil {
		t.Fatal(err)
	}
	obj := c.Instance.Data
	data := map[string]json.RawMessage{}
	for k, v := range obj {
		data[k] = v
	}
	data["uuid"] = json.RawMessage(`"` + inst + `"`)
	b, _ := json.Marshal(map[string]any{"nova_object.name": "Instance", "nova_object.namespace": "nova",
		"nova_object.version": c.Instance.Version, "nova_object.data": data})
	st["instance"] = b
	state, _ := json.Marshal(st)
	return migration.Request{ID: id, InstanceUUID: inst, Dest: hostnet.Dest{Host: "dst", Mgmt: "198.18.0.12"}, DestCheckURI: "dst",
		Job: migration.Job{Disks: []string{"vda"}}, State: state}
}
