//go:build integration

package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/metrics"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/status"
	"opendev.org/x/ferry/pkg/virt"
)

// scrape reads a /metrics page into its series, keyed as the text format
// prints them: name{label="value",…} (labels sorted by name). The text
// format is parsed here by hand: pkg/metrics stays the one importer of
// Prometheus's client.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", l, err)
		}
		out[l[:i]] = v
	}
	return out
}

// TestMetricsDuringMigration migrates the package's guest through an engine
// wired as ferryd wires it (the metrics observe the engine and every
// libvirt connection, the status API serves both), scrapes /metrics and
// reads /v1/migrations/{id} while the job runs and after it ended, and
// checks the figures against the migration's own record.
func TestMetricsDuringMigration(t *testing.T) {
	dirty(t, 64, 100)
	defer dirty(t, 0, 0)
	ctx := context.Background()
	g := guest(t)
	from, to := where(t, g)

	var mgr *migration.Manager
	m := metrics.New(metrics.Options{InFlight: map[string]func() int{"source": func() int {
		n := 0
		for _, s := range mgr.List() {
			if !s.Phase.Terminal() {
				n++
			}
		}
		return n
	}}})
	hooks := &labHooks{t: t, g: g, to: to}
	l := logrus.New()
	l.SetOutput(logWriter{t})
	var err error
	mgr, err = migration.NewManager(migration.Options{StateDir: t.TempDir(), LocalURI: from.URI(), Destination: hooks, Records: hooks,
		Dial: func(ctx context.Context, uri string) (migration.Hypervisor, error) {
			return virt.Dial(ctx, uri, virt.Timeouts{}, virt.WithObserver(m))
		},
		Observer: m, Log: logrus.NewEntry(l), PostcopyRecovery: 45 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	stop := runManager(mgr)
	defer stop()
	// The status API over the engine, serving /metrics too, as ferryd does.
	api, err := status.New(status.Options{Listen: "127.0.0.1:0", Engine: mgr, Metrics: m.Handler(), Log: logrus.NewEntry(l)})
	if err != nil {
		t.Fatal(err)
	}
	apiCtx, apiStop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- api.Serve(apiCtx) }() // owner: the test (waits below)
	defer func() { apiStop(); <-served }()
	base := "http://" + api.Addr().String()
	metricsURL := base + "/metrics"

	before := scrape(t, metricsURL)
	c, err := from.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	xml, err := c.DomainXML(ctx, g.Spec.Name, false)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	all, err := virt.ParseDisks(xml)
	if err != nil {
		t.Fatal(err)
	}
	sel := disks.Select(all, []disks.Volume{{ID: g.LoopSerial}, {ID: g.NBDSerial}}, nil)
	r := &run{g: g, from: from, to: to, m: mgr, hooks: hooks, id: fmt.Sprintf("metrics-%d", time.Now().UnixNano()), stop: stop,
		srcOff: g.LogOffset(from), dstOff: g.LogOffset(to)}
	req := migration.Request{ID: r.id, InstanceUUID: g.UUID, Dest: hostnet.Dest{Host: to.Hostname, Mgmt: to.Mgmt.String()},
		DestCheckURI: to.URI(), Policy: migration.Policy{DowntimeBudget: 2 * time.Second}, Job: migration.Job{Disks: sel.Copy, Bandwidth: 50}}
	if _, err := mgr.Start(ctx, req); err != nil {
		t.Fatal(err)
	}

	// During: one source migration in flight, none ended yet, the monitor's
	// job-stats calls counted.
	waitMoving(t, r, 16<<20)
	during := scrape(t, metricsURL)
	var shown status.Migration
	getJSON(t, base+"/v1/migrations/"+r.id, &shown)
	// The engine's latest sample: the disks are mirrored before memory
	// moves, so either may be what it shows yet.
	if p := shown.Progress; shown.Phase != "running" || p == nil || p.MemoryProcessedBytes+p.DiskProcessedBytes == 0 ||
		p.MemoryTotalBytes+p.DiskTotalBytes == 0 {
		t.Errorf("during the job the status API shows %s with progress %+v, want running with the job's figures", shown.Phase, shown.Progress)
	}
	for series, want := range map[string]float64{
		`ferry_migrations_in_flight{role="source"}`:   1,
		`ferry_migrations_total{outcome="completed"}`: before[`ferry_migrations_total{outcome="completed"}`],
		`ferry_migration_downtime_seconds_count`:      0,
	} {
		if got := during[series]; got != want {
			t.Errorf("during the job: %s = %v, want %v", series, got, want)
		}
	}
	if during[`ferry_libvirt_calls_total{call="job-stats",result="ok"}`] == 0 || during[`ferry_libvirt_calls_total{call="dial",result="ok"}`] == 0 {
		t.Errorf("during the job: no job-stats or dial calls counted: %v", libvirtSeries(during))
	}
	if during[`ferry_migration_bytes_total{kind="memory"}`] != 0 {
		t.Error("bytes are counted when a migration ends, not before")
	}

	s := r.wait(t, 4*time.Minute)
	if s.Phase != migration.PhaseCompleted {
		t.Fatalf("phase %s: %s", s.Phase, s.Reason)
	}
	r.moved(t)
	after := scrape(t, metricsURL)
	rec := s.Record
	shown = status.Migration{}
	getJSON(t, base+"/v1/migrations/"+r.id, &shown)
	if shown.Phase != "completed" || shown.Progress != nil || shown.Record.MemoryBytes != rec.MemBytes ||
		shown.Record.DiskBytes != rec.DiskBytes || shown.Record.DowntimeSeconds != rec.Downtime.Seconds() ||
		shown.Record.TotalSeconds != rec.Total.Seconds() || len(shown.Actions) != len(rec.Actions) {
		t.Errorf("after: the status API shows %+v, want the record %+v", shown, rec)
	}
	want := map[string]float64{
		`ferry_migrations_in_flight{role="source"}`:                   0,
		`ferry_migrations_total{outcome="completed"}`:                 1,
		`ferry_migrations_total{outcome="failed"}`:                    0,
		`ferry_migrations_total{outcome="error"}`:                     0,
		`ferry_migration_bytes_total{kind="memory"}`:                  float64(rec.MemBytes),
		`ferry_migration_bytes_total{kind="disk"}`:                    float64(rec.DiskBytes),
		`ferry_migration_downtime_seconds_count`:                      1,
		`ferry_migration_downtime_seconds_sum`:                        rec.Downtime.Seconds(),
		`ferry_migration_duration_seconds_count{outcome="completed"}`: 1,
		`ferry_migration_duration_seconds_sum{outcome="completed"}`:   rec.Total.Seconds(),
		`ferry_libvirt_watchdog_trips_total`:                          0,
	}
	byAction := map[string]float64{}
	for _, a := range rec.Actions {
		if strings.Contains(a.Reason, "(failed: ") {
			continue // counted with result="error"
		}
		byAction[a.Action]++
	}
	for a, n := range byAction {
		want[fmt.Sprintf(`ferry_migration_actions_total{action=%q,result="ok"}`, a)] = n
	}
	for series, w := range want {
		got, ok := after[series]
		if !ok || math.Abs(got-w) > 1e-6*math.Max(1, math.Abs(w)) {
			t.Errorf("after: %s = %v (present %v), want %v from the record", series, got, ok, w)
		}
	}
	if rec.MemBytes == 0 || rec.Downtime <= 0 || len(rec.Actions) == 0 {
		t.Errorf("the record has nothing to compare: %+v", rec)
	}
	if after[`ferry_libvirt_call_duration_seconds_count{call="migrate"}`] < 1 {
		t.Errorf("the Perform call's time was not observed: %v", libvirtSeries(after))
	}
	for k := range after {
		if strings.Contains(k, r.id) || strings.Contains(k, g.UUID) || strings.Contains(k, lab.InstancesPath) {
			t.Errorf("a series names the migration, the guest or a path: %s", k)
		}
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func libvirtSeries(m map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if strings.HasPrefix(k, "ferry_libvirt_calls_total") {
			out[k] = v
		}
	}
	return out
}
