//go:build integration

package engine

import (
	"context"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/virt"
)

// TestProbeJobSurvivesConnectionClose answers the question the restart
// design rests on (pkg/migration's package doc): does a peer-to-peer
// migration job keep running in libvirt when the connection that called
// Perform3Params closes? It closes that connection once the job has moved
// bytes and fails unless the job goes on moving bytes, completes, and leaves
// the guest running on the destination with its heartbeat continuous and
// the source's completed-job statistics readable.
func TestProbeJobSurvivesConnectionClose(t *testing.T) {
	ctx := context.Background()
	dirty(t, 0, 0)
	g := guest(t)
	from, to := where(t, g)
	if err := theLab.PrecreateDisk(ctx, to, g); err != nil {
		t.Fatal(err)
	}
	dstOff := g.LogOffset(to)
	mc, err := from.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 10 MiB/s: ~150 MiB of disk and RAM take ~15 s, time enough to close
	// the connection mid-job and watch the job carry on.
	spec := virt.MigrateSpec{DestURI: to.TCPURI(), MigrateURI: "tcp://" + to.Mig.String(), DisksURI: "tcp://" + to.Mig.String(),
		Disks: []string{"vda"}, Copy: virt.CopyFull, PersistDest: true, Bandwidth: 10}
	done := make(chan error, 1)
	go func() { done <- mc.Migrate(context.Background(), g.Spec.Name, spec) }()
	ctl, err := from.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()

	waitMoving(t, &run{g: g, from: from}, 8<<20)
	before, err := ctl.JobStats(ctx, g.Spec.Name, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before closing: job running %v, %d MiB moved", before.Elapsed, before.DataProcessed>>20)
	mc.Close()
	t.Logf("Perform3Params returned after the close: %v", <-done)

	var maxSeen uint64
	for deadline := time.Now().Add(3 * time.Minute); ; {
		st, err := ctl.JobStats(ctx, g.Spec.Name, false)
		if err != nil {
			t.Fatalf("job stats after the close: %v", err)
		}
		if st.Type != virt.JobUnbounded {
			break
		}
		maxSeen = max(maxSeen, st.DataProcessed)
		if time.Now().After(deadline) {
			t.Fatalf("the job still runs 3 minutes after the close (%d MiB moved)", st.DataProcessed>>20)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("after the close the job went on to %d MiB moved, then ended", maxSeen>>20)
	if maxSeen <= before.DataProcessed {
		t.Errorf("no bytes moved after the Perform3Params connection closed (%d MiB before, %d MiB after): the job did not survive", before.DataProcessed>>20, maxSeen>>20)
	}

	dc, err := to.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	ds, err := dc.DomainState(ctx, g.Spec.Name)
	t.Logf("destination domain: %v/%d (%v)", ds.State, ds.Reason, err)
	ss, serr := ctl.DomainState(ctx, g.Spec.Name)
	t.Logf("source domain: %v/%d (%v)", ss.State, ss.Reason, serr)
	cs, cerr := ctl.JobStats(ctx, g.Spec.Name, true)
	t.Logf("source completed stats: type %d downtime %v memory %d MiB err %q (%v)", cs.Type, cs.Downtime, cs.MemProcessed>>20, cs.ErrMsg, cerr)
	if err != nil || ds.State != virt.StateRunning {
		t.Fatalf("destination domain %v (%v), want running: the job did not complete after its connection closed", ds.State, err)
	}
	if serr == nil && ss.State != virt.StateShutoff {
		t.Errorf("source domain %v, want shut off (migrated)", ss.State)
	}
	if cerr != nil || cs.Type != virt.JobCompleted || cs.Downtime <= 0 {
		t.Errorf("source completed-job statistics: type %d downtime %v (%v), want a completed job with its downtime", cs.Type, cs.Downtime, cerr)
	}
	// What the engine's undefine-source step does; then the heartbeat and
	// the source's domain are checked as for every engine migration.
	if err := ctl.Control(ctx, g.Spec.Name, virt.Control{Op: virt.OpUndefine}); err != nil {
		t.Errorf("undefine the source: %v", err)
	}
	(&run{g: g, from: from, to: to, dstOff: dstOff}).moved(t)
}
