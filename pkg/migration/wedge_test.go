package migration

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/pkg/virt/virttest"
)

func TestWedged(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 19, 0, 0, 0, time.UTC)
	tests := []struct {
		name          string
		unanswered    time.Time
		now           time.Time
		postCopy, cut bool
		want          bool
	}{
		{"answering", time.Time{}, t0, false, false, false},
		{"not long enough", t0, t0.Add(44 * time.Second), false, false, false},
		{"wedged", t0, t0.Add(45 * time.Second), false, false, true},
		{"in post-copy the streams carry the guest's memory", t0, t0.Add(time.Hour), true, false, false},
		{"closed once", t0, t0.Add(time.Hour), false, true, false},
	}
	for _, tt := range tests {
		if got := Wedged(tt.unanswered, tt.now, 45*time.Second, tt.postCopy, tt.cut); got != tt.want {
			t.Errorf("%s: Wedged = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A destination lost mid-job wedges the source's libvirtd: job statistics
// time out and the job neither moves nor ends (seen in the lab with libvirt
// 9.0 and QEMU 7.2: the cancel waits on the disk mirror's writes to the dead
// peer, and the guest with it). After WedgeAfter the engine closes the
// streams to the destination's migration address, once; the job fails and
// the guest runs on the source.
func TestManagerCutsWedgedStreams(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answers bool
		shows   virt.JobType
	}{{"statistics time out", false, 0}, {"statistics show no job", true, virt.JobNone}, {"statistics show a failed job", true, virt.JobFailed}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFixture(t)
				f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 128, DirtyMiBps: 60, BandwidthMiBps: 50, WedgeAfter: 3 * time.Second,
					WedgedAnswers: tc.answers, WedgedType: tc.shows}
				var addrs []string
				f.cut = func(_ context.Context, _, addr string) (int, error) {
					addrs = append(addrs, addr)
					return f.w.CutStreams("src", addr), nil
				}
				m := f.running(t)
				start(t, m, req("m", vm1, Policy{}))
				s := waitDelivered(t, m, "m")
				if s.Phase != PhaseFailed {
					t.Errorf("ended %s %q, want failed", s.Phase, s.Reason)
				}
				if diff := cmp.Diff([]string{"198.19.0.12"}, addrs); diff != "" {
					t.Errorf("streams closed to (-want +got):\n%s", diff)
				}
				if acts := actions(s); !strings.Contains(acts, "cut-streams") {
					t.Errorf("actions %s: no cut-streams", acts)
				}
				if st, ok := f.w.State("src", vm1); !ok || st.State != virt.StateRunning {
					t.Errorf("source %+v %v, want the guest running there", st, ok)
				}
			})
		})
	}
}
