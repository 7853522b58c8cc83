//go:build integration

package engine

import (
	"context"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/virt"
)

// TestProbeJobSurvivesConnectionClose answers the question the restart
// design rests on: does a peer-to-peer migration job keep running in
// libvirt when the connection that called Perform3Params closes?
func TestProbeJobSurvivesConnectionClose(t *testing.T) {
	ctx := context.Background()
	g := guest(t)
	from, to := where(t, g)
	if err := theLab.PrecreateDisk(ctx, to, g); err != nil {
		t.Fatal(err)
	}
	mc, err := from.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec := virt.MigrateSpec{DestURI: to.TCPURI(), MigrateURI: "tcp://" + to.Mig.String(), DisksURI: "tcp://" + to.Mig.String(),
		Disks: []string{"vda"}, Copy: virt.CopyFull, PersistDest: true, Bandwidth: 30}
	done := make(chan error, 1)
	go func() { done <- mc.Migrate(context.Background(), g.Spec.Name, spec) }()
	time.Sleep(3 * time.Second)
	ctl, err := from.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	before, err := ctl.JobStats(ctx, g.Spec.Name, false)
	t.Logf("before closing: job type %d, processed %d MiB (%v)", before.Type, before.DataProcessed>>20, err)
	mc.Close()
	t.Logf("Perform3Params returned after the close: %v", <-done)
	for i := 0; i < 120; i++ {
		st, err := ctl.JobStats(ctx, g.Spec.Name, false)
		ds, _ := ctl.DomainState(ctx, g.Spec.Name)
		t.Logf("t+%ds: job type %d processed %d MiB remaining %d MiB; domain %v/%d (%v)", i, st.Type, st.DataProcessed>>20, st.DataRemaining>>20, ds.State, ds.Reason, err)
		if err != nil || st.Type == virt.JobNone {
			break
		}
		time.Sleep(time.Second)
	}
	dc, err := to.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	ds, err := dc.DomainState(ctx, g.Spec.Name)
	t.Logf("destination domain: %v/%d (%v)", ds.State, ds.Reason, err)
	ss, err := ctl.DomainState(ctx, g.Spec.Name)
	t.Logf("source domain: %v/%d (%v)", ss.State, ss.Reason, err)
	cs, err := ctl.JobStats(ctx, g.Spec.Name, true)
	t.Logf("source completed stats: type %d downtime %v err %q (%v)", cs.Type, cs.Downtime, cs.ErrMsg, err)
}
