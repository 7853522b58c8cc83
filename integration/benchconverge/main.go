// Command benchconverge is `make bench-converge`: on the lab, one guest,
// a 50 MiB/s migration cap and a small local disk, it migrates under a matrix
// of dirty rates (0, ½, 1 and 2 × the cap, over a 256 MiB working set) with
// three controllers — plain libvirt (p2p live, no tuning), Nova's policy
// with its unscaled defaults (downtime steps 50→500 ms every 75 s × data GiB,
// completion timeout 800 s × data GiB, then abort) and ferry (default
// configuration with post-copy permitted) — and prints, per cell, what
// moved, the measured bandwidth B and dirty rate D, the floor F, the
// physical lower bound T_phys, the total, the downtime and whether it
// completed. Not a test; not in CI.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

const (
	capMiBps = 50
	wsMiB    = 256
	budget   = 500 * time.Millisecond // ferry's default downtime budget (Nova's live_migration_downtime)
)

type cell struct {
	ctl       string
	rate      int // requested MiB/s
	completed bool
	total     time.Duration
	downtime  time.Duration
	mem, disk uint64  // RAM sent (re-sends included), disk mirrored
	first     uint64  // bytes of the first memory pass: M, the RAM that had to move
	b, f      float64 // bytes/s, bytes
	d         float64 // achieved dirty rate, MiB/s
}

func (c cell) tphys() time.Duration {
	B := c.b
	if B <= 0 {
		B = capMiBps << 20
	}
	D := c.d * (1 << 20)
	secs := float64(c.disk) / B
	M := float64(c.first)
	if M == 0 {
		M = float64(c.mem)
	}
	if D < B && c.f/B <= budget.Seconds() {
		secs += M / (B - D)
	} else {
		secs += (M + c.f) / B
	}
	return time.Duration(secs * float64(time.Second))
}

func main() {
	cutoff := flag.Duration("cutoff", 600*time.Second, "give up on libvirt and Nova cells after this long")
	runs := flag.Int("runs", 3, "ferry runs per cell (median)")
	flag.Parse()
	ctx := context.Background()
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	l, err := lab.Start(ctx, lab.Options{Logf: logf})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer l.Close()
	g, err := l.StartGuest(ctx, l.Host("a"), lab.GuestSpec{Name: "bench", MemMiB: 384, LocalDiskMiB: 64})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	b := &bench{l: l, g: g, cutoff: *cutoff, logf: logf}
	fmt.Printf("bench-converge: cap %d MiB/s, working set %d MiB, guest 384 MiB RAM, local disk 64 MiB, ferry budget %v, post-copy permitted for ferry; cutoff %v\n",
		capMiBps, wsMiB, budget, *cutoff)
	// over_s = total − T_phys: the time the bandwidth model does not
	// explain (the destination QEMU's start, the NBD and switch-over
	// handshakes), which dominates the ratio of a small, idle guest.
	fmt.Printf("%-8s %5s %4s %6s %9s %6s %7s %7s %8s %8s %8s %6s %6s %9s %s\n", "ctl", "D_req", "run", "M_MiB", "RAM_sent", "disk",
		"B_MiB/s", "D_MiB/s", "F_MiB", "T_phys", "total", "over_s", "ratio", "downtime", "completed")
	var all []cell
	for _, rate := range []int{0, capMiBps / 2, capMiBps, 2 * capMiBps} {
		for _, ctl := range []string{"libvirt", "nova", "ferry"} {
			n := 1
			if ctl == "ferry" {
				n = *runs
			}
			var cs []cell
			for r := 0; r < n; r++ {
				c, err := b.cell(ctx, ctl, rate)
				if err != nil {
					logf("%s at %d MiB/s: %v", ctl, rate, err)
					continue
				}
				cs = append(cs, c)
				tp := c.tphys().Seconds()
				fmt.Printf("%-8s %5d %4d %6d %9d %6d %7.1f %7.1f %8.1f %8.1f %8.1f %6.1f %6.2f %9v %v\n", ctl, rate, r+1, c.first>>20, c.mem>>20, c.disk>>20,
					c.b/(1<<20), c.d, c.f/(1<<20), tp, c.total.Seconds(), c.total.Seconds()-tp, c.total.Seconds()/tp,
					c.downtime.Round(time.Millisecond), c.completed)
			}
			if len(cs) > 0 {
				sort.Slice(cs, func(i, j int) bool { return cs[i].total < cs[j].total })
				all = append(all, cs[len(cs)/2])
			}
		}
	}
	done := map[string]int{}
	cells := map[string]int{}
	worstRatio, worstDown := 0.0, time.Duration(0)
	ferryBeatsOthers := true
	for _, c := range all {
		cells[c.ctl]++
		if c.completed {
			done[c.ctl]++
		}
		if c.ctl == "ferry" && c.completed {
			worstRatio = max(worstRatio, c.total.Seconds()/c.tphys().Seconds())
			worstDown = max(worstDown, c.downtime)
		}
	}
	for _, c := range all {
		if c.ctl != "ferry" && c.completed {
			continue
		}
		if c.ctl != "ferry" {
			for _, f := range all {
				if f.ctl == "ferry" && f.rate == c.rate && !f.completed {
					ferryBeatsOthers = false
				}
			}
		}
	}
	fmt.Printf("targets: ferry completes every cell (%v), and every cell the others do not (%v); total ≤ 1.25 × T_phys (worst %.2f)\n",
		done["ferry"] == cells["ferry"], ferryBeatsOthers, worstRatio)
	fmt.Printf("bench-converge: ferry_completed=%d/%d nova_completed=%d/%d libvirt_completed=%d/%d worst_ratio=%.2f worst_downtime_ms=%d\n",
		done["ferry"], cells["ferry"], done["nova"], cells["nova"], done["libvirt"], cells["libvirt"], worstRatio, worstDown.Milliseconds())
}

type bench struct {
	l      *lab.Lab
	g      *lab.Guest
	cutoff time.Duration
	logf   func(string, ...any)
	n      int
}

func (b *bench) spec(to *lab.Host) virt.MigrateSpec {
	u, _ := hostnet.For(hostnet.Dest{Host: to.Hostname, Mgmt: to.Mgmt.String(), Migration: to.Mig.String()}, false)
	return virt.MigrateSpec{DestURI: u.Control, MigrateURI: u.Migrate, DisksURI: u.Disks, Disks: []string{"vda"},
		Copy: virt.CopyFull, Bandwidth: capMiBps, PersistDest: true}
}

// cell runs one migration and measures it.
func (b *bench) cell(ctx context.Context, ctl string, rate int) (cell, error) {
	from, to, err := b.l.Where(ctx, b.g)
	if err != nil {
		return cell{}, err
	}
	ws := wsMiB
	if rate == 0 {
		ws = 0
	}
	if err := b.l.SetDirty(ctx, from, b.g, ws, rate); err != nil {
		return cell{}, err
	}
	time.Sleep(3 * time.Second) // let the achieved rate show
	c := cell{ctl: ctl, rate: rate}
	if beats, _ := b.g.Heartbeats(from); len(beats) > 0 {
		c.d = beats[len(beats)-1].Rate
	}
	if err := b.l.PrecreateDisk(ctx, to, b.g); err != nil {
		return c, err
	}
	if ctl == "ferry" {
		err = b.ferry(ctx, from, to, &c)
	} else {
		err = b.manual(ctx, ctl, from, to, &c)
	}
	return c, err
}

// manual runs plain libvirt or Nova's policy, observing with ferry's
// estimator (never acting on it) to report B and F.
func (b *bench) manual(ctx context.Context, ctl string, from, to *lab.Host, c *cell) error {
	src, err := from.Dial(ctx)
	if err != nil {
		return err
	}
	defer src.Close()
	mc, err := from.Dial(ctx)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- mc.Migrate(context.Background(), b.g.Spec.Name, b.spec(to)) }()
	var st migration.State
	p := migration.Policy{}.WithDefaults()
	// Nova: data_gb = max(RAM GiB, 2) + max(disk GiB, 2) = 4; steps every 75 s × 4, 50 → 500 ms in 10 steps.
	const stepDelay, steps = 300 * time.Second, 10
	novaStep := -1
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var merr error
loop:
	for {
		select {
		case merr = <-done:
			break loop
		case <-t.C:
			el := time.Since(start)
			if js, err := src.JobStats(ctx, b.g.Spec.Name, false); err == nil && js.Type == virt.JobUnbounded {
				migration.Decide(p, &st, migration.Sample{At: el, Stats: js})
			}
			if ctl == "nova" {
				if k := min(int(el/stepDelay), steps); k > novaStep {
					novaStep = k
					d := 50*time.Millisecond + time.Duration(k)*45*time.Millisecond
					_ = src.Control(ctx, b.g.Spec.Name, virt.Control{Op: virt.OpSetDowntime, Downtime: d})
				}
			}
			if el > b.cutoff {
				_ = src.Control(ctx, b.g.Spec.Name, virt.Control{Op: virt.OpAbort})
			}
		}
	}
	mc.Close()
	c.total = time.Since(start)
	c.b, c.f, c.first = st.Bps, float64(st.Floor), st.FirstPass
	if merr != nil {
		b.logf("%s: ended without completing after %v: %v", ctl, c.total.Round(time.Second), merr)
		return nil
	}
	c.completed = true
	js, err := src.JobStats(ctx, b.g.Spec.Name, true)
	if err == nil {
		c.downtime, c.mem, c.disk = js.Downtime, js.MemProcessed, js.DiskProcessed
		c.total = js.Elapsed
		if c.first == 0 {
			c.first = js.MemProcessed
		}
	}
	return src.Control(ctx, b.g.Spec.Name, virt.Control{Op: virt.OpUndefine})
}

// hooks: the bench prepares the destination itself (cell pre-creates the disk).
type hooks struct{}

func (h hooks) Prepare(ctx context.Context, m *migration.Migration) error     { return nil }
func (h hooks) Rollback(context.Context, *migration.Migration, string)        {}
func (h hooks) Finish(context.Context, *migration.Migration) error            { return nil }
func (h hooks) Phase(context.Context, *migration.Migration)                   {}
func (h hooks) Progress(context.Context, *migration.Migration, virt.JobStats) {}

// ferry runs the engine with its default configuration, post-copy permitted.
func (b *bench) ferry(ctx context.Context, from, to *lab.Host, c *cell) error {
	dir, err := os.MkdirTemp("", "bench-converge-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lg := logrus.New()
	lg.SetLevel(logrus.WarnLevel)
	m, err := migration.NewManager(migration.Options{StateDir: dir, LocalURI: from.URI(), Hooks: hooks{},
		Log: logrus.NewEntry(lg),
		Dial: func(ctx context.Context, uri string) (migration.Hypervisor, error) {
			return virt.Dial(ctx, uri, virt.Timeouts{})
		}})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() { _ = m.Run(rctx); close(runDone) }()
	defer func() { cancel(); <-runDone }()
	time.Sleep(50 * time.Millisecond)
	b.n++
	id := fmt.Sprintf("bench-%d-%d", os.Getpid(), b.n)
	_, err = m.Start(ctx, migration.Request{ID: id, Domain: b.g.Spec.Name, InstanceUUID: b.g.UUID, DestHost: to.Hostname,
		DestCheckURI: to.URI(), Spec: b.spec(to), Policy: migration.Policy{PostCopy: true}})
	if err != nil {
		return err
	}
	for {
		s, _ := m.Status(id)
		if s.Phase.Terminal() {
			r := s.Record
			c.completed = s.Phase == migration.PhaseCompleted
			c.total, c.downtime, c.mem, c.disk, c.b, c.f = r.Total, r.Downtime, r.MemBytes, r.DiskBytes, r.Bandwidth, float64(r.Floor)
			c.first = r.FirstPass
			if !c.completed {
				b.logf("ferry: %s: %s", s.Phase, s.Reason)
			}
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}
