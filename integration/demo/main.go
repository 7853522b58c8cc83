// Command demo is `make demo`, ferry's main job as an operator meets it: a
// real OpenStack (integration/stack: Debian 12's Zed — Keystone, Glance,
// Placement, Neutron with linuxbridge, nova-api, conductor, scheduler, and
// a stock nova-compute on each of the lab's two libvirt hosts) with ferryd
// in companion mode beside each nova-compute, cut over by ferry's own
// command. A server booted through Nova's API dirties memory; the live
// migration is started through Nova's API (`openstack server migrate
// --live-migration`); the API's view is printed while it runs, then what
// ferry did and the result. Its last line:
//
//	demo: status=… downtime_ms=… total_s=… heartbeat=continuous|broken mode=companion via=nova-api
//
// A stack that is already running (`make stack`) is used and left running;
// otherwise the demo starts one and takes it down at the end.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"opendev.org/x/ferry/integration/stack"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

func main() {
	start := time.Now()
	logf := func(f string, a ...any) {
		fmt.Printf("[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(f, a...))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	logf("starting the stack (the first start on a machine initialises the databases: a few minutes)")
	st, err := stack.Acquire(ctx, stack.Options{Logf: logf})
	if err != nil {
		fmt.Println("demo: status=error downtime_ms=0 total_s=0 heartbeat=broken mode=companion via=nova-api")
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	line, ok := run(ctx, st, logf)
	st.Close()
	fmt.Println(line)
	if !ok {
		os.Exit(1)
	}
}

func run(ctx context.Context, st *stack.Stack, logf func(string, ...any)) (string, bool) {
	failed := func(err error) (string, bool) {
		logf("error: %v", err)
		return fmt.Sprintf("demo: status=error downtime_ms=0 total_s=0 heartbeat=broken mode=companion via=nova-api (%v)", err), false
	}
	fs := map[string]*stack.Ferryd{}
	defer func() {
		for _, f := range fs {
			if err := st.ToStock(context.Background(), f); err != nil {
				logf("back to the stock shape: %v", err)
			}
		}
	}()
	for _, h := range []string{"lab-a", "lab-b"} {
		logf("%s: ferryd cutover to-companion (nova-compute moves to its own exchange; ferryd takes the host's queue), then ferryd", h)
		f, err := st.ToCompanion(ctx, h, stack.FerrydOptions{Migration: "  live_migration_downtime: 2000\n  live_migration_permit_post_copy: true\n  live_migration_permit_auto_converge: true"})
		if err != nil {
			return failed(err)
		}
		fs[h] = f
	}
	a, err := st.API(ctx)
	if err != nil {
		return failed(err)
	}
	logf("openstack server create: a guest with a Neutron port on lab-a that dirties a 64 MiB working set at 32 MiB/s")
	sv, err := st.Boot(ctx, fmt.Sprintf("demo-%d", time.Now().Unix()), "dirty", st.Flavors.Small, "lab-a")
	if err != nil {
		return failed(err)
	}
	defer func() {
		if err := a.DeleteServer(context.Background(), sv.ID); err != nil {
			logf("delete the server: %v", err)
		}
	}()
	logf("server %s ACTIVE on %s", sv.ID, sv.Host)
	con, err := stack.OpenConsole(ctx, st.Host("lab-a").ConsoleLog(sv.ID), time.Minute)
	if err != nil {
		return failed(err)
	}
	if _, err := con.Wait(ctx, 20, 3*time.Minute); err != nil {
		return failed(err)
	}
	con.Close()
	const capMiBps = 16
	if err := st.CapMigration(ctx, capMiBps); err != nil {
		return failed(err)
	}
	defer func() { _ = st.CapMigration(context.Background(), 0) }()
	logf("the migration network is capped at %d MiB/s (below the guest's dirty rate); ferry's downtime budget is 2 s, post-copy and auto-converge permitted", capMiBps)
	logf("openstack server migrate --live-migration --host lab-b %s", sv.ID)
	var lastPrint time.Duration
	m, err := st.LiveMigrateWith(ctx, sv.ID, "lab-b", 15*time.Minute, stack.MigrateOptions{
		Sample: func(at time.Duration, _ virt.JobStats) {
			if at-lastPrint < 2*time.Second {
				return
			}
			lastPrint = at
			ms, err := a.Migrations(ctx, sv.ID)
			if err != nil || len(ms) == 0 {
				return
			}
			r := ms[0]
			if ip, err := a.InProgress(ctx, sv.ID, r.ID); err == nil { // the byte counts: the in-progress view only
				r = ip
			}
			logf("Nova's API: migration %d %s; memory %s processed of %s; disk %s of %s", r.ID, r.Status,
				mib(r.MemoryProcessed), mib(r.MemoryTotal), mib(r.DiskProcessed), mib(r.DiskTotal))
		}})
	if err != nil {
		return failed(err)
	}
	logf("Nova's API: migration %d %s; server on %s", m.Migration.ID, m.Migration.Status, m.To)
	j, err := migration.ReadEntry(fs["lab-a"].StateDir, m.Migration.UUID)
	if err != nil {
		return failed(fmt.Errorf("ferry's journal on lab-a: %w", err))
	}
	logf("ferry ran it (journal on lab-a): %s, copy: %s", j.Phase, j.Prep.CopyNote)
	for _, act := range j.Record.Actions {
		logf("ferry acted at %.1fs: %s %s", act.At.Seconds(), act.Action, act.Reason)
	}
	hb := "continuous"
	if m.Continuity != nil {
		hb = "broken"
		logf("heartbeat: %v", m.Continuity)
	} else if len(m.Src) > 0 && len(m.Dst) > 0 {
		logf("heartbeat continues on lab-b: n=%d → n=%d, same boot id %s", m.Src[len(m.Src)-1].N, m.Dst[0].N, m.Dst[0].Boot)
	}
	line := fmt.Sprintf("demo: status=%s downtime_ms=%d total_s=%.1f heartbeat=%s mode=companion via=nova-api",
		m.Migration.Status, j.Record.Downtime.Milliseconds(), j.Record.Total.Seconds(), hb)
	return line, m.Migration.Status == "completed" && hb == "continuous"
}

func mib(p *int64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%d MiB", *p>>20)
}
