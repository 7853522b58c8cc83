package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"opendev.org/x/ferry/pkg/openstack"
	"opendev.org/x/ferry/pkg/status"
)

func (a *app) drainCmd() *cobra.Command {
	var f format
	var bw float64
	var maxParallel int
	var sample time.Duration
	c := &cobra.Command{
		Use:   "drain HOST",
		Short: "Live-migrate every server off a compute host, the scheduler choosing each destination",
		Long: "Live-migrate every ACTIVE or PAUSED server off a compute host through Nova's API, the scheduler\n" +
			"choosing each destination. Servers in another state, or busy with another task, are skipped and\n" +
			"reported. The shortest migrations start first (M/(B−d): RAM over the bandwidth left after the dirty\n" +
			"rate an earlier migration measured, or else that the host's ferryd measures now over --sample;\n" +
			"smallest RAM first when the bandwidth is unknown); at most\n" +
			"--max-parallel run at once, and with --bandwidth known a migration starts only if every one running\n" +
			"beside it, and itself, would still converge on its share of the link.\n\n" +
			"Progress goes to stderr, the per-server report to stdout at the end. Interrupting stops starting\n" +
			"migrations and never aborts a running one; running `ferry drain HOST` again skips the servers that\n" +
			"left and waits on those still migrating. Exit 0 only when every migratable server left the host.",
		Args: exactArgs(1, "HOST (Nova's compute host name)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if maxParallel < 1 {
				return fmt.Errorf("--max-parallel %d: want at least 1", maxParallel)
			}
			if bw < 0 {
				return fmt.Errorf("--bandwidth %g: must not be negative (MiB/s; 0 is unknown)", bw)
			}
			ctx, cancel, err := a.start(cmd, &f)
			if err != nil {
				return err
			}
			defer cancel()
			if !cmd.Flags().Changed("bandwidth") {
				conf, _, err := a.cliConfig()
				if err != nil {
					return err
				}
				bw = conf.Drain.Bandwidth
			}
			if sample != 0 && (sample < time.Second || sample > status.MaxSample) {
				return fmt.Errorf("--sample %s: want 0 (do not measure) or 1s to %s", sample, status.MaxSample)
			}
			rep, err := a.drain(ctx, args[0], drainLimits{BandwidthMiB: bw, MaxParallel: maxParallel, Sample: sample})
			if err != nil {
				return failed(err)
			}
			if err := f.write(a.out, rep, func(w io.Writer) { drainTable(w, rep) }); err != nil {
				return failed(err)
			}
			return failed(rep.verdict())
		},
	}
	c.Flags().Float64Var(&bw, "bandwidth", 0, "usable bandwidth of the migration network from HOST, in MiB/s (default ferry.yaml's drain: bandwidth:, else 0: unknown)")
	c.Flags().IntVar(&maxParallel, "max-parallel", 2, "at most this many migrations at once")
	c.Flags().DurationVar(&sample, "sample", 2*time.Second, "measure the dirty rate of servers no earlier migration measured, over this long, through the host's ferryd (0: do not)")
	addFormat(c, &f)
	return c
}

// Each server's outcome in a drain's report.
const (
	drainMigrated   = "migrated"    // its migration completed: it left the host
	drainFailed     = "failed"      // Nova refused, or its migration ended otherwise
	drainRunning    = "running"     // still migrating when the drain stopped
	drainNotStarted = "not-started" // the drain stopped before its turn
	drainSkipped    = "skipped"     // not migratable (Reason says why)
)

// drainServer is one server in a drain's report. Fields are only ever
// added.
type drainServer struct {
	Server   string  `json:"server"`
	Name     string  `json:"name"`
	RAMMiB   int64   `json:"ram_mib,omitempty"`
	DirtyMiB float64 `json:"dirty_mibs,omitempty"` // measured by an earlier migration
	Outcome  string  `json:"outcome"`
	// Resumed: its migration was already running (an earlier drain, or
	// someone else, started it) and this drain waited on it.
	Resumed       bool    `json:"resumed,omitempty"`
	MigrationID   int64   `json:"migration_id,omitempty"`
	MigrationUUID string  `json:"migration_uuid,omitempty"`
	Status        string  `json:"status,omitempty"` // Nova's
	Dest          string  `json:"dest_compute,omitempty"`
	Seconds       float64 `json:"seconds,omitempty"`
	Reason        string  `json:"reason,omitempty"` // why skipped or failed: ferry's reason where it has one
}

// drainReport is what `ferry drain` prints on stdout. Fields are only
// ever added.
type drainReport struct {
	Host         string        `json:"host"`
	BandwidthMiB float64       `json:"bandwidth_mibs,omitempty"`
	MaxParallel  int           `json:"max_parallel"`
	Interrupted  bool          `json:"interrupted,omitempty"`
	Servers      []drainServer `json:"servers"`
}

// verdict is the drain's exit: nil only when every migratable server left.
func (r drainReport) verdict() error {
	by := map[string][]string{}
	for _, s := range r.Servers {
		if s.Outcome != drainMigrated && s.Outcome != drainSkipped {
			name := orDefault(s.Name, s.Server)
			if s.MigrationID != 0 {
				name += fmt.Sprintf(" (migration %d)", s.MigrationID)
			}
			by[s.Outcome] = append(by[s.Outcome], name)
		}
	}
	if len(by) == 0 {
		return nil
	}
	var parts []string
	if l := by[drainFailed]; len(l) > 0 {
		parts = append(parts, fmt.Sprintf("%d failed: %s", len(l), strings.Join(l, ", ")))
	}
	if l := by[drainRunning]; len(l) > 0 {
		parts = append(parts, fmt.Sprintf("%d still running, not aborted: %s", len(l), strings.Join(l, ", ")))
	}
	if l := by[drainNotStarted]; len(l) > 0 {
		parts = append(parts, fmt.Sprintf("%d not started: %s", len(l), strings.Join(l, ", ")))
	}
	msg := fmt.Sprintf("drain %s: %s", r.Host, strings.Join(parts, "; "))
	if len(by[drainRunning])+len(by[drainNotStarted]) > 0 {
		msg += fmt.Sprintf(" (run `ferry drain %s` again to go on)", r.Host)
	}
	return errors.New(msg)
}

func drainTable(w io.Writer, r drainReport) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER\tNAME\tOUTCOME\tMIGRATION\tSTATUS\tDEST\tSECONDS\tREASON")
	for _, s := range r.Servers {
		mig, secs := "-", "-"
		if s.MigrationID != 0 {
			mig = fmt.Sprintf("%d (%s)", s.MigrationID, s.MigrationUUID)
		}
		if s.Seconds > 0 {
			secs = fmt.Sprintf("%.0f", s.Seconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Server, s.Name, s.Outcome, mig, orDefault(s.Status, "-"),
			orDefault(s.Dest, "-"), secs, s.Reason)
	}
	tw.Flush()
}

// migratable is why a server cannot be live-migrated now, "" when it can:
// Nova live-migrates only ACTIVE and PAUSED servers with no task running.
func migratable(s openstack.Server) string {
	switch {
	case s.Status != "ACTIVE" && s.Status != "PAUSED":
		return fmt.Sprintf("status %s: only ACTIVE and PAUSED servers live-migrate", s.Status)
	case s.TaskState != "":
		return fmt.Sprintf("task_state %s: busy with another task", s.TaskState)
	}
	return ""
}

// drainItem is one migratable server during the drain; only the drain's
// loop touches it.
type drainItem struct {
	cand    drainCandidate
	resume  *openstack.Migration // its running migration, when one is already running
	rep     drainServer
	state   string // waiting, starting (until Nova records its migration), running, ended
	view    migrationView
	started time.Time
}

// drain plans the host's servers and runs the plan.
func (a *app) drain(ctx context.Context, host string, l drainLimits) (drainReport, error) {
	rep := drainReport{Host: host, BandwidthMiB: l.BandwidthMiB, MaxParallel: l.MaxParallel, Servers: []drainServer{}}
	queue, skipped, slots, err := a.planDrain(ctx, host, l)
	if err != nil {
		return rep, err
	}
	l.SourceSlots = slots
	d := &drainer{a: a, host: host, limits: l, queue: queue}
	rep.Interrupted = d.run(ctx)
	for _, it := range queue {
		if it.state == "waiting" { // its turn never came
			it.rep.Outcome = drainNotStarted
		}
		rep.Servers = append(rep.Servers, it.rep)
	}
	rep.Servers = append(rep.Servers, skipped...)
	return rep, nil
}

// planDrain asks Nova for the host's servers and their migrations and
// returns what the drain runs, in order — the migrations already running
// first, then the plan's order — and the servers it skips, with why.
func (a *app) planDrain(ctx context.Context, host string, l drainLimits) (queue []*drainItem, skipped []drainServer, slots int, err error) {
	bw := l.BandwidthMiB
	servers, err := a.nova.ServersOnHost(ctx, host)
	if err != nil {
		return nil, nil, 0, err
	}
	hist, err := a.nova.Migrations(ctx, openstack.MigrationFilter{Host: host})
	if err != nil {
		return nil, nil, 0, err
	}
	dirty := a.dirtyRates(ctx, servers, hist)
	if l.Sample > 0 {
		slots = a.measureDirty(ctx, host, servers, dirty, l.Sample)
	}
	var items []*drainItem
	var cands []drainCandidate
	for _, s := range servers {
		c := drainCandidate{ID: s.ID, Name: s.Name, RAMMiB: s.Flavor.RAMMiB, DirtyMiB: dirty[s.ID]}
		base := drainServer{Server: s.ID, Name: s.Name, RAMMiB: c.RAMMiB, DirtyMiB: math.Round(c.DirtyMiB*10) / 10}
		if m, ok := resumable(s, host, hist); ok {
			base.Resumed = true
			items = append(items, &drainItem{cand: c, resume: &m, rep: base, state: "waiting"})
			continue
		}
		if why := migratable(s); why != "" {
			base.Outcome, base.Reason = drainSkipped, why
			skipped = append(skipped, base)
			continue
		}
		cands = append(cands, c)
		items = append(items, &drainItem{cand: c, rep: base, state: "waiting"})
	}
	byID := map[string]*drainItem{}
	for _, it := range items {
		byID[it.cand.ID] = it
		if it.resume != nil {
			queue = append(queue, it)
		}
	}
	for _, c := range drainOrder(cands, bw) {
		queue = append(queue, byID[c.ID])
	}
	a.drainIntro(host, servers, queue, skipped)
	return queue, skipped, slots, nil
}

// resumable finds a migration of s off host that is still running — an
// earlier drain's, interrupted — to wait on instead of starting another.
// Nova says so twice: the server's newest live migration has not ended,
// and the server is migrating (a record left behind by a crash, with the
// server idle, is not waited on).
func resumable(s openstack.Server, host string, hist []openstack.Migration) (openstack.Migration, bool) {
	for _, m := range hist { // newest first
		if m.InstanceUUID == s.ID {
			return m, !m.Ended() && m.SourceCompute == host && s.TaskState == "migrating"
		}
	}
	return openstack.Migration{}, false
}

// dirtyRates is each server's dirty rate as ferry measured it on its newest
// migration that has a record (those of hist, into or off the host); asked
// of each source host's ferryd once. A ferryd that cannot be asked only
// leaves its servers' rates unknown.
func (a *app) dirtyRates(ctx context.Context, servers []openstack.Server, hist []openstack.Migration) map[string]float64 {
	on := map[string]bool{}
	for _, s := range servers {
		on[s.ID] = true
	}
	records := map[string]map[string]status.Record{} // source host → migration uuid → record
	out := map[string]float64{}
	for _, m := range hist { // newest first
		if !on[m.InstanceUUID] || !m.Ended() || m.UUID == "" {
			continue
		}
		if _, known := out[m.InstanceUUID]; known {
			continue
		}
		idx, asked := records[m.SourceCompute]
		if !asked {
			idx = map[string]status.Record{}
			ms, err := a.ferryds.Migrations(ctx, m.SourceCompute)
			if err != nil && !notFound(err) {
				fmt.Fprintf(a.errw, "ferry: no dirty rates from the ferryd on %s: %v\n", m.SourceCompute, err)
			}
			for _, fm := range ms {
				idx[strings.ToLower(fm.ID)] = fm.Record
			}
			records[m.SourceCompute] = idx
		}
		if r, ok := idx[strings.ToLower(m.UUID)]; ok {
			if d, ok := dirtyRateOf(r); ok {
				out[m.InstanceUUID] = d
			}
		}
	}
	return out
}

// measureDirty asks host's ferryd for the dirty rate of each migratable
// server whose rate is not known yet (its plan endpoint measures it with
// libvirt over sample; changing nothing), all at once, and returns how
// many jobs that ferryd runs at once (0: not known). A server it cannot
// measure keeps an unknown rate, said on stderr.
func (a *app) measureDirty(ctx context.Context, host string, servers []openstack.Server, dirty map[string]float64, sample time.Duration) (slots int) {
	type result struct {
		id    string
		mibs  float64
		slots int
		err   error
	}
	var asked []openstack.Server
	for _, s := range servers {
		if _, known := dirty[s.ID]; !known && migratable(s) == "" {
			asked = append(asked, s)
		}
	}
	if len(asked) == 0 {
		return 0
	}
	fmt.Fprintf(a.errw, "ferry: measuring the dirty rate of %d servers over %s through the ferryd on %s\n", len(asked), sample, host)
	results := make(chan result, len(asked))
	for _, s := range asked {
		go func() { // owner: measureDirty (collects every result below)
			p, err := a.ferryds.Plan(ctx, host, status.PlanRequest{Instance: s.ID, Sample: sample})
			results <- result{s.ID, float64(p.Memory.DirtyBps) / (1 << 20), p.SourceSlots, err}
		}()
	}
	for range asked {
		r := <-results
		if r.err != nil {
			fmt.Fprintf(a.errw, "ferry: the dirty rate of %s is not known: %v\n", r.id, r.err)
			continue
		}
		dirty[r.id] = r.mibs
		slots = max(slots, r.slots)
	}
	return slots
}

// drainIntro says on stderr what the drain is about to do.
func (a *app) drainIntro(host string, servers []openstack.Server, queue []*drainItem, skipped []drainServer) {
	var resumed, order []string
	for _, it := range queue {
		if it.resume != nil {
			resumed = append(resumed, fmt.Sprintf("%s (migration %d)", it.cand.Name, it.resume.ID))
		} else {
			order = append(order, it.cand.Name)
		}
	}
	fmt.Fprintf(a.errw, "ferry: drain %s: %d servers on it\n", host, len(servers))
	if len(resumed) > 0 {
		fmt.Fprintf(a.errw, "ferry: waiting on the migrations already running: %s\n", strings.Join(resumed, ", "))
	}
	if len(order) > 0 {
		fmt.Fprintf(a.errw, "ferry: to migrate, in this order: %s\n", strings.Join(order, ", "))
	}
	for _, s := range skipped {
		fmt.Fprintf(a.errw, "ferry: skipping %s (%s): %s\n", s.Name, s.Server, s.Reason)
	}
}
