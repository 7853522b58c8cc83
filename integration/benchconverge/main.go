// Command benchconverge is `make bench-converge`: in the stack
// (integration/stack: the lab with a real OpenStack around it), with the
// migration link capped at 50 MiB/s by tc on both hosts' mig0 for every
// system, it migrates a 384 MiB guest under a matrix of dirty rates (0, ½,
// 1 and 2 × the cap, over a 256 MiB working set) with four controllers —
// plain libvirt (p2p live, no tuning), the real Nova (the stock
// nova-compute through Nova's API, nova.conf's defaults), the real Nova
// with post-copy and auto-converge permitted, and ferry (default
// configuration with post-copy permitted) — and prints, per cell, what
// moved, the measured bandwidth B and dirty rate D, the floor F, the
// physical lower bound T_phys (which includes the job's setup_time: the
// destination QEMU's start, a cost no policy changes), the total, the
// downtime and whether it completed within the cut-off. Not a test; not in
// CI.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/integration/stack"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

const (
	capMiBps = 50
	wsMiB    = 256
	budget   = 500 * time.Millisecond // ferry's default downtime budget (Nova's live_migration_downtime)
)

// The real Nova's second row: what nova.conf permits beyond its defaults.
var novaPC = map[string]map[string]string{"libvirt": {
	"live_migration_permit_post_copy": "true", "live_migration_permit_auto_converge": "true"}}

type cell struct {
	ctl       string
	rate      int // requested MiB/s
	completed bool
	total     time.Duration
	downtime  time.Duration
	setup     time.Duration // the job's setup_time (libvirt); 0 where libvirt keeps no completed job (post-copy)
	mem, disk uint64        // RAM sent (re-sends included), disk mirrored
	first     uint64        // bytes of the first memory pass: M, the RAM that had to move
	b, f      float64       // bytes/s, bytes
	d         float64       // achieved dirty rate, MiB/s
}

// tphys is the physical lower bound: the disk and the RAM through the
// link, plus the job's setup time, the same term for every system.
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
	return time.Duration(secs*float64(time.Second)) + c.setup
}

func main() {
	cutoff := flag.Duration("cutoff", 600*time.Second, "give up on a cell (any system) after this long")
	runs := flag.Int("runs", 3, "ferry runs per cell (median)")
	ratesFlag := flag.String("rates", "0,25,50,100", "dirty rates (MiB/s) of the matrix")
	ctlsFlag := flag.String("ctl", "libvirt,nova,nova-pc,ferry", "controllers of the matrix")
	flag.Parse()
	var rates []int
	for _, r := range strings.Split(*ratesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || (n != 0 && stack.Workloads[fmt.Sprintf("bench-%d", n)] == [2]int{}) {
			fmt.Fprintf(os.Stderr, "-rates: %q: want 0 or one of the stack's bench workloads (25, 50, 100)\n", r)
			os.Exit(2)
		}
		rates = append(rates, n)
	}
	ctls := map[string]bool{}
	for _, c := range strings.Split(*ctlsFlag, ",") {
		ctls[strings.TrimSpace(c)] = true
	}
	ctx := context.Background()
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	s, err := stack.Start(ctx, stack.Options{Logf: logf})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer s.Close()
	if err := s.CapMigration(ctx, capMiBps); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	l := s.Lab
	g, err := l.StartGuest(ctx, l.Host("a"), lab.GuestSpec{Name: "bench", MemMiB: 384, LocalDiskMiB: 64})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	b := &bench{s: s, l: l, g: g, cutoff: *cutoff, logf: logf}
	fmt.Printf("bench-converge: cap %d MiB/s (tc on mig0, every system), working set %d MiB, guest 384 MiB RAM, lab guest's local disk 64 MiB "+
		"(Nova's: its %d MiB root image), ferry budget %v, post-copy permitted for ferry; cutoff %v\n",
		capMiBps, wsMiB, stack.RootImageMiB, budget, *cutoff)
	// over_s = total − T_phys: the time the bandwidth model and the setup
	// term do not explain (the NBD and switch-over handshakes).
	fmt.Printf("%-8s %5s %4s %6s %9s %6s %7s %7s %8s %7s %8s %8s %6s %6s %9s %s\n", "ctl", "D_req", "run", "M_MiB", "RAM_sent", "disk",
		"B_MiB/s", "D_MiB/s", "F_MiB", "setup_s", "T_phys", "total", "over_s", "ratio", "downtime", "completed")
	var all []cell
	run := func(ctl string, rate int) {
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
			fmt.Printf("%-8s %5d %4d %6d %9d %6d %7.1f %7.1f %8.1f %7.2f %8.1f %8.1f %6.1f %6.2f %9v %v\n", ctl, rate, r+1, c.first>>20, c.mem>>20, c.disk>>20,
				c.b/(1<<20), c.d, c.f/(1<<20), c.setup.Seconds(), tp, c.total.Seconds(), c.total.Seconds()-tp, c.total.Seconds()/tp,
				c.downtime.Round(time.Millisecond), c.completed)
		}
		if len(cs) > 0 {
			sort.Slice(cs, func(i, j int) bool { return cs[i].total < cs[j].total })
			all = append(all, cs[len(cs)/2])
		}
	}
	for _, rate := range rates {
		for _, ctl := range []string{"libvirt", "nova", "ferry"} {
			if ctls[ctl] {
				run(ctl, rate)
			}
		}
	}
	if ctls["nova-pc"] {
		if err := s.RestartComputes(ctx, novaPC); err != nil {
			logf("nova-pc: %v", err)
		} else {
			for _, rate := range rates {
				run("nova-pc", rate)
			}
		}
	}
	summary(all)
}

func summary(all []cell) {
	done := map[string]int{}
	cells := map[string]int{}
	worstRatio, worstDown := 0.0, time.Duration(0)
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
	ferryBeatsOthers := true
	for _, c := range all {
		if c.ctl == "ferry" || !c.completed {
			continue
		}
		for _, f := range all {
			if f.ctl == "ferry" && f.rate == c.rate && !f.completed {
				ferryBeatsOthers = false
			}
		}
	}
	fmt.Printf("targets: ferry completes every cell (%v), and every cell the others complete (%v); total ≤ 1.10 × T_phys (worst %.2f)\n",
		done["ferry"] == cells["ferry"], ferryBeatsOthers, worstRatio)
	// nova_completed is the real Nova with nova.conf's defaults (the
	// anchor column); realnova_completed counts both real-Nova rows.
	fmt.Printf("bench-converge: ferry_completed=%d/%d nova_completed=%d/%d libvirt_completed=%d/%d worst_ratio=%.2f worst_downtime_ms=%d realnova_completed=%d/%d\n",
		done["ferry"], cells["ferry"], done["nova"], cells["nova"], done["libvirt"], cells["libvirt"], worstRatio, worstDown.Milliseconds(),
		done["nova"]+done["nova-pc"], cells["nova"]+cells["nova-pc"])
}

type bench struct {
	s      *stack.Stack
	l      *lab.Lab
	g      *lab.Guest
	cutoff time.Duration
	logf   func(string, ...any)
	n      int
}

// spec is the lab guest's migration: no bandwidth parameter (tc caps the
// link for every system).
func (b *bench) spec(to *lab.Host) virt.MigrateSpec {
	u, _ := hostnet.For(hostnet.Dest{Host: to.Hostname, Mgmt: to.Mgmt.String(), Migration: to.Mig.String()}, false)
	return virt.MigrateSpec{DestURI: u.Control, MigrateURI: u.Migrate, DisksURI: u.Disks, Disks: []string{"vda"},
		Copy: virt.CopyFull, PersistDest: true}
}

// cell runs one migration and measures it.
func (b *bench) cell(ctx context.Context, ctl string, rate int) (cell, error) {
	if ctl == "nova" || ctl == "nova-pc" {
		return b.nova(ctx, ctl, rate)
	}
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
		err = b.libvirt(ctx, from, to, &c)
	}
	if err == nil && c.completed {
		c.setup = setupTime(ctx, to, b.g.Spec.Name)
	}
	return c, err
}

// setupTime reads the destination's completed job (empty after a
// post-copy switch).
func setupTime(ctx context.Context, to *lab.Host, dom string) time.Duration {
	c, err := to.Dial(ctx)
	if err != nil {
		return 0
	}
	defer c.Close()
	js, err := c.JobStats(ctx, dom, true)
	if err != nil {
		return 0
	}
	return js.SetupTime
}

// libvirt runs plain libvirt, observing with ferry's estimator (never
// acting on it) to report B and F, and aborting at the cut-off.
func (b *bench) libvirt(ctx context.Context, from, to *lab.Host, c *cell) error {
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
			if el > b.cutoff {
				_ = src.Control(ctx, b.g.Spec.Name, virt.Control{Op: virt.OpAbort})
			}
		}
	}
	mc.Close()
	c.total = time.Since(start)
	c.b, c.f, c.first = st.Bps, float64(st.Floor), st.FirstPass
	if merr != nil {
		b.logf("libvirt: ended without completing after %v: %v", c.total.Round(time.Second), merr)
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

// nova boots a server of the rate's workload on lab-a through Nova's API
// and has the real Nova live-migrate it to lab-b (the stock nova-compute
// on both, with the row's nova.conf), observing the source's job with
// ferry's estimator; the cut-off aborts it through the API.
func (b *bench) nova(ctx context.Context, ctl string, rate int) (cell, error) {
	c := cell{ctl: ctl, rate: rate}
	workload := "idle"
	if rate > 0 {
		workload = fmt.Sprintf("bench-%d", rate)
	}
	b.n++
	sv, err := b.s.Boot(ctx, fmt.Sprintf("bench-%s-%d", ctl, b.n), workload, b.s.Flavors.Bench, "lab-a")
	if err != nil {
		return c, err
	}
	a, err := b.s.API(ctx)
	if err != nil {
		return c, err
	}
	defer func() {
		if err := a.DeleteServer(context.Background(), sv.ID); err != nil {
			b.logf("%s: delete server %s: %v", ctl, sv.ID, err)
		}
	}()
	con, err := stack.OpenConsole(ctx, b.s.Host("lab-a").ConsoleLog(sv.ID), time.Minute)
	if err != nil {
		return c, err
	}
	beats, err := con.Wait(ctx, 40, 3*time.Minute) // the dirtier's working set populated, its rate showing
	con.Close()
	if err != nil {
		return c, err
	}
	c.d = beats[len(beats)-1].Rate
	var st migration.State
	p := migration.Policy{}.WithDefaults()
	m, err := b.s.LiveMigrateWith(ctx, sv.ID, "lab-b", b.cutoff+5*time.Minute, stack.MigrateOptions{Cutoff: b.cutoff,
		Sample: func(at time.Duration, js virt.JobStats) {
			migration.Decide(p, &st, migration.Sample{At: at, Stats: js})
		}})
	if err != nil {
		return c, err
	}
	c.b, c.f, c.first = st.Bps, float64(st.Floor), st.FirstPass
	c.total = m.Wall
	if m.Migration.Status != "completed" {
		b.logf("%s: migration %s after %v", ctl, m.Migration.Status, m.Wall.Round(time.Second))
		return c, nil
	}
	c.completed = true
	if m.Job.Type == virt.JobCompleted {
		c.total, c.downtime, c.setup = m.Job.Elapsed, m.Job.Downtime, m.Job.SetupTime
		c.mem, c.disk = m.Job.MemProcessed, m.Job.DiskProcessed
	} else {
		// a post-copy switch: libvirt keeps no completed job on the
		// destination, and Nova undefines the source's domain at once.
		b.logf("%s: no completed-job statistics (post-copy): total is the API's wall time, downtime and setup_time not reported", ctl)
	}
	if c.first == 0 {
		c.first = c.mem
	}
	if m.Continuity != nil {
		b.logf("%s: heartbeat broken: %v", ctl, m.Continuity)
	}
	return c, nil
}

// hooks: the bench prepares the destination itself (cell pre-creates the
// disk) and keeps no records.
type hooks struct{ to *lab.Host }

func (h hooks) Prepare(ctx context.Context, m migration.Migration) (migration.Preparation, error) {
	return migration.Preparation{MigrationAddr: h.to.Mig.String(), Copy: virt.CopyFull}, nil
}
func (hooks) Reports(migration.Migration, migration.Phase, migration.Phase) []string { return nil }
func (hooks) Deliver(context.Context, migration.Migration, migration.Report) error   { return nil }
func (hooks) Progress(context.Context, migration.Migration, virt.JobStats) error     { return nil }

// ferry runs the engine with its default configuration, post-copy permitted.
func (b *bench) ferry(ctx context.Context, from, to *lab.Host, c *cell) error {
	dir, err := os.MkdirTemp("", "bench-converge-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lg := logrus.New()
	lg.SetLevel(logrus.WarnLevel)
	m, err := migration.NewManager(migration.Options{StateDir: dir, LocalURI: from.URI(), Destination: hooks{to}, Records: hooks{to},
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
	_, err = m.Start(ctx, migration.Request{ID: id, InstanceUUID: b.g.UUID, Dest: hostnet.Dest{Host: to.Hostname, Mgmt: to.Mgmt.String()},
		DestCheckURI: to.URI(), Job: migration.Job{Disks: []string{"vda"}, Bandwidth: capMiBps}, Policy: migration.Policy{PostCopy: true}})
	if err != nil {
		return err
	}
	start, aborted := time.Now(), false
	for {
		if time.Since(start) > b.cutoff && !aborted { // the same cut-off as every system
			aborted = true
			_ = m.Abort(ctx, id)
		}
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
