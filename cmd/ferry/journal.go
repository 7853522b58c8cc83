package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/status"
	"opendev.org/x/ferry/pkg/virt"
)

// journalCmd reads a ferryd's journal on its own host (its state_dir):
// every migration it holds, including those whose reports to Nova are
// still owed, and entries it could not read. It changes nothing and needs
// no cloud.
func (a *app) journalCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{Use: "journal", Short: "Read this host's ferryd journal (no cloud needed)"}
	c.PersistentFlags().StringVar(&dir, "state-dir", "/var/lib/ferry", "ferryd's state_dir")
	var lf, sf format
	var svg string
	list := &cobra.Command{
		Use:   "list",
		Short: "Every migration in the journal, newest first, and any entry that cannot be read",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			if err := lf.check(); err != nil {
				return err
			}
			ms, bad, err := migration.ReadJournal(dir)
			if err != nil {
				return failed(err)
			}
			for _, u := range bad {
				fmt.Fprintf(a.errw, "ferry: journal entry %s is unreadable (%v); it is kept at %s for an operator\n", u.Name, u.Err, u.Path)
			}
			sort.Slice(ms, func(i, j int) bool { return ms[i].Record.Started.After(ms[j].Record.Started) })
			vs := make([]journalView, 0, len(ms))
			for _, m := range ms {
				vs = append(vs, journalViewOf(m))
			}
			return failed(lf.write(a.out, vs, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tINSTANCE\tDEST\tPHASE\tSTARTED\tTOTAL\tDOWNTIME\tREPORTS OWED\tREASON")
				for _, m := range ms {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%v\t%d\t%s\n", m.ID, m.InstanceUUID, m.Dest.Host, m.Phase,
						m.Record.Started.Format(time.RFC3339), m.Record.Total.Round(100*time.Millisecond), m.Record.Downtime, m.Pending(), m.Reason)
				}
				for _, u := range bad {
					fmt.Fprintf(tw, "%s\t-\t-\tunreadable\t-\t-\t-\t-\t%v\n", strings.TrimSuffix(u.Name, ".json"), u.Err)
				}
				tw.Flush()
			}))
		},
	}
	addFormat(list, &lf)
	show := &cobra.Command{
		Use:   "show ID",
		Short: "One migration of the journal: phase, reason, copy set, actions and why, and each report to Nova",
		Args:  exactArgs(1, "ID (Nova's migration uuid)"),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := sf.check(); err != nil {
				return err
			}
			m, err := migration.ReadEntry(dir, args[0])
			if errors.Is(err, os.ErrNotExist) {
				return failed(fmt.Errorf("no migration %s in %s", args[0], dir))
			}
			if err != nil {
				return failed(err)
			}
			v := journalViewOf(m)
			if svg != "" {
				wm := status.Wire(m)
				pic, err := renderSVG(migrationView{UUID: m.ID, Server: m.InstanceUUID, Source: "this host", Dest: m.Dest.Host,
					Status: string(m.Phase), Ferry: &wm})
				if err != nil {
					return failed(err)
				}
				if err := os.WriteFile(svg, pic, 0o644); err != nil {
					return failed(err)
				}
				fmt.Fprintf(a.errw, "ferry: the picture of migration %s is in %s\n", m.ID, svg)
			}
			return failed(sf.write(a.out, v, func(w io.Writer) { journalShow(w, v) }))
		},
	}
	show.Flags().StringVar(&svg, "svg", "", "also draw the migration into this SVG file")
	addFormat(show, &sf)
	c.AddCommand(list, show)
	return c
}

// journalView is what the CLI shows of a journalled migration: ferry's record, never the
// caller's state (Nova's objects and request context stay in the journal).
type journalView struct {
	ID             string                 `json:"id"`
	Domain         string                 `json:"domain"` // the instance uuid, as before the journal had a version
	InstanceUUID   string                 `json:"instance_uuid"`
	DestHost       string                 `json:"dest_host"`
	DestCheckURI   string                 `json:"dest_check_uri"`
	Spec           *virt.MigrateSpec      `json:"spec,omitempty"` // the libvirt job, once the destination is prepared
	Policy         migration.Policy       `json:"policy"`
	Phase          migration.Phase        `json:"phase"`
	Reason         string                 `json:"reason,omitempty"`
	Steps          []string               `json:"steps,omitempty"`
	AbortRequested bool                   `json:"abort_requested,omitempty"`
	PausedByUs     bool                   `json:"paused_by_us,omitempty"`
	Downtime       time.Duration          `json:"max_downtime,omitempty"`
	Detached       bool                   `json:"detached,omitempty"`
	CopyNote       string                 `json:"copy_note,omitempty"`
	Record         migration.Record       `json:"record"`
	Updated        time.Time              `json:"updated"`
	Disks          []string               `json:"disks,omitempty"`
	Reports        []migration.Report     `json:"reports,omitempty"`
	Preparation    *migration.Preparation `json:"preparation,omitempty"`
}

func journalViewOf(m migration.Migration) journalView {
	v := journalView{ID: m.ID, Domain: m.InstanceUUID, InstanceUUID: m.InstanceUUID, DestHost: m.Dest.Host, DestCheckURI: m.DestCheckURI,
		Policy: m.Policy, Phase: m.Phase, Reason: m.Reason, Steps: m.Steps, AbortRequested: m.AbortRequested,
		PausedByUs: m.PausedByUs, Downtime: m.Downtime, Detached: m.Detached, Record: m.Record, Updated: m.Updated,
		Disks: m.Job.Disks, Reports: m.Reports, Preparation: m.Prep}
	if m.Prep != nil {
		v.CopyNote = m.Prep.CopyNote
		if s, err := migration.JobSpec(m); err == nil {
			v.Spec = &s
		}
	}
	return v
}

func journalShow(out io.Writer, m journalView) {
	r := m.Record
	fmt.Fprintf(out, "migration %s: %s\n", m.ID, m.Phase)
	if m.Reason != "" {
		fmt.Fprintf(out, "  reason:     %s\n", m.Reason)
	}
	fmt.Fprintf(out, "  instance:   %s → %s\n  copy set:   %v\n", m.InstanceUUID, m.DestHost, m.Disks)
	if m.CopyNote != "" {
		fmt.Fprintf(out, "  disk copy:  %s\n", m.CopyNote)
	}
	fmt.Fprintf(out, "  total:      %v (downtime %v)\n  moved:      memory %d MiB, disk %d MiB in %d iterations\n",
		r.Total.Round(100*time.Millisecond), r.Downtime, r.MemBytes>>20, r.DiskBytes>>20, r.Iterations)
	fmt.Fprintf(out, "  estimates:  B %.1f MiB/s, F %.1f MiB; %d stalls\n", r.Bandwidth/(1<<20), float64(r.Floor)/(1<<20), r.Stalls)
	for _, a := range r.Actions {
		fmt.Fprintf(out, "  at %-8v %-16s %v %s\n", a.At.Round(100*time.Millisecond), a.Action, a.Downtime, a.Reason)
	}
	for _, rep := range m.Reports {
		state := rep.Outcome
		if !rep.Delivered {
			state = fmt.Sprintf("owed (%d attempts: %s)", rep.Attempts, rep.LastError)
		}
		fmt.Fprintf(out, "  report %-2d %-20s %-10s %s\n", rep.Seq, rep.Name, rep.Phase, state)
	}
}
