package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
)

const planUUID = "0c1e7a52-3b1f-4a8e-9d6e-2f1a9e5c7b10"

// fakePlanner plans only planUUID, records what it was asked.
type fakePlanner struct {
	mu    sync.Mutex
	asked []string
}

func (f *fakePlanner) Plan(_ context.Context, r PlanRequest) (Plan, error) {
	inst, dest, sample := r.Instance, r.Dest, r.Sample
	f.mu.Lock()
	ask := fmt.Sprintf("%s %s %s", inst, dest, sample)
	if r.BandwidthBps > 0 {
		ask += fmt.Sprintf(" %dMiB/s", r.BandwidthBps>>20)
	}
	f.asked = append(f.asked, ask)
	f.mu.Unlock()
	switch {
	case inst != planUUID:
		return Plan{}, fmt.Errorf("instance %s: %w", inst, errdefs.ErrNotFound)
	case dest == "lab-a":
		return Plan{}, fmt.Errorf("%w: the destination is this host", errdefs.ErrInvalidArgument)
	case dest == "broken":
		return Plan{}, errors.New("libvirt went away")
	}
	return Plan{InstanceUUID: inst, Source: "lab-a", Dest: dest, Copy: "incremental",
		Disks:   []PlanDisk{{Target: "vda", Copy: "incremental", Backing: "abc"}, {Target: "vdb", Copy: "skip", Note: "volume v-1"}},
		Network: PlanNetwork{MigrationURI: "tcp://" + dest}, Memory: PlanMemory{RAMBytes: 256 << 20, DirtyBps: 1 << 20, SampleSeconds: sample.Seconds()},
		BandwidthBps: 100 << 20, BandwidthSource: "configured",
		Verdict: PlanVerdict{Known: true, Converges: true, Verdict: "converges", Lever: "none", TotalSeconds: 2.6, DowntimeSeconds: 0.01, Reason: "r"}}, nil
}

func TestPlanEndpoint(t *testing.T) {
	fp := &fakePlanner{}
	srv := newTestServer(t, Options{Planner: fp})
	tests := []struct {
		query string
		code  int
	}{
		{"instance=" + planUUID + "&dest=lab-b", 200},
		{"instance=" + planUUID + "&dest=lab-b&sample=2s", 200},
		{"instance=" + planUUID + "&dest=lab-b&bandwidth_mibs=64", 200},
		{"instance=" + planUUID + "&bandwidth_mibs=0", 400},
		{"instance=" + planUUID + "&bandwidth_mibs=-5", 400},
		{"instance=" + planUUID + "&bandwidth_mibs=1.5", 400},
		{"instance=" + planUUID, 200},
		{"instance=0c1e7a52-3b1f-4a8e-9d6e-2f1a9e5c7b11", 404},
		{"instance=" + strings.ToUpper(planUUID), 400},
		{"instance=../../etc", 400},
		{"", 400},
		{"instance=" + planUUID + "&dest=evil:22", 400},
		{"instance=" + planUUID + "&dest=user@host", 400},
		{"instance=" + planUUID + "&dest=a/b", 400},
		{"instance=" + planUUID + "&sample=5m", 400},
		{"instance=" + planUUID + "&sample=0s", 400},
		{"instance=" + planUUID + "&sample=x", 400},
		{"instance=" + planUUID + "&dest=lab-a", 400},
		{"instance=" + planUUID + "&dest=broken", 503},
	}
	for _, tc := range tests {
		code, h, body := get(t, srv.URL+"/v1/plan?"+tc.query)
		if code != tc.code {
			t.Errorf("GET /v1/plan?%s = %d %s, want %d", tc.query, code, body, tc.code)
		}
		if h.Get("Content-Type") != "application/json" {
			t.Errorf("GET /v1/plan?%s: Content-Type %q", tc.query, h.Get("Content-Type"))
		}
		if strings.Contains(string(body), "../etc") {
			t.Errorf("GET /v1/plan?%s echoed the query: %s", tc.query, body)
		}
	}
	// Only validated queries reach the planner.
	want := []string{planUUID + " lab-b 5s", planUUID + " lab-b 2s", planUUID + " lab-b 5s 64MiB/s", planUUID + "  5s", "0c1e7a52-3b1f-4a8e-9d6e-2f1a9e5c7b11  5s",
		planUUID + " lab-a 5s", planUUID + " broken 5s"}
	if diff := cmp.Diff(want, fp.asked); diff != "" {
		t.Errorf("planner asked (-want +got):\n%s", diff)
	}
	if code, _, _ := get(t, newTestServer(t, Options{}).URL+"/v1/plan?instance="+planUUID); code != http.StatusNotImplemented {
		t.Errorf("without a planner: %d, want 501", code)
	}
}

// The JSON shape, field names included, through the client.
func TestPlanShapeAndClient(t *testing.T) {
	srv := newTestServer(t, Options{Planner: &fakePlanner{}})
	_, _, body := get(t, srv.URL+"/v1/plan?instance="+planUUID+"&dest=lab-b")
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"instance_uuid", "source", "dest", "disks", "copy", "network", "memory", "bandwidth_bps", "bandwidth_source", "verdict"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("plan JSON lacks %q: %s", k, body)
		}
	}
	v := raw["verdict"].(map[string]any)
	for _, k := range []string{"known", "converges", "verdict", "lever", "total_seconds", "downtime_seconds", "reason"} {
		if _, ok := v[k]; !ok {
			t.Errorf("verdict JSON lacks %q", k)
		}
	}
	c := NewClient(Locator{Hosts: map[string]string{"lab-a": srv.URL}}, nil, nil, time.Second)
	p, err := c.Plan(context.Background(), "lab-a", PlanRequest{Instance: planUUID, Dest: "lab-b", Sample: 2 * time.Second, BandwidthBps: 64 << 20})
	if err != nil || p.Dest != "lab-b" || p.Memory.SampleSeconds != 2 || len(p.Disks) != 2 || !p.Verdict.Converges {
		t.Errorf("Client.Plan = %+v, %v", p, err)
	}
	if _, err := c.Plan(context.Background(), "lab-a", PlanRequest{Instance: "0c1e7a52-3b1f-4a8e-9d6e-2f1a9e5c7b11"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Client.Plan of a guest not there: %v, want ErrNotFound", err)
	}
	if _, err := c.Plan(context.Background(), "lab-a", PlanRequest{Instance: planUUID, Dest: "lab-a"}); !errors.Is(err, errdefs.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "the destination is this host") {
		t.Errorf("Client.Plan refused: %v, want ErrInvalidArgument with the reason", err)
	}
}
