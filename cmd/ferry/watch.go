package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/openstack"
)

func (a *app) liveMigrateCmd() *cobra.Command {
	var f format
	var host, block string
	var wait bool
	c := &cobra.Command{
		Use:   "live-migrate SERVER",
		Short: "Live-migrate a server through Nova's API (the scheduler picks the host unless --host)",
		Long: "Live-migrate a server through Nova's API, as `openstack server migrate --live-migration` does.\n" +
			"With --wait, follow it to its end: on a terminal one line redrawn in place (phase, memory and disk\n" +
			"moved and left, bandwidth, predicted time left, ferry's last action and why), otherwise a plain line\n" +
			"whenever something changed. The exit code is 0 only when the migration completed. Interrupting the\n" +
			"wait leaves the migration running.",
		Args: exactArgs(1, "SERVER (name or id)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			bm, err := openstack.ParseBlockMigration(block)
			if err != nil {
				return err
			}
			ctx, cancel, sv, err := a.startOn(cmd, &f, args[0])
			if err != nil {
				return err
			}
			defer cancel()
			m, _, err := a.startLive(ctx, sv.ID, host, bm)
			if err != nil {
				return failed(err)
			}
			fmt.Fprintf(a.errw, "ferry: live migration %d (%s) of %s from %s accepted by Nova\n", m.ID, m.UUID, sv.ID, m.SourceCompute)
			v := viewOf(m)
			if wait {
				if v, err = a.follow(ctx, sv.ID, m.ID); err != nil {
					return failed(err)
				}
			}
			if err := f.write(a.out, v, func(w io.Writer) { fmt.Fprintf(w, "%d\t%s\t%s\n", v.ID, v.UUID, v.Status) }); err != nil {
				return failed(err)
			}
			if wait {
				return outcome(v)
			}
			return nil
		},
	}
	c.Flags().StringVar(&host, "host", "", "the destination compute host (default: the scheduler's choice)")
	c.Flags().StringVar(&block, "block-migration", "auto", "auto (Nova decides from the storage), true or false")
	c.Flags().BoolVar(&wait, "wait", false, "follow the migration to its end; exit 0 only if it completed")
	_ = c.RegisterFlagCompletionFunc("block-migration", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"auto", "true", "false"}, cobra.ShellCompDirectiveNoFileComp
	})
	addFormat(c, &f)
	return c
}

// startLive asks Nova to live-migrate a server and finds the migration
// Nova recorded for it. accepted says whether Nova took the request (the
// migration may then run even when err says it was not seen). The request
// itself is not cut short by ctx, so the answer is always known.
func (a *app) startLive(ctx context.Context, serverID, host string, bm openstack.BlockMigration) (m openstack.Migration, accepted bool, err error) {
	before, err := a.nova.Migrations(ctx, openstack.MigrationFilter{Server: serverID})
	if err != nil {
		return m, false, err
	}
	if err := ctx.Err(); err != nil {
		return m, false, err
	}
	if err := a.nova.LiveMigrate(context.WithoutCancel(ctx), serverID, host, bm); err != nil {
		if msg := openstack.APIMessage(err); msg != "" {
			return m, false, fmt.Errorf("live-migrate %s: Nova refused: %s", serverID, msg)
		}
		return m, false, err
	}
	m, err = a.newMigration(ctx, serverID, before)
	return m, true, err
}

// newMigrationWithin bounds how long Nova may take to record the migration
// it accepted (the conductor creates it).
const newMigrationWithin = 2 * time.Minute

// newMigration finds the migration Nova created for the request: the
// server's newest one that was not there before.
func (a *app) newMigration(ctx context.Context, serverID string, before []openstack.Migration) (openstack.Migration, error) {
	var known int64
	for _, m := range before {
		known = max(known, m.ID)
	}
	deadline := time.Now().Add(newMigrationWithin)
	for {
		ms, err := a.nova.Migrations(ctx, openstack.MigrationFilter{Server: serverID})
		if err == nil && len(ms) > 0 && ms[0].ID > known {
			return ms[0], nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return openstack.Migration{}, err
			}
			return openstack.Migration{}, fmt.Errorf("Nova accepted the live migration of %s but recorded none within %s (see `openstack server event list %s`)",
				serverID, newMigrationWithin, serverID)
		}
		select {
		case <-ctx.Done():
			return openstack.Migration{}, ctx.Err()
		case <-time.After(a.pollEvery() / 4):
		}
	}
}

// outcome is the exit of a wait: nil only for a completed migration.
func outcome(v migrationView) error {
	if v.Status == "completed" {
		return nil
	}
	why := ""
	if v.Ferry != nil && v.Ferry.Reason != "" {
		why = ": " + v.Ferry.Reason
	} else {
		why = " (see `openstack server event list " + v.Server + "`)"
	}
	return failed(fmt.Errorf("migration %d of %s ended %s%s", v.ID, v.Server, v.Status, why))
}

func (a *app) watchCmd() *cobra.Command {
	var f format
	c := &cobra.Command{
		Use:   "watch SERVER [MIGRATION]",
		Short: "Follow a live migration (default: the server's newest) to its end; exit 0 only if it completed",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return fmt.Errorf("%s takes SERVER and optionally MIGRATION, got %d arguments", cmd.CommandPath(), len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, sv, err := a.startOn(cmd, &f, args[0])
			if err != nil {
				return err
			}
			defer cancel()
			var m openstack.Migration
			if len(args) == 2 {
				m, err = a.nova.FindMigration(ctx, sv.ID, args[1])
			} else {
				var ms []openstack.Migration
				if ms, err = a.nova.Migrations(ctx, openstack.MigrationFilter{Server: sv.ID, Limit: 1}); err == nil && len(ms) == 0 {
					err = fmt.Errorf("server %s has no live migration", sv.ID)
				} else if err == nil {
					m = ms[0]
				}
			}
			if err != nil {
				return failed(err)
			}
			v, err := a.follow(ctx, sv.ID, m.ID)
			if err != nil {
				return failed(err)
			}
			if err := f.write(a.out, v, func(w io.Writer) { showTable(w, v) }); err != nil {
				return failed(err)
			}
			return outcome(v)
		},
	}
	addFormat(c, &f)
	return c
}

// ferryCatchUp bounds how long a finished wait waits for ferry's record to
// reach its end too (ferryd tells Nova first, then writes its record).
const ferryCatchUp = 15 * time.Second

// follow polls a migration until Nova's record of it ends (and ferry's
// record, when there is one, ends too), showing its progress on stderr.
// An API error on the way is shown and retried; only the context ends the
// wait early, and never the migration.
func (a *app) follow(ctx context.Context, serverID string, id int64) (migrationView, error) {
	d := newDisplay(a.errw, a.isTerminal())
	defer d.close()
	return a.poll(ctx, serverID, id, func(v migrationView) { d.show(progressLine(v)) }, d.note)
}

// poll is follow's loop: each look at the migration goes to seen, each
// API error it retries to note.
func (a *app) poll(ctx context.Context, serverID string, id int64, seen func(migrationView), note func(string)) (migrationView, error) {
	ref := strconv.FormatInt(id, 10)
	var v migrationView
	var endedAt time.Time
	tick := time.NewTicker(a.pollEvery())
	defer tick.Stop()
	for {
		m, err := a.nova.FindMigration(ctx, serverID, ref)
		switch {
		case err == nil:
			v = a.describe(ctx, m)
			seen(v)
			if m.Ended() {
				if endedAt.IsZero() {
					endedAt = time.Now()
				}
				ferryDone := v.Ferry == nil || migration.Phase(v.Ferry.Phase).Terminal()
				if ferryDone || time.Since(endedAt) > ferryCatchUp {
					return v, nil
				}
			}
		case notFound(err):
			return v, err
		case ctx.Err() != nil:
			return v, ctx.Err()
		default:
			note(fmt.Sprintf("asking Nova failed (retrying): %v", err))
		}
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("stopped waiting (the migration goes on): %w", ctx.Err())
		case <-tick.C:
		}
	}
}

func (a *app) isTerminal() bool {
	if a.terminal != nil {
		return a.terminal()
	}
	f, ok := a.errw.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressLine is one look at a migration: Nova's status and ferry's phase,
// memory and disk moved and left, bandwidth, the time left at that rate,
// and ferry's last action with its reason.
func progressLine(v migrationView) string {
	parts := []string{fmt.Sprintf("migration %d %s→%s: %s", v.ID, v.Source, v.Dest, v.Status)}
	if v.Ferry != nil {
		parts = append(parts, "ferry "+v.Ferry.Phase)
	}
	f := figuresOf(v)
	if f.pass > 1 {
		parts = append(parts, fmt.Sprintf("pass %d", f.pass))
	}
	if f.memTotal > 0 {
		parts = append(parts, "memory "+moved(f.memDone, f.memTotal, f.memLeft))
	}
	if f.diskTotal > 0 {
		parts = append(parts, "disk "+moved(f.diskDone, f.diskTotal, f.diskLeft))
	}
	if f.bps > 0 {
		parts = append(parts, fmt.Sprintf("%.1f MiB/s", float64(f.bps)/(1<<20)))
		if left := f.memLeft + f.diskLeft; left > 0 {
			parts = append(parts, fmt.Sprintf("~%s left", (time.Duration(float64(left)/float64(f.bps)*float64(time.Second))).Round(time.Second)))
		}
	}
	if v.Ferry != nil && len(v.Ferry.Actions) > 0 {
		act := v.Ferry.Actions[len(v.Ferry.Actions)-1]
		s := "last: " + act.Action
		if act.DowntimeSeconds > 0 {
			s += fmt.Sprintf(" %.0fms", act.DowntimeSeconds*1000)
		}
		if act.Reason != "" {
			s += " (" + act.Reason + ")"
		}
		parts = append(parts, s)
	}
	if v.Ferry != nil && v.Ferry.Reason != "" && migration.Phase(v.Ferry.Phase).Terminal() {
		parts = append(parts, "reason: "+v.Ferry.Reason)
	}
	return strings.Join(parts, " · ")
}

// moved is "done/total unit (left unit left)", in the unit that suits the
// total (unitFor).
func moved(done, total, left uint64) string {
	unit, div := unitFor(total)
	f := func(b uint64) string { return fmt.Sprintf("%.0f", float64(b)/div) }
	if unit == "GiB" {
		f = func(b uint64) string { return fmt.Sprintf("%.1f", float64(b)/div) }
	}
	return fmt.Sprintf("%s/%s %s (%s %s left)", f(done), f(total), unit, f(left), unit)
}

// figures is a running migration's progress: ferry's latest sample when
// it has one (with the bandwidth and the pass), else Nova's.
type figures struct {
	memDone, memTotal, memLeft, diskDone, diskTotal, diskLeft, bps, pass uint64
}

func figuresOf(v migrationView) figures {
	switch {
	case v.Ferry != nil && v.Ferry.Progress != nil:
		p := v.Ferry.Progress
		return figures{p.MemoryProcessedBytes, p.MemoryTotalBytes, p.MemoryRemainingBytes,
			p.DiskProcessedBytes, p.DiskTotalBytes, p.DiskRemainingBytes, p.MemoryBps + p.DiskBps, p.Iteration}
	case v.Progress != nil:
		p := v.Progress
		return figures{memDone: p.MemoryProcessed, memTotal: p.MemoryTotal, memLeft: p.MemoryRemaining,
			diskDone: p.DiskProcessed, diskTotal: p.DiskTotal, diskLeft: p.DiskRemaining}
	}
	return figures{}
}

// display is where progress goes: on a terminal one line redrawn in place;
// otherwise a line each time it changes.
type display struct {
	w        io.Writer
	terminal bool
	last     string
	drawn    bool
}

func newDisplay(w io.Writer, terminal bool) *display { return &display{w: w, terminal: terminal} }

func (d *display) show(line string) {
	if line == d.last {
		return
	}
	d.last = line
	if d.terminal {
		fmt.Fprintf(d.w, "\r\033[K%s", line)
		d.drawn = true
		return
	}
	fmt.Fprintln(d.w, time.Now().UTC().Format("15:04:05"), line)
}

func (d *display) note(s string) {
	if d.terminal && d.drawn {
		fmt.Fprint(d.w, "\r\033[K")
		d.drawn = false
		d.last = ""
	}
	fmt.Fprintln(d.w, "ferry:", s)
}

func (d *display) close() {
	if d.terminal && d.drawn {
		fmt.Fprintln(d.w)
	}
}
