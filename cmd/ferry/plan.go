package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"opendev.org/x/ferry/pkg/status"
)

// planCmd is `ferry plan SERVER [--host H] [--sample 5s]`: a dry run by
// the source host's ferryd. Exit 0 whenever a plan was made, whatever its
// verdict.
func (a *app) planCmd() *cobra.Command {
	var f format
	var host string
	var sample time.Duration
	var bandwidth int
	cmd := &cobra.Command{
		Use:   "plan SERVER",
		Short: "Dry-run a live migration: what would be copied, the network, the dirty rate and the verdict",
		Long: "plan asks the server's host's ferryd what a live migration would do, changing nothing: each disk\n" +
			"copied (and how) or skipped, the migration URIs and TLS, the guest's dirty rate measured over --sample\n" +
			"against the bandwidth, whether pre-copy converges within the downtime budget, the predicted total and\n" +
			"downtime, and the lever ferry's policy would pull. Exit 0 when a plan was made, whatever it says.",
		Args: exactArgs(1, "SERVER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if sample != 0 && (sample < time.Second || sample > status.MaxSample) {
				return fmt.Errorf("--sample %s: want 1s to %s", sample, status.MaxSample)
			}
			ctx, cancel, sv, err := a.startOn(cmd, &f, args[0])
			if err != nil {
				return err
			}
			defer cancel()
			if sv.Host == "" {
				return failed(fmt.Errorf("server %s has no host in Nova's records", sv.ID))
			}
			if bandwidth < 0 {
				return fmt.Errorf("--bandwidth %d: must not be negative (MiB/s)", bandwidth)
			}
			bw := uint64(bandwidth) << 20
			if bandwidth == 0 {
				conf, _, err := a.cliConfig()
				if err != nil {
					return err
				}
				bw = uint64(conf.Drain.Bandwidth * (1 << 20))
			}
			p, err := a.ferryds.Plan(ctx, sv.Host, status.PlanRequest{Instance: sv.ID, Dest: host, Sample: sample, BandwidthBps: bw})
			if err != nil {
				return failed(fmt.Errorf("plan of %s on %s: %w", sv.ID, sv.Host, err))
			}
			return f.write(a.out, p, func(w io.Writer) { planTable(w, p) })
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "the destination host (default: the only configured peer, else the scheduler's choice)")
	cmd.Flags().DurationVar(&sample, "sample", 0, "how long to measure the dirty rate (1s to 30s; default the ferryd's, 5s)")
	cmd.Flags().IntVar(&bandwidth, "bandwidth", 0, "the link's bandwidth in MiB/s (default ferry.yaml's drain: bandwidth:, else the ferryd's live_migration_bandwidth, else the newest it measured)")
	addFormat(cmd, &f)
	return cmd
}

func planTable(w io.Writer, p status.Plan) {
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	dest := p.Dest
	if dest == "" {
		dest = "(scheduler)"
	}
	fmt.Fprintf(tw, "instance\t%s\n", p.InstanceUUID)
	fmt.Fprintf(tw, "route\t%s → %s\t%s\n", p.Source, dest, p.DestNote)
	for _, d := range p.Disks {
		fmt.Fprintf(tw, "disk %s\t%s %s\t%s\n", d.Target, d.Copy, size(d.Bytes), d.Note)
	}
	n := p.Network
	fmt.Fprintf(tw, "network\t%s\tdisks %s, control %s\n", orDefault(n.MigrationURI, "-"), orDefault(n.DisksURI, "-"), orDefault(n.ControlURI, "-"))
	tls := "no"
	if n.TLS {
		tls = "native, tls.destination " + n.TLSDestination
	}
	fmt.Fprintf(tw, "tls\t%s\n", tls)
	m := p.Memory
	fmt.Fprintf(tw, "memory\t%s RAM, %s of it resident (QEMU %s); first pass %s\n", size(m.RAMBytes), orDefault(sizeOr0(m.GuestResidentBytes), "-"),
		size(m.ResidentBytes), size(m.FirstPassBytes))
	bw := "unknown"
	if p.BandwidthBps > 0 {
		bw = size(p.BandwidthBps) + "/s"
	}
	fmt.Fprintf(tw, "dirty rate\t%s/s vs bandwidth %s\tsampled %.0fs, %s; bandwidth %s\n", size(m.DirtyBps), bw, m.SampleSeconds, orDefault(m.Mode, "-"), p.BandwidthSource)
	v := p.Verdict
	if !v.Known {
		fmt.Fprintf(tw, "verdict\tunknown\t%s\n", v.Reason)
	} else {
		fmt.Fprintf(tw, "verdict\t%s\t%s\n", v.Verdict, v.Reason)
		fmt.Fprintf(tw, "predicted\ttotal %s, downtime %s\tdisks %s, %d passes, max downtime %s\n", secs(v.TotalSeconds), secs(v.DowntimeSeconds),
			secs(v.DiskSeconds), v.Passes, secs(v.MaxDowntimeSeconds))
		lever := v.Lever
		if v.AutoConverge {
			lever = "auto-converge, then " + lever
		}
		fmt.Fprintf(tw, "lever\t%s\n", lever)
	}
	tw.Flush()
}

func secs(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(10 * time.Millisecond).String()
}

// size is b in the unit that suits it (unitFor).
func size(b uint64) string {
	unit, div := unitFor(b)
	if unit == "KiB" {
		return fmt.Sprintf("%.0f KiB", float64(b)/div)
	}
	return fmt.Sprintf("%.1f %s", float64(b)/div, unit)
}

// unitFor is the unit a byte count reads best in: KiB under a MiB, GiB
// from 10 GiB, MiB between; and its size.
func unitFor(b uint64) (string, float64) {
	switch {
	case b < 1<<20:
		return "KiB", 1 << 10
	case b >= 10<<30:
		return "GiB", 1 << 30
	}
	return "MiB", 1 << 20
}

// sizeOr0 is size, or "" for 0 (not known).
func sizeOr0(b uint64) string {
	if b == 0 {
		return ""
	}
	return size(b)
}
