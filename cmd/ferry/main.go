// Command ferry is the operator's view of a host's ferryd.
//
//	ferry migration list [--state-dir DIR] [--json]
//	ferry migration show ID [--state-dir DIR] [--json]
//
// It reads ferryd's journal (the state_dir of its configuration) and changes
// nothing: the phase, the reason, the actions ferry took and the record of
// each migration. Data goes to stdout, everything else to stderr; the --json
// output only ever gains fields.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"opendev.org/x/ferry/pkg/migration"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: ferry migration list [--state-dir DIR] [--json]\n       ferry migration show ID [--state-dir DIR] [--json]")
}

func run(args []string, out, errw io.Writer) int {
	if len(args) < 2 || args[0] != "migration" || (args[1] != "list" && args[1] != "show") {
		usage(errw)
		return 2
	}
	verb := args[1]
	fs := flag.NewFlagSet("ferry migration "+verb, flag.ContinueOnError)
	fs.SetOutput(errw)
	dir := fs.String("state-dir", "/var/lib/ferry", "ferryd's state_dir")
	asJSON := fs.Bool("json", false, "print JSON")
	rest := args[2:]
	var id string
	if verb == "show" {
		if len(rest) == 0 || rest[0] == "" || rest[0][0] == '-' {
			usage(errw)
			return 2
		}
		id, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	ms, err := migration.ReadJournal(*dir)
	if err != nil && len(ms) == 0 {
		fmt.Fprintln(errw, "ferry:", err)
		return 1
	}
	if err != nil {
		fmt.Fprintln(errw, "ferry: some journal entries are unreadable:", err)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Record.Started.After(ms[j].Record.Started) })
	if verb == "show" {
		for _, m := range ms {
			if m.ID == id {
				return show(out, m, *asJSON)
			}
		}
		fmt.Fprintf(errw, "ferry: no migration %s in %s\n", id, *dir)
		return 1
	}
	if *asJSON {
		return writeJSON(out, ms)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tINSTANCE\tDEST\tPHASE\tSTARTED\tTOTAL\tDOWNTIME\tREASON")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%v\t%s\n", m.ID, m.InstanceUUID, m.DestHost, m.Phase,
			m.Record.Started.Format(time.RFC3339), m.Record.Total.Round(100*time.Millisecond), m.Record.Downtime, m.Reason)
	}
	tw.Flush()
	return 0
}

func show(out io.Writer, m migration.Migration, asJSON bool) int {
	if asJSON {
		return writeJSON(out, m)
	}
	r := m.Record
	fmt.Fprintf(out, "migration %s: %s\n", m.ID, m.Phase)
	if m.Reason != "" {
		fmt.Fprintf(out, "  reason:     %s\n", m.Reason)
	}
	fmt.Fprintf(out, "  instance:   %s → %s\n  copy set:   %v\n", m.InstanceUUID, m.DestHost, m.Spec.Disks)
	if m.CopyNote != "" {
		fmt.Fprintf(out, "  disk copy:  %s\n", m.CopyNote)
	}
	fmt.Fprintf(out, "  total:      %v (downtime %v)\n  moved:      memory %d MiB, disk %d MiB in %d iterations\n",
		r.Total.Round(100*time.Millisecond), r.Downtime, r.MemBytes>>20, r.DiskBytes>>20, r.Iterations)
	fmt.Fprintf(out, "  estimates:  B %.1f MiB/s, F %.1f MiB; %d stalls\n", r.Bandwidth/(1<<20), float64(r.Floor)/(1<<20), r.Stalls)
	for _, a := range r.Actions {
		fmt.Fprintf(out, "  at %-8v %-16s %v %s\n", a.At.Round(100*time.Millisecond), a.Action, a.Downtime, a.Reason)
	}
	return 0
}

func writeJSON(out io.Writer, v any) int {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return 1
	}
	return 0
}
