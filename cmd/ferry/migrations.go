package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"opendev.org/x/ferry/pkg/openstack"
	"opendev.org/x/ferry/pkg/status"
)

// migrationView is one live migration as the CLI shows it: Nova's record,
// Nova's progress while it runs, and ferry's record from the source host's
// ferryd. Fields are only ever added.
type migrationView struct {
	ID        int64     `json:"id"`
	UUID      string    `json:"uuid"`
	Server    string    `json:"server"`
	Status    string    `json:"status"` // Nova's
	Source    string    `json:"source_compute"`
	Dest      string    `json:"dest_compute"`
	DestNode  string    `json:"dest_node,omitempty"`
	UserID    string    `json:"user_id,omitempty"`
	ProjectID string    `json:"project_id,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	// Progress is Nova's figures of a running migration.
	Progress *openstack.Progress `json:"progress,omitempty"`
	// Ferry is the source ferryd's record; absent when ferry did not run
	// the migration or its ferryd could not be asked (FerryNote says which).
	Ferry     *status.Migration `json:"ferry,omitempty"`
	FerryNote string            `json:"ferry_note,omitempty"`
}

func viewOf(m openstack.Migration) migrationView {
	return migrationView{ID: m.ID, UUID: m.UUID, Server: m.InstanceUUID, Status: m.Status, Source: m.SourceCompute,
		Dest: m.DestCompute, DestNode: m.DestNode, UserID: m.UserID, ProjectID: m.ProjectID, CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt}
}

// ferryOutcome is the FERRY column: ferry's phase, or why there is none.
func (v migrationView) ferryOutcome() (phase, reason string) {
	if v.Ferry != nil {
		return v.Ferry.Phase, v.Ferry.Reason
	}
	if v.FerryNote != "" {
		return "-", v.FerryNote
	}
	return "-", ""
}

// notRunHere is the note for a migration its source's ferryd does not hold.
func notRunHere(host string) string {
	return "not run by ferry (the ferryd on " + host + " holds no record of it)"
}

// joinFerry attaches each source ferryd's record to Nova's migrations,
// asking each host once. A host whose ferryd cannot be asked is named once
// on stderr and its migrations carry the reason.
func (a *app) joinFerry(ctx context.Context, vs []migrationView) {
	byHost := map[string]map[string]status.Migration{}
	unreachable := map[string]string{}
	for i := range vs {
		h := vs[i].Source
		if _, asked := byHost[h]; !asked && unreachable[h] == "" {
			ms, err := a.ferryds.Migrations(ctx, h)
			if err != nil {
				unreachable[h] = err.Error()
				fmt.Fprintf(a.errw, "ferry: showing Nova's view only for migrations from %s: %v\n", h, err)
			} else {
				idx := make(map[string]status.Migration, len(ms))
				for _, m := range ms {
					idx[strings.ToLower(m.ID)] = m
				}
				byHost[h] = idx
			}
		}
		if why := unreachable[h]; why != "" {
			vs[i].FerryNote = "ferryd not reachable: " + why
			continue
		}
		if m, ok := byHost[h][strings.ToLower(vs[i].UUID)]; ok {
			vs[i].Ferry = &m
		} else {
			vs[i].FerryNote = notRunHere(h)
		}
	}
}

// describe is one migration with everything known of it.
func (a *app) describe(ctx context.Context, m openstack.Migration) migrationView {
	v := viewOf(m)
	if !m.Ended() {
		if p, err := a.nova.InProgress(ctx, m.InstanceUUID, m.ID); err == nil {
			v.Progress = &p
		}
	}
	fm, err := a.ferryds.Migration(ctx, m.SourceCompute, m.UUID)
	switch {
	case err == nil:
		v.Ferry = &fm
	case notFound(err):
		v.FerryNote = notRunHere(m.SourceCompute)
	default:
		v.FerryNote = "ferryd not reachable: " + err.Error()
	}
	return v
}

func (a *app) migrationCmd() *cobra.Command {
	c := &cobra.Command{Use: "migration", Short: "Nova's live migrations, with ferry's record of each"}
	c.AddCommand(a.listCmd(), a.showCmd(), a.watchCmd(), a.actionCmd("force-complete"), a.actionCmd("abort"))
	return c
}

func (a *app) listCmd() *cobra.Command {
	var f format
	var server, host, st string
	var limit int
	c := &cobra.Command{
		Use:   "list",
		Short: "List live migrations (newest first), with ferry's outcome and reason where ferry ran them",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel, err := a.start(cmd, &f)
			if err != nil {
				return err
			}
			defer cancel()
			filter := openstack.MigrationFilter{Host: host, Status: st, Limit: limit}
			if server != "" {
				sv, err := a.nova.Server(ctx, server)
				if err != nil {
					return failed(err)
				}
				filter.Server = sv.ID
			}
			ms, err := a.nova.Migrations(ctx, filter)
			if err != nil {
				return failed(err)
			}
			vs := make([]migrationView, 0, len(ms))
			for _, m := range ms {
				vs = append(vs, viewOf(m))
			}
			a.joinFerry(ctx, vs)
			return failed(f.write(a.out, vs, func(w io.Writer) { listTable(w, vs) }))
		},
	}
	c.Flags().StringVar(&server, "server", "", "only this server's (name or id)")
	c.Flags().StringVar(&host, "host", "", "only those from or to this compute host")
	c.Flags().StringVar(&st, "status", "", "only those in this Nova status (running, completed, error, …)")
	c.Flags().IntVar(&limit, "limit", 0, "at most this many")
	addFormat(c, &f)
	return c
}

func listTable(w io.Writer, vs []migrationView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tUUID\tSERVER\tSOURCE\tDEST\tSTATUS\tFERRY\tCREATED\tREASON")
	for _, v := range vs {
		phase, reason := v.ferryOutcome()
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.ID, v.UUID, v.Server, v.Source, v.Dest, v.Status, phase,
			v.CreatedAt.Format(time.RFC3339), reason)
	}
	tw.Flush()
}

func (a *app) showCmd() *cobra.Command {
	var f format
	var svg string
	c := &cobra.Command{
		Use:   "show SERVER MIGRATION",
		Short: "One live migration: Nova's record and ferry's (phase, copy set and mode, network, TLS, actions and why, downtime, bytes)",
		Args:  exactArgs(2, "SERVER and MIGRATION (Nova's id or uuid)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, err := a.start(cmd, &f)
			if err != nil {
				return err
			}
			defer cancel()
			_, m, err := a.serverMigration(ctx, args[0], args[1])
			if err != nil {
				return failed(err)
			}
			v := a.describe(ctx, m)
			if svg != "" {
				pic, err := renderSVG(v)
				if err != nil {
					return failed(err)
				}
				if err := os.WriteFile(svg, pic, 0o644); err != nil {
					return failed(err)
				}
				fmt.Fprintf(a.errw, "ferry: the picture of migration %d is in %s\n", m.ID, svg)
			}
			return failed(f.write(a.out, v, func(w io.Writer) { showTable(w, v) }))
		},
	}
	c.Flags().StringVar(&svg, "svg", "", "also draw the migration into this SVG file (memory remaining, bandwidth, max downtime, ferry's actions)")
	addFormat(c, &f)
	return c
}

func showTable(w io.Writer, v migrationView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, f string, a ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(f, a...)) }
	row("migration", "%d (%s)", v.ID, v.UUID)
	row("server", "%s", v.Server)
	row("hosts", "%s → %s", v.Source, v.Dest)
	row("nova status", "%s (created %s)", v.Status, v.CreatedAt.Format(time.RFC3339))
	if p := v.Progress; p != nil {
		row("nova progress", "memory %s of %s, disk %s of %s", mib(p.MemoryProcessed), mib(p.MemoryTotal), mib(p.DiskProcessed), mib(p.DiskTotal))
	}
	if v.Ferry == nil {
		row("ferry", "%s", v.FerryNote)
		tw.Flush()
		return
	}
	fm := v.Ferry
	row("ferry phase", "%s", fm.Phase)
	if fm.Reason != "" {
		row("reason", "%s", fm.Reason)
	}
	if j := fm.Job; j != nil {
		row("copy set", "%s (%s)", strings.Join(j.Disks, ", "), j.Copy)
		if j.CopyNote != "" {
			row("copy note", "%s", j.CopyNote)
		}
		row("network", "%s", orDefault(j.MigrationURI, "the destination libvirtd's choice"))
		row("tls", "%v", j.TLS)
		row("post-copy", "%v, auto-converge %v", j.PostCopy, j.AutoConverge)
	}
	r := fm.Record
	row("total", "%.1fs, downtime %.0fms (max allowed %.0fms)", r.TotalSeconds, r.DowntimeSeconds*1000, r.MaxDowntimeSeconds*1000)
	row("moved", "memory %s (first pass %s), disk %s in %d iterations", mib(r.MemoryBytes), mib(r.FirstPassBytes), mib(r.DiskBytes), r.Iterations)
	row("estimates", "bandwidth %.1f MiB/s, floor %s, %d stalls", r.BandwidthBps/(1<<20), mib(r.FloorBytes), r.Stalls)
	for _, act := range fm.Actions {
		d := ""
		if act.DowntimeSeconds > 0 {
			d = fmt.Sprintf(" %.0fms", act.DowntimeSeconds*1000)
		}
		row("action", "at %.1fs %s%s: %s", act.AtSeconds, act.Action, d, act.Reason)
	}
	if fm.ReportsPending > 0 {
		row("reports owed", "%d (ferryd is still telling Nova)", fm.ReportsPending)
	}
	tw.Flush()
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func (a *app) actionCmd(verb string) *cobra.Command {
	short := map[string]string{
		"force-complete": "Ask Nova to force a running live migration to complete (pause or post-copy, as the source compute decides)",
		"abort":          "Ask Nova to abort a live migration; the guest stays on its source",
	}[verb]
	return &cobra.Command{
		Use:   verb + " SERVER MIGRATION",
		Short: short,
		Args:  exactArgs(2, "SERVER and MIGRATION (Nova's id or uuid)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, err := a.start(cmd, nil)
			if err != nil {
				return err
			}
			defer cancel()
			sv, m, err := a.serverMigration(ctx, args[0], args[1])
			if err != nil {
				return failed(err)
			}
			if verb == "abort" {
				err = a.nova.AbortMigration(ctx, sv.ID, m.ID)
			} else {
				err = a.nova.ForceComplete(ctx, sv.ID, m.ID)
			}
			if err != nil {
				if msg := openstack.APIMessage(err); msg != "" {
					return failed(fmt.Errorf("%s migration %d: Nova refused: %s", verb, m.ID, msg))
				}
				return failed(err)
			}
			fmt.Fprintf(a.errw, "ferry: %s of migration %d (%s) accepted by Nova\n", verb, m.ID, m.UUID)
			return nil
		},
	}
}

// serverMigration finds a server (name or id) and one of its migrations
// (Nova's id or uuid).
func (a *app) serverMigration(ctx context.Context, server, ref string) (openstack.Server, openstack.Migration, error) {
	sv, err := a.nova.Server(ctx, server)
	if err != nil {
		return sv, openstack.Migration{}, err
	}
	m, err := a.nova.FindMigration(ctx, sv.ID, ref)
	return sv, m, err
}
