package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/pkg/status"
)

func planCloud() (*fakeNova, *fakeFerryds) {
	n, fd := cloud()
	fd.plans = map[string]map[string]status.Plan{"lab-a": {srvID: {InstanceUUID: srvID, Source: "lab-a", Copy: "incremental",
		Disks: []status.PlanDisk{{Target: "vda", Copy: "incremental", Bytes: 64 << 20, Note: "incremental if lab-b has base abc, else full"},
			{Target: "vdb", Copy: "skip", Note: "volume v-1"}},
		Network:      status.PlanNetwork{MigrationURI: "tcp://lab-b", DisksURI: "tcp://lab-b", ControlURI: "qemu+tcp://lab-b/system"},
		Memory:       status.PlanMemory{RAMBytes: 256 << 20, DirtyBps: 90 << 20, SampleSeconds: 5, Mode: "page-sampling"},
		BandwidthBps: 100 << 20, BandwidthSource: "configured",
		Verdict: status.PlanVerdict{Known: true, Verdict: "abort", Lever: "abort", TotalSeconds: 7.2, Passes: 3,
			Reason: "pre-copy does not converge: floor 207.4 MiB at 100.0 MiB/s needs ≥ 2.07s downtime (budget 500ms) or ≥ 3.5 Gbit/s"}}}}
	return n, fd
}

// plan finds the server's host through Nova and asks that host's ferryd;
// a plan whose verdict is "abort" is still a plan made: exit 0.
func TestPlan(t *testing.T) {
	n, fd := planCloud()
	a, out, errw := newApp(n, fd)
	if code := execute(a, "plan", "web-1", "--host", "lab-b", "--sample", "2s", "-f", "json"); code != 0 {
		t.Fatalf("exit %d: %s", code, errw)
	}
	var p status.Plan
	if err := json.Unmarshal(out.Bytes(), &p); err != nil || p.Dest != "lab-b" || p.Verdict.Lever != "abort" || len(p.Disks) != 2 {
		t.Fatalf("-f json: %+v %v\n%s", p, err, out)
	}
	if diff := cmp.Diff([]string{"lab-a " + srvID + " lab-b 2s"}, fd.planAsked); diff != "" {
		t.Errorf("ferryds asked (-want +got):\n%s", diff)
	}
	// The link's bandwidth: --bandwidth, else ferry.yaml's drain: bandwidth:.
	fd.planAsked = nil
	a, _, errw = newApp(n, fd)
	if code := execute(a, "plan", "web-1", "--bandwidth", "60", "-f", "json"); code != 0 {
		t.Fatalf("--bandwidth: exit %d: %s", code, errw)
	}
	a, _, errw = newApp(n, fd)
	a.conf = &config.CLI{Drain: config.CLIDrain{Bandwidth: 25}}
	if code := execute(a, "plan", "web-1", "-f", "json"); code != 0 {
		t.Fatalf("ferry.yaml's bandwidth: exit %d: %s", code, errw)
	}
	if diff := cmp.Diff([]string{"lab-a " + srvID + "  0s 60MiB/s", "lab-a " + srvID + "  0s 25MiB/s"}, fd.planAsked); diff != "" {
		t.Errorf("ferryds asked (-want +got):\n%s", diff)
	}

	a, out, errw = newApp(n, fd)
	if code := execute(a, "plan", srvID, "--host", "lab-b"); code != 0 {
		t.Fatalf("table: exit %d: %s", code, errw)
	}
	for _, want := range []string{"disk vda", "incremental 64.0 MiB", "incremental if lab-b has base abc", "disk vdb", "skip", "volume v-1",
		"network", "tcp://lab-b", "tls", "no", "dirty rate", "90.0 MiB/s vs bandwidth 100.0 MiB/s", "verdict", "abort", "needs ≥ 2.07s",
		"predicted", "total 7.2s", "lever"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestPlanFailuresAndUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown server", []string{"plan", "nope"}, 1, "not found"},
		{"no args", []string{"plan"}, 2, "takes SERVER"},
		{"bad format", []string{"plan", "web-1", "-f", "xml"}, 2, "want table, json or yaml"},
		{"bad sample", []string{"plan", "web-1", "--sample", "2m"}, 2, "--sample"},
	}
	for _, tc := range tests {
		n, fd := planCloud()
		a, _, errw := newApp(n, fd)
		if code := execute(a, tc.args...); code != tc.code || !strings.Contains(errw.String(), tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want %d with %q", tc.name, code, errw, tc.code, tc.want)
		}
	}
	// The host's ferryd down, or not holding the guest: exit 1.
	n, fd := planCloud()
	fd.down["lab-a"] = true
	a, _, errw := newApp(n, fd)
	if code := execute(a, "plan", "web-1"); code != 1 || !strings.Contains(errw.String(), "connection refused") {
		t.Errorf("ferryd down: exit %d: %s", code, errw)
	}
	n, fd = planCloud()
	delete(fd.plans["lab-a"], srvID)
	a, _, errw = newApp(n, fd)
	if code := execute(a, "plan", "web-1"); code != 1 || !strings.Contains(errw.String(), "not found") {
		t.Errorf("guest not on its host: exit %d: %s", code, errw)
	}
}
