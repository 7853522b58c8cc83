// Command benchdrain is `make bench-drain`: in the stack (integration/stack:
// the lab with a real OpenStack around it), with the migration link capped
// by tc on both hosts' mig0 (50 MiB/s by default) for both systems, it
// drains four guests of the bench flavor — two idle, two dirtying a
// 256 MiB working set (the stack's "bench-25" workload: 25 MiB/s) — off
// lab-a, twice:
//
//   - Nova alone: the stock nova-compute on both hosts, nova.conf's
//     defaults plus live_migration_permit_auto_converge = true (so that
//     the dirtying guests can converge), one live migration at a time
//     through Nova's API (`openstack server migrate --live-migration`, in
//     the drain's order), each waited for before the next;
//   - ferry: both hosts in companion mode (ferry's default
//     configuration), `ferry drain lab-a --max-parallel 2 --bandwidth CAP
//     -f json`.
//
// Each migration gets the same cut-off (300 s by default): after it the
// bench aborts the migration through Nova's API and counts it failed (the
// drain itself never aborts). A guest whose heartbeat does not continue on
// the destination counts failed too. Guests are deleted, the hosts given
// back to the stock shape with nova.conf's defaults and the cap removed
// after each run, on every path (errors and SIGINT included). The last
// line is the verdict:
//
//	bench-drain: ferry_s=… nova_s=… ferry_failed=… nova_failed=… ratio=…
//
// (ratio = ferry_s/nova_s; the target is ≤ 0.7 with no ferry failure).
// Not a test; not in CI.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/integration/stack"
	"opendev.org/x/ferry/pkg/migration"
)

const (
	from, to = "lab-a", "lab-b" // the host drained; the only other host, which the scheduler picks
	prefix   = "bench-drain-"   // every server the bench boots is named so
)

// novaConverge is what nova.conf permits beyond its defaults for Nova's
// run: without auto-converge a guest dirtying memory may never converge.
var novaConverge = map[string]map[string]string{"libvirt": {"live_migration_permit_auto_converge": "true"}}

// sysResult is one system's figures for the last line.
type sysResult struct {
	secs   float64
	failed int
}

type bench struct {
	st       *stack.Stack
	a        *stack.API
	capMiB   int
	plan     []string // the guests' workloads, in boot (and name, hence drain) order
	cutoff   time.Duration
	parallel int
	ferryBin string
	logf     func(string, ...any)
}

// guest is one server of a run.
type guest struct {
	idx      int
	name     string
	workload string
	sv       stack.Server
	con      *stack.Console // its console on lab-a, followed from boot
	rate     float64        // its dirty rate (MiB/s) before the migrations, as its heartbeat says
}

func main() {
	code, nova, ferry := run()
	ratio := 0.0
	if nova.secs > 0 {
		ratio = ferry.secs / nova.secs
	}
	fmt.Printf("bench-drain: ferry_s=%.1f nova_s=%.1f ferry_failed=%d nova_failed=%d ratio=%.2f\n",
		ferry.secs, nova.secs, ferry.failed, nova.failed, ratio)
	os.Exit(code)
}

func run() (code int, nova, ferry sysResult) {
	capMiB := flag.Int("cap", 50, "tc cap of the migration link (MiB/s), both systems; ferry drain's --bandwidth")
	workload := flag.String("workload", "bench-25", "the stack workload of the two dirtying guests (bench-25, bench-50, bench-100 or dirty; its rate below -cap)")
	cutoff := flag.Duration("cutoff", 300*time.Second, "per migration, both systems: abort it through Nova's API after this long and count it failed")
	parallel := flag.Int("max-parallel", 2, "ferry drain's --max-parallel")
	systems := flag.String("systems", "nova,ferry", "which runs, in this order: nova, ferry or both")
	allowForeign := flag.Bool("allow-foreign", false, "run although lab-a has servers the bench did not boot (ferry's drain would move them too)")
	flag.Parse()
	t0 := time.Now()
	logf := func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "[%6.1fs] "+f+"\n", append([]any{time.Since(t0).Seconds()}, a...)...)
	}
	wl, ok := stack.Workloads[*workload]
	if !ok || wl[1] == 0 || *capMiB <= 0 || wl[1] >= *capMiB || *parallel < 1 || *cutoff <= 0 {
		fmt.Fprintf(os.Stderr, "bench-drain: want -workload a dirtying workload of the stack (%v) whose rate is below -cap, "+
			"-cap > 0, -max-parallel ≥ 1, -cutoff > 0\n", workloadNames())
		return 2, nova, ferry
	}
	runNova, runFerry := false, false
	for _, s := range strings.Split(*systems, ",") {
		switch strings.TrimSpace(s) {
		case "nova":
			runNova = true
		case "ferry":
			runFerry = true
		default:
			fmt.Fprintf(os.Stderr, "bench-drain: -systems %q: want nova, ferry or nova,ferry\n", *systems)
			return 2, nova, ferry
		}
	}
	plan := []string{"idle", *workload, "idle", *workload}
	// A system that does not run to its end failed every guest.
	if runNova {
		nova.failed = len(plan)
	}
	if runFerry {
		ferry.failed = len(plan)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := stack.Acquire(ctx, stack.Options{Logf: logf})
	if err != nil {
		logf("bench-drain: %v", err)
		return 1, nova, ferry
	}
	// From here this bench owns SIGINT and SIGTERM: the stack's and the
	// lab's handlers (when this process started the stack) would tear it
	// down and exit before the runs' cleanup; the first signal stops the
	// run and cleans up, a second exits at once.
	sigc := make(chan os.Signal, 2)
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	quit, sigDone := make(chan struct{}), make(chan struct{})
	interrupted := false
	go func() { // owner: run (closes quit, then waits for sigDone)
		defer close(sigDone)
		select {
		case s := <-sigc:
			logf("bench-drain: %v: stopping and cleaning up (again to exit at once)", s)
			interrupted = true
			cancel()
		case <-quit:
			return
		}
		select {
		case s := <-sigc:
			logf("bench-drain: %v again: exiting without cleaning up", s)
			st.Close()
			os.Exit(130)
		case <-quit:
		}
	}()
	defer func() {
		close(quit)
		<-sigDone
		signal.Stop(sigc)
		if interrupted {
			code = 130
		}
	}()
	defer st.Close() // a stack this process started is torn down; an attached one left running

	a, err := st.API(ctx)
	if err != nil {
		logf("bench-drain: %v", err)
		return 1, nova, ferry
	}
	b := &bench{st: st, a: a, capMiB: *capMiB, plan: plan, cutoff: *cutoff, parallel: *parallel, logf: logf}
	if runFerry {
		dir, err := os.MkdirTemp("", "bench-drain-")
		if err != nil {
			logf("bench-drain: %v", err)
			return 1, nova, ferry
		}
		defer os.RemoveAll(dir)
		if b.ferryBin, err = stack.Build(ctx, dir, "./cmd/ferry"); err != nil {
			logf("bench-drain: %v", err)
			return 1, nova, ferry
		}
	}
	b.clean(func(ctx context.Context) { b.deleteServers(ctx, prefix) }) // what a killed run left
	if foreign, err := b.foreign(ctx); err != nil {
		logf("bench-drain: %v", err)
		return 1, nova, ferry
	} else if len(foreign) > 0 && !*allowForeign {
		logf("bench-drain: %s has servers the bench did not boot (%s): `ferry drain %s` would move them too; delete them or pass -allow-foreign",
			from, strings.Join(foreign, ", "), from)
		return 1, nova, ferry
	}
	fmt.Printf("bench-drain: %d guests of flavor ferry.bench (384 MiB) on %s: %s (%s: %d MiB working set at %d MiB/s); "+
		"migration link capped at %d MiB/s (tc on mig0, both systems); cut-off %v per migration\n",
		len(plan), from, strings.Join(plan, ", "), *workload, wl[0], wl[1], *capMiB, *cutoff)

	code = 0
	if runNova {
		var err error
		if nova, err = b.novaRun(ctx); err != nil {
			logf("nova: %v", err)
			code = 1
		}
	}
	if runFerry && ctx.Err() == nil {
		var err error
		if ferry, err = b.ferryRun(ctx); err != nil {
			logf("ferry: %v", err)
			code = 1
		}
	}
	if runNova && runFerry && nova.secs > 0 {
		fmt.Printf("bench-drain: target ferry_s/nova_s ≤ 0.70 with no ferry failure: %.2f, %d failed\n", ferry.secs/nova.secs, ferry.failed)
	}
	return code, nova, ferry
}

func workloadNames() []string {
	var out []string
	for n, w := range stack.Workloads {
		if w[1] > 0 {
			out = append(out, n)
		}
	}
	return out
}

// clean runs a cleanup with a context of its own: it must run after the
// run's context ended (an interrupt, a deadline).
func (b *bench) clean(f func(ctx context.Context)) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	f(ctx)
}

// novaRun is Nova's baseline: nova.conf's defaults plus auto-converge on
// both stock nova-computes, the guests migrated one at a time through
// Nova's API, in the drain's order. Its time is the sum of the migrations'
// walls (each from the command until the server is ACTIVE on lab-b and the
// migration completed, or it ended), back to back.
func (b *bench) novaRun(ctx context.Context) (r sysResult, err error) {
	r.failed = len(b.plan)
	tag := fmt.Sprintf("%snova-%d-", prefix, os.Getpid())
	restarted := false
	defer b.clean(func(ctx context.Context) {
		b.logf("nova: cleaning up: servers, nova.conf's defaults, the cap")
		b.deleteServers(ctx, tag)
		if restarted {
			if err := b.st.RestartComputes(ctx, nil); err != nil {
				b.logf("nova: nova-compute back to nova.conf's defaults: %v", err)
			}
		}
		if err := b.st.CapMigration(ctx, 0); err != nil {
			b.logf("nova: remove the cap: %v", err)
		}
	})
	b.logf("nova: cap %d MiB/s; restarting both nova-computes with live_migration_permit_auto_converge = true", b.capMiB)
	if err := b.st.CapMigration(ctx, b.capMiB); err != nil {
		return r, err
	}
	restarted = true
	if err := b.st.RestartComputes(ctx, novaConverge); err != nil {
		return r, err
	}
	gs, err := b.boot(ctx, tag)
	closeConsoles(gs) // LiveMigrateWith follows the consoles itself
	if err != nil {
		return r, err
	}
	fmt.Printf("nova: one at a time through Nova's API (openstack server migrate --live-migration --host %s), the stock nova-compute on both hosts\n", to)
	r.failed = 0
	loop := time.Now()
	for i, g := range gs {
		if ctx.Err() != nil {
			r.failed += len(gs) - i
			return r, ctx.Err()
		}
		b.logf("nova: %s (%s, %.1f MiB/s) → %s", g.name, g.workload, g.rate, to)
		t := time.Now()
		m, err := b.st.LiveMigrateWith(ctx, g.sv.ID, to, b.cutoff+5*time.Minute, stack.MigrateOptions{Cutoff: b.cutoff})
		wall := m.Wall
		if wall == 0 {
			wall = time.Since(t)
		}
		r.secs += wall.Seconds()
		ok := err == nil && m.Migration.Status == "completed" && m.Continuity == nil
		why := ""
		switch {
		case err != nil:
			why = err.Error()
		case m.Migration.Status != "completed":
			why = fmt.Sprintf("cut off after %v: aborted through the API", b.cutoff)
		case m.Continuity != nil:
			why = "heartbeat broken: " + m.Continuity.Error()
		}
		if !ok {
			r.failed++
		}
		fmt.Printf("nova  %d %-34s %-9s ok=%-5v wall=%.1fs %s %s\n", g.idx, g.name, g.workload, ok, wall.Seconds(), m, why)
	}
	fmt.Printf("nova: total %.1fs (the %d migrations back to back; the loop with the bench's checks took %.1fs), %d failed\n",
		r.secs, len(gs), time.Since(loop).Seconds(), r.failed)
	return r, nil
}

// ferryRun is ferry's: both hosts in companion mode, `ferry drain lab-a`,
// the cut-off applied beside it through Nova's API. Its time is the
// drain command's wall.
func (b *bench) ferryRun(ctx context.Context) (r sysResult, err error) {
	r.failed = len(b.plan)
	tag := fmt.Sprintf("%sferry-%d-", prefix, os.Getpid())
	var fds []*stack.Ferryd
	var gs []*guest
	defer b.clean(func(ctx context.Context) {
		b.logf("ferry: cleaning up: servers, the stock shape, the cap")
		closeConsoles(gs)
		b.deleteServers(ctx, tag)
		for i := len(fds) - 1; i >= 0; i-- {
			if err := b.st.ToStock(ctx, fds[i]); err != nil {
				b.logf("ferry: %v", err)
			}
		}
		if err := b.st.CapMigration(ctx, 0); err != nil {
			b.logf("ferry: remove the cap: %v", err)
		}
	})
	// ferryd's defaults: max_concurrent_live_migrations 1, as Nova's. The
	// drain's second request overlaps Nova's part (API, conductor,
	// scheduler, checks) of the next migration with the job of the one
	// before, which ferryd queues until the link is free. With 2, both
	// jobs shared the link and the drain's admission held the second back
	// anyway (57.9 s against 51.8 s on this bench).
	b.logf("ferry: cap %d MiB/s; both hosts to companion mode", b.capMiB)
	if err := b.st.CapMigration(ctx, b.capMiB); err != nil {
		return r, err
	}
	for _, h := range []string{from, to} {
		f, err := b.st.ToCompanion(ctx, h, stack.FerrydOptions{})
		if err != nil {
			return r, fmt.Errorf("%w (a host cut over whose ferryd did not start stays so: see its cutover@ and ferryd@ logs)", err)
		}
		fds = append(fds, f)
	}
	if gs, err = b.boot(ctx, tag); err != nil {
		return r, err
	}

	wctx, wstop := context.WithCancel(ctx)
	wdone := make(chan struct{})
	var cut map[string]bool
	go func() { // owner: ferryRun (stops it and waits for wdone below)
		defer close(wdone)
		cut = b.cutoffs(wctx, gs)
	}()
	t := time.Now()
	out, exit, derr := b.drain(ctx)
	wall := time.Since(t)
	wstop()
	<-wdone
	r.secs = wall.Seconds()
	b.logf("ferry: drain exited %d after %.1fs", exit, wall.Seconds())

	var rep drainReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		return r, fmt.Errorf("ferry drain -f json: exit %d (%v), no report: %v\n%s", exit, derr, err, out)
	}
	fmt.Printf("ferry: ferry drain %s --max-parallel %d --bandwidth %d, both hosts in companion mode (ferry's default configuration)\n",
		from, b.parallel, b.capMiB)
	r.failed = 0
	for _, g := range gs {
		ok, line := b.ferryServer(ctx, g, rep, fds[0], cut[g.sv.ID])
		if !ok {
			r.failed++
		}
		fmt.Println(line)
	}
	fmt.Printf("ferry: total %.1fs (the drain command's wall), %d failed\n", r.secs, r.failed)
	if rep.Interrupted {
		return r, errors.New("the drain was interrupted")
	}
	return r, nil
}

// ferryServer is one guest's figures from the drain's report, ferry's
// journal on the source, and its heartbeat on both hosts.
func (b *bench) ferryServer(ctx context.Context, g *guest, rep drainReport, src *stack.Ferryd, cut bool) (bool, string) {
	var s *drainServer
	for i := range rep.Servers {
		if rep.Servers[i].Server == g.sv.ID {
			s = &rep.Servers[i]
		}
	}
	head := fmt.Sprintf("ferry %d %-34s %-9s", g.idx, g.name, g.workload)
	if s == nil {
		return false, head + " ok=false not in the drain's report"
	}
	line := fmt.Sprintf("outcome=%s status=%s dest=%s nova_seconds=%.1f", s.Outcome, s.Status, s.Dest, s.Seconds)
	if s.MigrationUUID != "" {
		if j, err := migration.ReadEntry(src.StateDir, s.MigrationUUID); err == nil {
			rec := j.Record
			line += fmt.Sprintf(" phase=%s ferry_total=%.1fs downtime=%dms memory=%dMiB first_pass=%dMiB iterations=%d B=%.1fMiB/s actions=%d",
				j.Phase, rec.Total.Seconds(), rec.Downtime.Milliseconds(), rec.MemBytes>>20, rec.FirstPass>>20, rec.Iterations,
				rec.Bandwidth/(1<<20), len(rec.Actions))
		} else {
			line += fmt.Sprintf(" (no journal entry on %s: %v)", from, err)
		}
	}
	ok := s.Outcome == "migrated" && s.Status == "completed"
	why := s.Reason
	if cut {
		why = fmt.Sprintf("cut off after %v: aborted through the API; %s", b.cutoff, why)
	}
	if ok {
		if err := b.continuity(ctx, g, s.Dest); err != nil {
			ok, why = false, "heartbeat broken: "+err.Error()
		} else {
			line += " heartbeat=continuous"
		}
	}
	return ok, fmt.Sprintf("%s ok=%-5v %s %s", head, ok, line, why)
}

// continuity checks that the guest's heartbeat on dest continues the one
// its console on lab-a showed since boot.
func (b *bench) continuity(ctx context.Context, g *guest, dest string) error {
	h := b.st.Host(dest)
	if h == nil {
		return fmt.Errorf("no host %q", dest)
	}
	src, err := g.con.Beats()
	if err != nil {
		return err
	}
	dc, err := stack.OpenConsole(ctx, h.ConsoleLog(g.sv.ID), 10*time.Second)
	if err != nil {
		return err
	}
	defer dc.Close()
	dst, err := dc.Wait(ctx, 10, time.Minute)
	if err != nil {
		return err
	}
	return lab.Continuity(src, dst)
}

// drainServer and drainReport are the part of `ferry drain -f json` the
// bench reads.
type drainServer struct {
	Server        string  `json:"server"`
	Name          string  `json:"name"`
	Outcome       string  `json:"outcome"`
	MigrationID   int64   `json:"migration_id"`
	MigrationUUID string  `json:"migration_uuid"`
	Status        string  `json:"status"`
	Dest          string  `json:"dest_compute"`
	Seconds       float64 `json:"seconds"`
	Reason        string  `json:"reason"`
}

type drainReport struct {
	Host        string        `json:"host"`
	Interrupted bool          `json:"interrupted"`
	Servers     []drainServer `json:"servers"`
}

// drain runs `ferry drain` as an admin would (clouds.yaml, the stack's
// ferry.yaml), its progress on stderr, and returns its stdout (the JSON
// report) and exit code. An interrupt reaches it as SIGINT: it stops
// starting migrations and prints its report.
func (b *bench) drain(ctx context.Context) (string, int, error) {
	args := []string{"drain", from, "--max-parallel", strconv.Itoa(b.parallel), "--bandwidth", strconv.Itoa(b.capMiB), "-f", "json"}
	cmd := exec.CommandContext(ctx, b.ferryBin, args...)
	cmd.Env = append(os.Environ(), "OS_CLIENT_CONFIG_FILE="+b.st.CloudsYAML, "OS_CLOUD="+stack.Cloud, "FERRY_CONFIG="+stack.CLIConfig())
	var out bytes.Buffer
	pw := &prefixWriter{w: os.Stderr, prefix: "  ferry| "}
	cmd.Stdout, cmd.Stderr = &out, pw
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	b.logf("ferry: $ ferry %s", strings.Join(args, " "))
	err := cmd.Run()
	pw.flush()
	code := -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	return out.String(), code, err
}

// prefixWriter writes whole lines, each prefixed (only exec's copying
// goroutine writes; flush after Wait).
type prefixWriter struct {
	w       io.Writer
	prefix  string
	partial []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			return len(b), nil
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.partial[:i])
		p.partial = p.partial[i+1:]
	}
}

func (p *prefixWriter) flush() {
	if len(p.partial) > 0 {
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.partial)
		p.partial = nil
	}
}

// novaMigration is one entry of os-migrations as the cut-off reads it.
type novaMigration struct {
	ID      int    `json:"id"`
	Status  string `json:"status"`
	Type    string `json:"migration_type"`
	Created string `json:"created_at"`
}

func (b *bench) migrations(ctx context.Context, server string) ([]novaMigration, error) {
	var out struct{ Migrations []novaMigration }
	err := stack.Do(ctx, b.a.Compute, "GET", "os-migrations?instance_uuid="+server, nil, &out)
	return out.Migrations, err
}

// abortable: Nova aborts a live migration only in these states (it
// refuses while "accepted").
func abortable(status string) bool {
	return status == "queued" || status == "preparing" || status == "running"
}

// cutoffs applies the cut-off to the drain's migrations until ctx ends:
// each live migration older than the cut-off (from Nova's created_at, else
// from when the bench first saw it) that still runs is aborted through
// Nova's API, as LiveMigrateWith does for Nova's run. It logs each change
// of status and returns the servers whose migration it aborted.
func (b *bench) cutoffs(ctx context.Context, gs []*guest) map[string]bool {
	type seen struct {
		start   time.Time
		status  string
		aborted bool
	}
	state := map[int]*seen{}
	cut := map[string]bool{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for _, g := range gs {
			ms, err := b.migrations(ctx, g.sv.ID)
			if err != nil || len(ms) == 0 || ms[0].Type != "live-migration" {
				continue
			}
			m := ms[0] // newest first
			s := state[m.ID]
			if s == nil {
				s = &seen{start: time.Now()}
				if t, err := time.Parse("2006-01-02T15:04:05.000000", m.Created); err == nil && t.Before(s.start) {
					s.start = t // Nova's clock is this machine's
				}
				state[m.ID] = s
			}
			el := time.Since(s.start)
			if m.Status != s.status {
				b.logf("ferry: %s: migration %d %s after %.0fs", g.name, m.ID, m.Status, el.Seconds())
				s.status = m.Status
			}
			if !s.aborted && abortable(m.Status) && el > b.cutoff {
				b.logf("ferry: %s: migration %d still %s after the %v cut-off: aborting it through Nova's API", g.name, m.ID, m.Status, b.cutoff)
				err := stack.Do(ctx, b.a.Compute, "DELETE", fmt.Sprintf("servers/%s/migrations/%d", g.sv.ID, m.ID), nil, nil, 202)
				if err != nil {
					b.logf("ferry: %s: abort migration %d: %v (trying again)", g.name, m.ID, err)
				} else {
					s.aborted, cut[g.sv.ID] = true, true
				}
			}
		}
		select {
		case <-ctx.Done():
			return cut
		case <-tick.C:
		}
	}
}

// boot boots the run's guests on lab-a, all at once, and waits until each
// one's heartbeat shows (a dirtying one's working set populated). Their
// names sort in plan order, which is the drain's order for servers of one
// flavor whose dirty rates it does not know yet, and Nova's run's order.
func (b *bench) boot(ctx context.Context, tag string) ([]*guest, error) {
	gs := make([]*guest, len(b.plan))
	errs := make([]error, len(b.plan))
	var wg sync.WaitGroup
	for i, w := range b.plan {
		g := &guest{idx: i, workload: w, name: fmt.Sprintf("%s%d-%s", tag, i, w)}
		gs[i] = g
		wg.Add(1)
		go func() { // owner: boot (waits)
			defer wg.Done()
			errs[i] = b.bootOne(ctx, g)
		}()
	}
	b.logf("booting %d guests on %s", len(gs), from)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return gs, err
	}
	for _, g := range gs {
		b.logf("  %s (%s) ACTIVE on %s, dirtying %.1f MiB/s", g.name, g.sv.ID, g.sv.Host, g.rate)
	}
	return gs, nil
}

func (b *bench) bootOne(ctx context.Context, g *guest) error {
	sv, err := b.st.Boot(ctx, g.name, g.workload, b.st.Flavors.Bench, from)
	g.sv = sv
	if err != nil {
		return fmt.Errorf("boot %s: %w", g.name, err)
	}
	if sv.Host != from {
		return fmt.Errorf("boot %s: on %q, not %s", g.name, sv.Host, from)
	}
	if g.con, err = stack.OpenConsole(ctx, b.st.Host(from).ConsoleLog(sv.ID), time.Minute); err != nil {
		return fmt.Errorf("%s: %w", g.name, err)
	}
	ws := uint64(stack.Workloads[g.workload][0])
	deadline := time.Now().Add(3 * time.Minute)
	for {
		beats, err := g.con.Beats()
		if err != nil {
			return fmt.Errorf("%s: %w", g.name, err)
		}
		if n := len(beats); n >= 40 && beats[n-1].Dirtied >= ws {
			g.rate = beats[n-1].Rate
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d heartbeats after 3 minutes, working set not populated", g.name, len(beats))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func closeConsoles(gs []*guest) {
	for _, g := range gs {
		if g != nil && g.con != nil {
			g.con.Close()
			g.con = nil
		}
	}
}

// deleteServers deletes every server whose name starts with tag: a
// migration of one still running is aborted first (through Nova's API),
// and each is left to settle before it is deleted.
func (b *bench) deleteServers(ctx context.Context, tag string) {
	var out struct{ Servers []stack.Server }
	if err := stack.Do(ctx, b.a.Compute, "GET", "servers/detail?all_tenants=1&name="+url.QueryEscape("^"+tag), nil, &out); err != nil {
		b.logf("list servers %s*: %v", tag, err)
		return
	}
	var ids []stack.Server
	for _, s := range out.Servers {
		if strings.HasPrefix(s.Name, tag) {
			ids = append(ids, s)
		}
	}
	for _, s := range ids {
		if ms, err := b.migrations(ctx, s.ID); err == nil && len(ms) > 0 && abortable(ms[0].Status) {
			b.logf("abort migration %d of %s (%s)", ms[0].ID, s.Name, ms[0].Status)
			_ = stack.Do(ctx, b.a.Compute, "DELETE", fmt.Sprintf("servers/%s/migrations/%d", s.ID, ms[0].ID), nil, nil, 202)
		}
	}
	for _, s := range ids {
		if s.TaskState != nil {
			_, _ = b.a.WaitServer(ctx, s.ID, 2*time.Minute, func(v stack.Server) bool { return v.TaskState == nil })
		}
		if err := b.a.DeleteServer(ctx, s.ID); err != nil {
			b.logf("delete server %s (%s): %v", s.Name, s.ID, err)
		} else {
			b.logf("deleted %s (%s)", s.Name, s.ID)
		}
	}
}

// foreign lists the servers on lab-a the bench did not boot.
func (b *bench) foreign(ctx context.Context) ([]string, error) {
	var out struct{ Servers []stack.Server }
	if err := stack.Do(ctx, b.a.Compute, "GET", "servers/detail?all_tenants=1&host="+from, nil, &out); err != nil {
		return nil, err
	}
	var names []string
	for _, s := range out.Servers {
		if !strings.HasPrefix(s.Name, prefix) {
			names = append(names, fmt.Sprintf("%s (%s)", s.Name, s.ID))
		}
	}
	return names, nil
}
