package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

// What the engine, the RPC server and libvirt report fits their observers.
var (
	_ migration.Observer = (*Metrics)(nil)
	_ virt.Observer      = (*Metrics)(nil)
)

func mig(p migration.Phase, rec migration.Record) migration.Migration {
	return migration.Migration{Request: migration.Request{ID: "5b2f0000-0000-4000-8000-0000000000a1"}, Phase: p, Record: rec}
}

// A fake migration's events, as the engine reports them, end in the
// counters and histograms with the record's figures; a refusal counts as
// an outcome but not as a duration; nothing is labelled by migration.
func TestMigrationEvents(t *testing.T) {
	inflight := 3
	m := New(Options{NoRuntime: true, InFlight: map[string]func() int{
		"source": func() int { return inflight }, "destination": func() int { return 1 }}})
	rec := migration.Record{Total: 42 * time.Second, Downtime: 180 * time.Millisecond, MemBytes: 3 << 30, DiskBytes: 5 << 30,
		Actions: []migration.ActionRecord{{Action: "set-downtime"}, {Action: "set-downtime"}, {Action: "post-copy"}}}
	m.Phase(mig(migration.PhaseQueued, migration.Record{}), migration.PhaseNew)
	m.Phase(mig(migration.PhasePreparing, migration.Record{}), migration.PhaseQueued)
	m.Phase(mig(migration.PhaseRunning, migration.Record{}), migration.PhasePreparing)
	m.Action(mig(migration.PhaseRunning, rec), rec.Actions[0], nil)
	m.Action(mig(migration.PhaseRunning, rec), rec.Actions[1], nil)
	m.Action(mig(migration.PhaseRunning, rec), rec.Actions[2], errors.New("refused"))
	m.Phase(mig(migration.PhasePostCopy, migration.Record{}), migration.PhaseRunning)
	m.Phase(mig(migration.PhaseCompleted, rec), migration.PhasePostCopy)
	m.Phase(mig(migration.PhaseError, migration.Record{}), migration.PhaseNew) // refused before it was queued

	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"completed", testutil.ToFloat64(m.migrations.WithLabelValues("completed")), 1},
		{"error", testutil.ToFloat64(m.migrations.WithLabelValues("error")), 1},
		{"failed", testutil.ToFloat64(m.migrations.WithLabelValues("failed")), 0},
		{"memory bytes", testutil.ToFloat64(m.bytes.WithLabelValues("memory")), 3 << 30},
		{"disk bytes", testutil.ToFloat64(m.bytes.WithLabelValues("disk")), 5 << 30},
		{"set-downtime ok", testutil.ToFloat64(m.actions.WithLabelValues("set-downtime", "ok")), 2},
		{"post-copy error", testutil.ToFloat64(m.actions.WithLabelValues("post-copy", "error")), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	want := `
# HELP ferry_migration_downtime_seconds Achieved downtime of completed migrations, from the source's completed-job statistics.
# TYPE ferry_migration_downtime_seconds histogram
ferry_migration_downtime_seconds_bucket{le="0.01"} 0
ferry_migration_downtime_seconds_bucket{le="0.025"} 0
ferry_migration_downtime_seconds_bucket{le="0.05"} 0
ferry_migration_downtime_seconds_bucket{le="0.1"} 0
ferry_migration_downtime_seconds_bucket{le="0.2"} 1
ferry_migration_downtime_seconds_bucket{le="0.3"} 1
ferry_migration_downtime_seconds_bucket{le="0.5"} 1
ferry_migration_downtime_seconds_bucket{le="0.75"} 1
ferry_migration_downtime_seconds_bucket{le="1"} 1
ferry_migration_downtime_seconds_bucket{le="2"} 1
ferry_migration_downtime_seconds_bucket{le="5"} 1
ferry_migration_downtime_seconds_bucket{le="10"} 1
ferry_migration_downtime_seconds_bucket{le="+Inf"} 1
ferry_migration_downtime_seconds_sum 0.18
ferry_migration_downtime_seconds_count 1
# HELP ferry_migrations_in_flight Migrations in flight on this host, by role: source (not ended), destination (inbound slots held).
# TYPE ferry_migrations_in_flight gauge
ferry_migrations_in_flight{role="destination"} 1
ferry_migrations_in_flight{role="source"} 3
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"ferry_migration_downtime_seconds", "ferry_migrations_in_flight"); err != nil {
		t.Error(err)
	}
	// The duration histogram has the completed migration only (42 s), not the refusal.
	if n := testutil.CollectAndCount(m.duration); n != 1 {
		t.Errorf("duration series = %d, want 1 (completed)", n)
	}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(`
# HELP ferry_migration_duration_seconds Time from a migration's start to its end, by outcome (migrations refused before they were queued are left out).
# TYPE ferry_migration_duration_seconds histogram
`+histogramLines("ferry_migration_duration_seconds", `outcome="completed",`, durationBuckets, 42)),
		"ferry_migration_duration_seconds"); err != nil {
		t.Error(err)
	}
	inflight = 0
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(`
# HELP ferry_migrations_in_flight Migrations in flight on this host, by role: source (not ended), destination (inbound slots held).
# TYPE ferry_migrations_in_flight gauge
ferry_migrations_in_flight{role="destination"} 1
ferry_migrations_in_flight{role="source"} 0
`), "ferry_migrations_in_flight"); err != nil {
		t.Errorf("the gauge is read at each scrape: %v", err)
	}
}

// histogramLines is the exposition of one histogram series holding one
// observation v.
func histogramLines(name, labels string, buckets []float64, v float64) string {
	var b strings.Builder
	for _, le := range buckets {
		n := 0
		if v <= le {
			n = 1
		}
		fmt.Fprintf(&b, "%s_bucket{%sle=\"%g\"} %d\n", name, labels, le, n)
	}
	fmt.Fprintf(&b, "%s_bucket{%sle=\"+Inf\"} 1\n", name, labels)
	l := strings.TrimSuffix(labels, ",")
	fmt.Fprintf(&b, "%s_sum{%s} %g\n%s_count{%s} 1\n", name, l, v, name, l)
	return b.String()
}

// RPC methods a sender makes up count as "other": the label set stays
// bounded whatever comes off the wire.
func TestRPCMethodsBounded(t *testing.T) {
	m := New(Options{NoRuntime: true, Methods: []string{"live_migration", "pre_live_migration"}})
	m.RPC("live_migration", false, 3*time.Millisecond, nil)
	m.RPC("pre_live_migration", true, 2*time.Second, nil)
	m.RPC("pre_live_migration", true, time.Second, errors.New("MigrationPreCheckError"))
	for i := range 50 {
		m.RPC(fmt.Sprintf("made_up_%d", i), true, 0, errors.New("NoSuchMethod"))
	}
	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"live_migration", "cast", "ok"}, 1},
		{[]string{"pre_live_migration", "call", "ok"}, 1},
		{[]string{"pre_live_migration", "call", "error"}, 1},
		{[]string{"other", "call", "error"}, 50},
	} {
		if got := testutil.ToFloat64(m.rpcs.WithLabelValues(c.labels...)); got != c.want {
			t.Errorf("ferry_rpc_requests_total%v = %v, want %v", c.labels, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.rpcs); n != 4 {
		t.Errorf("%d RPC series, want 4", n)
	}
	if n := testutil.CollectAndCount(m.rpcLatency); n != 3 {
		t.Errorf("%d RPC latency series, want 3", n)
	}
}

func TestAMQPAndLibvirt(t *testing.T) {
	m := New(Options{NoRuntime: true})
	m.AMQPLost("server-consumer")
	m.AMQPLost("server-consumer")
	m.AMQPResumed("server-consumer")
	m.Forwarded("forwarded")
	m.Forwarded("forwarded")
	m.Forwarded("returned")
	m.Duplicate()
	m.LibvirtCall("job-stats", 2*time.Millisecond, nil)
	m.LibvirtCall("job-stats", 10*time.Second, fmt.Errorf("job stats of x: %w after 10s", errdefs.ErrTimeout))
	m.LibvirtCall("domain-state", time.Millisecond, fmt.Errorf("state of x: %w", errdefs.ErrNotFound))
	m.LibvirtCall("ping", time.Millisecond, fmt.Errorf("ping: %w", errdefs.ErrUnavailable))
	m.LibvirtCall("define", time.Millisecond, errors.New("xml"))
	m.WatchdogTrip()
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"lost", testutil.ToFloat64(m.lost.WithLabelValues("server-consumer")), 2},
		{"reconnects", testutil.ToFloat64(m.reconnects.WithLabelValues("server-consumer")), 1},
		{"forwarded", testutil.ToFloat64(m.forwarded.WithLabelValues("forwarded")), 2},
		{"returned", testutil.ToFloat64(m.forwarded.WithLabelValues("returned")), 1},
		{"duplicates", testutil.ToFloat64(m.duplicates), 1},
		{"job-stats ok", testutil.ToFloat64(m.libvirtCalls.WithLabelValues("job-stats", "ok")), 1},
		{"job-stats timeout", testutil.ToFloat64(m.libvirtCalls.WithLabelValues("job-stats", "timeout")), 1},
		{"domain-state not_found", testutil.ToFloat64(m.libvirtCalls.WithLabelValues("domain-state", "not_found")), 1},
		{"ping unavailable", testutil.ToFloat64(m.libvirtCalls.WithLabelValues("ping", "unavailable")), 1},
		{"define error", testutil.ToFloat64(m.libvirtCalls.WithLabelValues("define", "error")), 1},
		{"watchdog", testutil.ToFloat64(m.watchdog), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// The handler serves the text format, names linted by Prometheus's rules.
func TestHandler(t *testing.T) {
	m := New(Options{InFlight: map[string]func() int{"source": func() int { return 0 }}})
	m.RPC("x", true, time.Millisecond, nil)
	m.LibvirtCall("dial", time.Millisecond, nil)
	m.Phase(mig(migration.PhaseCompleted, migration.Record{Total: time.Second}), migration.PhaseRunning)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	req, _ := http.NewRequestWithContext(context.Background(), "GET", srv.URL, nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, s := range []string{"ferry_migrations_total{outcome=\"completed\"} 1", "go_goroutines", "ferry_libvirt_calls_total"} {
		if !strings.Contains(string(b), s) {
			t.Errorf("/metrics lacks %q", s)
		}
	}
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "ferry_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}
