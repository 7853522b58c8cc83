// Command demo is `make demo`, ferry's main job: it brings up the two-host
// lab, starts a ferryd on each host, boots a guest on host A that dirties a
// 64 MiB working set faster than the 50 MiB/s migration cap, and has the
// live migration started exactly as a Zed conductor starts it
// (python3-nova's ComputeAPI: check_can_live_migrate_destination to B, then
// the live_migration cast to A). It prints the conductor's view while the
// migration runs and the result, then tears the lab down. Its last line:
//
//	demo: status=completed downtime_ms=… total_s=… heartbeat=continuous
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"opendev.org/x/ferry/integration/ferrylab"
	"opendev.org/x/ferry/integration/lab"
)

func main() {
	start := time.Now()
	logf := func(f string, a ...any) {
		fmt.Printf("[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(f, a...))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Options{Logf: logf})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	line, ok := run(ctx, l, logf)
	l.Close()
	fmt.Println(line)
	if !ok {
		os.Exit(1)
	}
}

func run(ctx context.Context, l *lab.Lab, logf func(string, ...any)) (string, bool) {
	failed := func(err error) (string, bool) {
		logf("error: %v", err)
		return fmt.Sprintf("demo: status=error downtime_ms=0 total_s=0 heartbeat=broken (%v)", err), false
	}
	a, b := l.Host("a"), l.Host("b")
	logf("starting ferryd on %s and %s, and the python3-nova conductor stand-in", a.Hostname, b.Hostname)
	env, err := ferrylab.Start(ctx, l, ferrylab.Options{Logf: logf,
		Migration: "  live_migration_downtime: 2000\n  live_migration_bandwidth: 50"})
	if err != nil {
		return failed(err)
	}
	defer env.Close()
	logf("booting a guest on %s (384 MiB RAM, TCG)", a.Hostname)
	g, err := l.StartGuest(ctx, a, lab.GuestSpec{Name: "demo-vm", MemMiB: 384})
	if err != nil {
		return failed(err)
	}
	if err := l.SetDirty(ctx, a, g, 64, 100); err != nil {
		return failed(err)
	}
	logf("the guest dirties a 64 MiB working set at 100 MiB/s; the migration is capped at 50 MiB/s, budget 2 s downtime")
	dstOff := g.LogOffset(b)
	const id = 1
	migUUID := "5f3c2a10-7e4b-4d8e-a1c2-000000000001"
	logf("conductor: check_can_live_migrate_destination → %s, then live_migration cast → %s", b.Hostname, a.Hostname)
	if err := env.Conductor.Send(map[string]any{"op": "migrate", "uuid": g.UUID, "name": g.Spec.Name,
		"source": a.Hostname, "dest": b.Hostname, "migration_id": id, "migration_uuid": migUUID}); err != nil {
		return failed(err)
	}
	last := ""
	_, err = env.Conductor.Next(ctx, 10*time.Minute, func(e ferrylab.Event) bool {
		switch {
		case e.Str("event") == "precheck_ok":
			logf("pre-checks passed on both hosts")
		case e.Str("event") == "precheck_failed":
			last = "refused"
			logf("pre-check refused: %s: %s", e.Str("class"), e.Str("message"))
			return true
		case e.Str("object") == "Migration" && e.Str("method") == "save":
			f, _ := e["fields"].(map[string]any)
			if s, ok := f["status"].(string); ok {
				last = s
				logf("Migration.status = %s", s)
				return s == "completed" || s == "failed" || s == "cancelled" || s == "error"
			}
			if mp, ok := f["memory_processed"].(float64); ok && (mp > 0 || f["disk_processed"] != 0.0) {
				mt, _ := f["memory_total"].(float64)
				mr, _ := f["memory_remaining"].(float64)
				dp, _ := f["disk_processed"].(float64)
				dt, _ := f["disk_total"].(float64)
				logf("progress: memory %d/%d MiB sent, %d MiB remaining; disk %d/%d MiB", int(mp)>>20, int(mt)>>20, int(mr)>>20, int(dp)>>20, int(dt)>>20)
			}
		case e.Str("object") == "Instance" && e.Str("method") == "save":
			if f, _ := e["fields"].(map[string]any); f["host"] != nil {
				logf("Instance.host = %v (saved by the destination)", f["host"])
			}
		}
		return false
	})
	if err != nil {
		return failed(err)
	}
	downtime, total := 0.0, 0.0
	if j, err := env.Ferryd["a"].Journal(migUUID); err == nil {
		rec, _ := j["record"].(map[string]any)
		downtime, _ = rec["downtime"].(float64)
		total, _ = rec["total"].(float64)
		if acts, ok := rec["actions"].([]any); ok {
			for _, x := range acts {
				a := x.(map[string]any)
				logf("ferry acted at %.1fs: %v %v", a["at"].(float64)/1e9, a["action"], a["reason"])
			}
		}
	}
	hb := "continuous"
	if last == "completed" {
		src, _ := g.Heartbeats(a)
		dst, err := l.BeatsAfter(ctx, b, g, dstOff, 20, time.Minute)
		if err == nil {
			err = lab.Continuity(src, dst)
		}
		if err != nil {
			hb = "broken"
			logf("heartbeat: %v", err)
		} else {
			logf("heartbeat continues on %s: n=%d → n=%d, same boot id %s", b.Hostname, src[len(src)-1].N, dst[0].N, dst[0].Boot)
		}
	} else {
		hb = "broken"
	}
	line := fmt.Sprintf("demo: status=%s downtime_ms=%d total_s=%.1f heartbeat=%s", last, int64(downtime/1e6), total/1e9, hb)
	return line, last == "completed" && hb == "continuous"
}
