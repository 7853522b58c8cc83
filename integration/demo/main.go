// Command demo is `make demo`: it brings up the two-host lab, boots a guest
// that dirties memory on host A, live-migrates it to host B and back through
// go-libvirt (peer to peer, local disk copied over the migration network,
// volumes left in place) and prints what happened. Until ferryd exists it
// drives libvirt directly; later it drives the migration through ferryd.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"opendev.org/x/ferry/integration/lab"
)

func main() {
	start := time.Now()
	logf := func(f string, a ...any) {
		fmt.Printf("[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(f, a...))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Options{Logf: logf})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	ok := run(ctx, l, logf)
	l.Close()
	if !ok {
		os.Exit(1)
	}
}

func run(ctx context.Context, l *lab.Lab, logf func(string, ...any)) bool {
	a, b := l.Host("a"), l.Host("b")
	logf("booting a guest on host %s (256 MiB RAM, dirtying 32 MiB at 20 MiB/s, TCG)", a.Hostname)
	g, err := l.StartGuest(ctx, a, lab.GuestSpec{Name: "demo", WSMiB: 32, RateMiBps: 20})
	if err != nil {
		logf("demo: %v", err)
		return false
	}
	var last lab.MigrationResult
	for _, hop := range [][2]*lab.Host{{a, b}, {b, a}} {
		logf("live-migrating %s from %s to %s (p2p, copy %s over %s)", g.Spec.Name, hop[0].Hostname, hop[1].Hostname, "vda", hop[1].Mig)
		r, err := l.Migrate(ctx, g, hop[0], hop[1])
		if err != nil {
			logf("demo: %v", err)
			return false
		}
		logf("%s", r)
		last = r
		if r.Continuity != nil {
			break
		}
	}
	hb := "continuous"
	if last.Continuity != nil {
		hb = "broken"
	}
	fmt.Printf("demo: status=%s downtime_ms=%d total_s=%.1f heartbeat=%s\n", map[bool]string{true: "completed", false: "failed"}[last.Continuity == nil],
		last.Stats.Downtime.Milliseconds(), last.Wall.Seconds(), hb)
	return last.Continuity == nil
}
