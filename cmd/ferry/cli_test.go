package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/openstack"
	"opendev.org/x/ferry/pkg/status"
)

const (
	srvID = "6a3e0000-0000-4000-8000-000000000001"
	migU1 = "5b2f0000-0000-4000-8000-0000000000a1"
	migU2 = "5b2f0000-0000-4000-8000-000000000043" // the first new migration's (uuidOf(43))
)

// uuidOf is the uuid the fake gives the migration it numbers id.
func uuidOf(id int64) string { return fmt.Sprintf("5b2f0000-0000-4000-8000-%012d", id) }

var t0 = time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)

// fakeNova is nova-api as the commands see it. A live-migrate records a
// new migration (ids from 43 up) of the server from its host to the host
// asked for, else lab-b (the scheduler's choice), and marks the server
// migrating. Each FindMigration of a migration advances it one status
// through its script; when it completes the server is on its
// destination, and whenever it ends the server's task is over.
type fakeNova struct {
	mu      sync.Mutex
	servers map[string]openstack.Server
	ms      []openstack.Migration
	script  []string            // statuses a new migration goes through, unless scripts names its server
	scripts map[string][]string // per server id
	pending map[int64][]string  // each migration's statuses still to come (tests may seed an old one's)
	hold    map[string]chan struct{}
	started chan string // each live-migrate's server id, when not nil
	// found[server] is closed the first time FindMigration shows that
	// server's migration running.
	found     map[string]chan struct{}
	foundDone map[string]bool
	nextID    int64
	progress  openstack.Progress
	calls     []string
	refuse    error
	refuseOf  map[string]error // per server id
	// maxRunning is the most migrations not ended Nova held at once, seen
	// at each live-migrate.
	maxRunning int
}

func (f *fakeNova) call(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeNova) Server(_ context.Context, ref string) (openstack.Server, error) {
	f.call("server " + ref)
	for _, s := range f.servers {
		if s.ID == ref || s.Name == ref {
			return s, nil
		}
	}
	return openstack.Server{}, fmt.Errorf("server %s: %w", ref, errdefs.ErrNotFound)
}

func (f *fakeNova) ServersOnHost(_ context.Context, host string) ([]openstack.Server, error) {
	f.call("servers-on-host " + host)
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []openstack.Server
	for _, s := range f.servers {
		if s.Host == host {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b openstack.Server) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func (f *fakeNova) LiveMigrate(_ context.Context, id, host string, b openstack.BlockMigration) error {
	f.call(fmt.Sprintf("live-migrate %s host=%q block=%s", id, host, b))
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.refuseOf[id]; err != nil {
		return err
	}
	if f.refuse != nil {
		return f.refuse
	}
	if f.nextID == 0 {
		f.nextID = 43
	}
	mid := f.nextID
	f.nextID++
	sv := f.servers[id]
	src, dest := orDefault(sv.Host, "lab-a"), orDefault(host, "lab-b")
	f.ms = append([]openstack.Migration{{ID: mid, UUID: uuidOf(mid), InstanceUUID: id, Status: "accepted", SourceCompute: src,
		DestCompute: dest, CreatedAt: t0}}, f.ms...)
	script, ok := f.scripts[id]
	if !ok {
		script = f.script
	}
	if f.pending == nil {
		f.pending = map[int64][]string{}
	}
	f.pending[mid] = slices.Clone(script)
	if sv.ID != "" {
		sv.TaskState = "migrating"
		f.servers[id] = sv
	}
	running := 0
	for _, m := range f.ms {
		if !m.Ended() {
			running++
		}
	}
	f.maxRunning = max(f.maxRunning, running)
	if f.started != nil {
		f.started <- id
	}
	return nil
}

// advance moves migration i one status on, unless its server is held
// (then it stays as it is until the test closes the server's hold).
func (f *fakeNova) advance(i int) {
	m := &f.ms[i]
	next := f.pending[m.ID]
	if len(next) == 0 {
		return
	}
	if h, held := f.hold[m.InstanceUUID]; held && m.Status == "running" {
		select {
		case <-h:
		default:
			return
		}
	}
	m.Status, f.pending[m.ID] = next[0], next[1:]
	if sv, ok := f.servers[m.InstanceUUID]; ok && m.Ended() {
		if m.Status == "completed" {
			sv.Host = m.DestCompute
		}
		sv.TaskState = ""
		f.servers[m.InstanceUUID] = sv
	}
}

func (f *fakeNova) Migrations(_ context.Context, flt openstack.MigrationFilter) ([]openstack.Migration, error) {
	f.call("migrations")
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []openstack.Migration
	for _, m := range f.ms {
		if (flt.Server == "" || m.InstanceUUID == flt.Server) && (flt.Status == "" || m.Status == flt.Status) &&
			(flt.Host == "" || m.SourceCompute == flt.Host || m.DestCompute == flt.Host) {
			out = append(out, m)
		}
	}
	if flt.Limit > 0 && len(out) > flt.Limit {
		out = out[:flt.Limit]
	}
	return out, nil
}

func (f *fakeNova) FindMigration(_ context.Context, server, ref string) (openstack.Migration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, m := range f.ms {
		if m.InstanceUUID == server && (fmt.Sprint(m.ID) == ref || m.UUID == ref) {
			f.advance(i)
			if ch, ok := f.found[server]; ok && f.ms[i].Status == "running" && !f.foundDone[server] {
				if f.foundDone == nil {
					f.foundDone = map[string]bool{}
				}
				f.foundDone[server] = true
				close(ch)
			}
			return f.ms[i], nil
		}
	}
	return openstack.Migration{}, fmt.Errorf("migration %s: %w", ref, errdefs.ErrNotFound)
}

func (f *fakeNova) InProgress(_ context.Context, _ string, id int64) (openstack.Progress, error) {
	return f.progress, nil
}

func (f *fakeNova) ForceComplete(_ context.Context, server string, id int64) error {
	f.call(fmt.Sprintf("force-complete %s %d", server, id))
	return f.refuse
}

func (f *fakeNova) AbortMigration(_ context.Context, server string, id int64) error {
	f.call(fmt.Sprintf("abort %s %d", server, id))
	return f.refuse
}

// fakeFerryds holds each host's ferryd records; a host in down answers
// ErrUnavailable.
type fakeFerryds struct {
	mu    sync.Mutex
	hosts map[string][]status.Migration
	down  map[string]bool
	asked map[string]int
	// plans[host][instance] is what Plan answers.
	plans     map[string]map[string]status.Plan
	planAsked []string
}

func (f *fakeFerryds) Migrations(_ context.Context, host string) ([]status.Migration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.asked == nil {
		f.asked = map[string]int{}
	}
	f.asked[host]++
	if f.down[host] {
		return nil, fmt.Errorf("ferryd on %s: %w: connection refused", host, errdefs.ErrUnavailable)
	}
	return f.hosts[host], nil
}

func (f *fakeFerryds) Migration(ctx context.Context, host, id string) (status.Migration, error) {
	ms, err := f.Migrations(ctx, host)
	if err != nil {
		return status.Migration{}, err
	}
	for _, m := range ms {
		if m.ID == id {
			return m, nil
		}
	}
	return status.Migration{}, fmt.Errorf("ferryd on %s: %w", host, errdefs.ErrNotFound)
}

// Plan answers from plans, keyed by host then instance; a host in down
// answers ErrUnavailable, any other instance ErrNotFound.
func (f *fakeFerryds) Plan(_ context.Context, host string, r status.PlanRequest) (status.Plan, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	inst, dest := r.Instance, r.Dest
	ask := fmt.Sprintf("%s %s %s %s", host, inst, dest, r.Sample)
	if r.BandwidthBps > 0 {
		ask += fmt.Sprintf(" %dMiB/s", r.BandwidthBps>>20)
	}
	f.planAsked = append(f.planAsked, ask)
	if f.down[host] {
		return status.Plan{}, fmt.Errorf("ferryd on %s: %w: connection refused", host, errdefs.ErrUnavailable)
	}
	p, ok := f.plans[host][inst]
	if !ok {
		return status.Plan{}, fmt.Errorf("ferryd on %s: %w", host, errdefs.ErrNotFound)
	}
	p.Dest = dest
	return p, nil
}

func newApp(n *fakeNova, fd *fakeFerryds) (*app, *bytes.Buffer, *bytes.Buffer) {
	var out, errw bytes.Buffer
	return &app{out: &out, errw: &errw, nova: n, ferryds: fd, conf: &config.CLI{}, interval: time.Millisecond,
		terminal: func() bool { return false }}, &out, &errw
}

func execute(a *app, args ...string) int {
	root := a.root()
	root.SetArgs(args)
	root.SetOut(a.out)
	root.SetErr(a.errw)
	return exitOf(root.ExecuteContext(context.Background()), a.errw)
}

func cloud() (*fakeNova, *fakeFerryds) {
	n := &fakeNova{servers: map[string]openstack.Server{srvID: {ID: srvID, Name: "web-1", Host: "lab-a"}},
		ms: []openstack.Migration{
			{ID: 41, UUID: migU1, InstanceUUID: srvID, Status: "completed", SourceCompute: "lab-b", DestCompute: "lab-a", CreatedAt: t0.Add(-time.Hour)},
			{ID: 40, UUID: "5b2f0000-0000-4000-8000-0000000000a0", InstanceUUID: srvID, Status: "error", SourceCompute: "lab-c", DestCompute: "lab-a", CreatedAt: t0.Add(-2 * time.Hour)},
		}}
	fd := &fakeFerryds{hosts: map[string][]status.Migration{
		"lab-b": {{ID: migU1, Phase: "completed", Record: status.Record{TotalSeconds: 7.5, DowntimeSeconds: 0.1}}},
	}, down: map[string]bool{"lab-c": true}}
	return n, fd
}

// migration list joins each source ferryd's record to Nova's migrations,
// asks each host once, and shows Nova's view alone (saying why) for a host
// whose ferryd does not answer.
func TestListJoinsFerrysRecords(t *testing.T) {
	n, fd := cloud()
	n.ms = append(n.ms, openstack.Migration{ID: 39, UUID: "5b2f0000-0000-4000-8000-000000000039", InstanceUUID: srvID, Status: "failed",
		SourceCompute: "lab-c", DestCompute: "lab-b"})
	a, out, errw := newApp(n, fd)
	if code := execute(a, "migration", "list", "--server", "web-1", "-f", "json"); code != 0 {
		t.Fatalf("exit %d: %s", code, errw)
	}
	var vs []migrationView
	if err := json.Unmarshal(out.Bytes(), &vs); err != nil {
		t.Fatalf("-f json: %v\n%s", err, out)
	}
	if len(vs) != 3 || vs[0].ID != 41 || vs[0].Ferry == nil || vs[0].Ferry.Phase != "completed" {
		t.Fatalf("list: %+v", vs)
	}
	for _, v := range vs[1:] {
		if v.Ferry != nil || !strings.Contains(v.FerryNote, "ferryd not reachable") {
			t.Errorf("migration %d from an unreachable ferryd: ferry %v, note %q", v.ID, v.Ferry, v.FerryNote)
		}
	}
	if fd.asked["lab-c"] != 1 || strings.Count(errw.String(), "\n") != 1 {
		t.Errorf("lab-c asked %d times; stderr %q", fd.asked["lab-c"], errw)
	}
	out.Reset()
	if code := execute(a, "migration", "list"); code != 0 || !strings.Contains(out.String(), "FERRY") ||
		!strings.Contains(out.String(), migU1) {
		t.Errorf("table: %d\n%s", code, out)
	}
}

// A ferryd that answers but holds no record says ferry did not run it.
func TestShowNotRunByFerry(t *testing.T) {
	n, fd := cloud()
	fd.hosts["lab-b"] = nil
	a, out, errw := newApp(n, fd)
	if code := execute(a, "migration", "show", srvID, "41", "-f", "yaml"); code != 0 {
		t.Fatalf("exit %d: %s", code, errw)
	}
	if !strings.Contains(out.String(), "ferry_note: not run by ferry") || !strings.Contains(out.String(), "uuid: "+migU1) {
		t.Errorf("yaml:\n%s", out)
	}
}

// live-migrate --wait goes through Nova, finds the migration Nova made,
// follows it with a line per change (stderr is not a terminal) and exits
// 0 only when it completed; a failure carries ferry's reason and exit 1.
func TestLiveMigrateWait(t *testing.T) {
	for _, tt := range []struct {
		name   string
		script []string
		ferry  status.Migration
		code   int
		errHas string
	}{
		{"completed", []string{"running", "running", "completed"},
			status.Migration{ID: migU2, Phase: "completed", Actions: []status.Action{{AtSeconds: 3, Action: "set-downtime", DowntimeSeconds: 0.3, Reason: "floor 20 MiB"}}},
			0, "last: set-downtime 300ms (floor 20 MiB)"},
		{"cancelled", []string{"running", "cancelled"},
			status.Migration{ID: migU2, Phase: "cancelled", Reason: "no convergence after 12 passes; aborted"},
			1, "ended cancelled: no convergence after 12 passes; aborted"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n, fd := cloud()
			n.script = tt.script
			n.progress = openstack.Progress{MemoryTotal: 512 << 20, MemoryProcessed: 256 << 20, MemoryRemaining: 256 << 20}
			fd.hosts["lab-a"] = []status.Migration{tt.ferry}
			a, out, errw := newApp(n, fd)
			code := execute(a, "live-migrate", "web-1", "--host", "lab-b", "--block-migration", "true", "--wait", "-f", "json")
			if code != tt.code {
				t.Fatalf("exit %d, want %d: %s", code, tt.code, errw)
			}
			if !slicesContains(n.calls, fmt.Sprintf("live-migrate %s host=%q block=true", srvID, "lab-b")) {
				t.Errorf("calls %v", n.calls)
			}
			if !strings.Contains(errw.String(), tt.errHas) || !strings.Contains(errw.String(), "migration 43 lab-a→lab-b: running") {
				t.Errorf("stderr lacks %q or the running line:\n%s", tt.errHas, errw)
			}
			if strings.Contains(errw.String(), "\r") {
				t.Errorf("a redraw on a non-terminal:\n%q", errw)
			}
			var v migrationView
			if err := json.Unmarshal(out.Bytes(), &v); err != nil || v.ID != 43 || v.Status != tt.script[len(tt.script)-1] {
				t.Errorf("stdout %v %+v:\n%s", err, v, out)
			}
		})
	}
}

// Nova refusing the request is exit 1 with Nova's reason; nothing is
// waited for.
func TestLiveMigrateRefused(t *testing.T) {
	n, fd := cloud()
	n.refuse = fmt.Errorf("live-migrate: %w: 409", errdefs.ErrConflict)
	a, _, errw := newApp(n, fd)
	if code := execute(a, "live-migrate", "web-1", "--wait"); code != 1 || !strings.Contains(errw.String(), "409") {
		t.Errorf("exit %d: %s", code, errw)
	}
}

// Usage errors are exit 2 and touch nothing.
func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"},
		{"live-migrate"},
		{"live-migrate", "web-1", "--block-migration", "maybe"},
		{"migration", "list", "-f", "xml"},
		{"migration", "list", "--json", "-f", "yaml"},
		{"migration", "show", srvID},
		{"migration", "abort", srvID},
		{"migration", "list", "--nope"},
		{"drain"},
		{"drain", "lab-a", "lab-b"},
		{"drain", "lab-a", "--max-parallel", "0"},
		{"drain", "lab-a", "--bandwidth", "-5"},
		{"drain", "lab-a", "-f", "xml"},
	} {
		n, fd := cloud()
		a, _, errw := newApp(n, fd)
		if code := execute(a, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want 2: %s", args, code, errw)
		}
		for _, c := range n.calls {
			if strings.HasPrefix(c, "live-migrate") || strings.HasPrefix(c, "abort") {
				t.Errorf("%v reached Nova: %v", args, n.calls)
			}
		}
	}
}

func TestAbortAndForceComplete(t *testing.T) {
	n, fd := cloud()
	a, _, errw := newApp(n, fd)
	if code := execute(a, "migration", "abort", "web-1", migU1); code != 0 {
		t.Fatalf("abort: %d %s", code, errw)
	}
	if code := execute(a, "migration", "force-complete", "web-1", "41"); code != 0 {
		t.Fatalf("force-complete: %d %s", code, errw)
	}
	if !slicesContains(n.calls, "abort "+srvID+" 41") || !slicesContains(n.calls, "force-complete "+srvID+" 41") {
		t.Errorf("calls %v", n.calls)
	}
	if code := execute(a, "migration", "abort", "web-1", "99"); code != 1 {
		t.Errorf("an unknown migration: exit %d", code)
	}
}

func TestProgressLine(t *testing.T) {
	base := migrationView{ID: 7, Source: "lab-a", Dest: "lab-b", Status: "running"}
	for _, tt := range []struct {
		name string
		v    migrationView
		want string
	}{
		{"nova only", func() migrationView {
			v := base
			v.Progress = &openstack.Progress{MemoryTotal: 1 << 30, MemoryProcessed: 256 << 20, MemoryRemaining: 768 << 20}
			return v
		}(), "migration 7 lab-a→lab-b: running · memory 256/1024 MiB (768 MiB left)"},
		{"ferry's sample wins", func() migrationView {
			v := base
			v.Progress = &openstack.Progress{MemoryTotal: 1 << 30}
			v.Ferry = &status.Migration{Phase: "running", Progress: &status.Progress{Iteration: 3, MemoryTotalBytes: 1 << 30,
				MemoryProcessedBytes: 1 << 30, MemoryRemainingBytes: 100 << 20, MemoryBps: 50 << 20, DiskTotalBytes: 64 << 10,
				DiskProcessedBytes: 64 << 10},
				Actions: []status.Action{{Action: "auto-converge", Reason: "dirty rate above bandwidth"}}}
			return v
		}(), "migration 7 lab-a→lab-b: running · ferry running · pass 3 · memory 1024/1024 MiB (100 MiB left) · disk 64/64 KiB (0 KiB left) · 50.0 MiB/s · ~2s left · last: auto-converge (dirty rate above bandwidth)"},
		{"ended with a reason", func() migrationView {
			v := base
			v.Status = "error"
			v.Ferry = &status.Migration{Phase: "error", Reason: "libvirtd on lab-a stopped answering"}
			return v
		}(), "migration 7 lab-a→lab-b: error · ferry error · reason: libvirtd on lab-a stopped answering"},
	} {
		if got := progressLine(tt.v); got != tt.want {
			t.Errorf("%s:\n%s", tt.name, cmp.Diff(tt.want, got))
		}
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestMoved(t *testing.T) {
	for _, tt := range []struct {
		done, total, left uint64
		want              string
	}{
		{0, 64 << 10, 64 << 10, "0/64 KiB (64 KiB left)"},
		{137 << 20, 257 << 20, 59 << 20, "137/257 MiB (59 MiB left)"},
		{3 << 30, 16 << 30, 13 << 30, "3.0/16.0 GiB (13.0 GiB left)"},
	} {
		if got := moved(tt.done, tt.total, tt.left); got != tt.want {
			t.Errorf("moved(%d, %d, %d) = %q, want %q", tt.done, tt.total, tt.left, got, tt.want)
		}
	}
}
