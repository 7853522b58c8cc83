package metrics

import (
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
)

// Options configure the metrics.
type Options struct {
	// Methods are the RPC methods counted by their name; any other a
	// message names is counted as "other".
	Methods []string
	// InFlight reads the migrations in flight, by role ("source",
	// "destination"), each time the metrics are scraped.
	InFlight map[string]func() int
	// NoRuntime leaves out the Go runtime's and the process's collectors
	// (tests).
	NoRuntime bool
}

// Metrics holds ferryd's metrics in a registry of its own.
type Metrics struct {
	reg     *prometheus.Registry
	methods map[string]bool

	migrations *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	downtime   prometheus.Histogram
	bytes      *prometheus.CounterVec
	actions    *prometheus.CounterVec

	rpcs       *prometheus.CounterVec
	rpcLatency *prometheus.HistogramVec
	forwarded  *prometheus.CounterVec
	duplicates prometheus.Counter
	lost       *prometheus.CounterVec
	reconnects *prometheus.CounterVec

	libvirtCalls   *prometheus.CounterVec
	libvirtLatency *prometheus.HistogramVec
	watchdog       prometheus.Counter
}

// Buckets, in seconds.
var (
	// A live migration takes from seconds (an idle guest on a fast link)
	// to Nova's completion timeout (800 s per GiB).
	durationBuckets = []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200}
	// Nova's default max downtime is 500 ms; a pause or post-copy switch
	// shows in the tail.
	downtimeBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10}
	// An RPC handler: a cast's milliseconds to a pre_live_migration's minutes.
	rpcBuckets = prometheus.ExponentialBuckets(0.001, 4, 10) // 1 ms … 262 s
	// A libvirt call: a lookup's half millisecond to a hung daemon's timeout.
	libvirtBuckets = prometheus.ExponentialBuckets(0.0005, 4, 10) // 0.5 ms … 131 s
)

// New builds the metrics and registers them.
func New(o Options) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), methods: map[string]bool{}}
	for _, n := range o.Methods {
		m.methods[n] = true
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	histogram := func(name, help string, b []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: b}, labels)
	}
	m.migrations = counter("ferry_migrations_total", "Live migrations this host ran as the source that ended, by outcome.", "outcome")
	m.duration = histogram("ferry_migration_duration_seconds", "Time from a migration's start to its end, by outcome (migrations refused before they were queued are left out).", durationBuckets, "outcome")
	m.downtime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_migration_downtime_seconds",
		Help: "Achieved downtime of completed migrations, from the source's completed-job statistics.", Buckets: downtimeBuckets})
	m.bytes = counter("ferry_migration_bytes_total", "Bytes ended migrations moved, by kind (memory, disk).", "kind")
	m.actions = counter("ferry_migration_actions_total", "Actions the monitor took on migration jobs, by action and result.", "action", "result")
	m.rpcs = counter("ferry_rpc_requests_total", "RPC requests served, by method, kind (call, cast) and outcome (ok, error).", "method", "kind", "outcome")
	m.rpcLatency = histogram("ferry_rpc_duration_seconds", "Time the RPC handler took, by method and kind.", rpcBuckets, "method", "kind")
	m.forwarded = counter("ferry_rpc_forwarded_total", "Messages companion mode does not own, settled by outcome (forwarded, duplicate, expired, returned, unconfirmed).", "outcome")
	m.duplicates = prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_rpc_duplicates_total",
		Help: "Messages dropped because their _unique_id was seen before."})
	m.lost = counter("ferry_amqp_sessions_lost_total", "AMQP sessions that ended under their user, by link.", "link")
	m.reconnects = counter("ferry_amqp_reconnects_total", "Times a link was served by the broker again after a loss or failed dials, by link.", "link")
	m.libvirtCalls = counter("ferry_libvirt_calls_total", "libvirt calls, by call and result (ok, timeout, unavailable, not_found, error).", "call", "result")
	m.libvirtLatency = histogram("ferry_libvirt_call_duration_seconds", "Time a libvirt call took, waiting for a call slot included, by call.", libvirtBuckets, "call")
	m.watchdog = prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_libvirt_watchdog_trips_total",
		Help: "Pings to libvirtd that outlived their timeout: the watchdog cut the connection."})
	m.reg.MustRegister(m.migrations, m.duration, m.downtime, m.bytes, m.actions, m.rpcs, m.rpcLatency, m.forwarded, m.duplicates,
		m.lost, m.reconnects, m.libvirtCalls, m.libvirtLatency, m.watchdog)
	for role, f := range o.InFlight {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_migrations_in_flight",
			Help:        "Migrations in flight on this host, by role: source (not ended), destination (inbound slots held).",
			ConstLabels: prometheus.Labels{"role": role}}, func() float64 { return float64(f()) }))
	}
	if !o.NoRuntime {
		m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	for _, p := range []migration.Phase{migration.PhaseCompleted, migration.PhaseFailed, migration.PhaseCancelled, migration.PhaseError} {
		m.migrations.WithLabelValues(string(p)) // every outcome shows, at zero
	}
	for _, k := range []string{"memory", "disk"} {
		m.bytes.WithLabelValues(k)
	}
	return m
}

// Handler serves the metrics in Prometheus's text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is where the metrics are registered (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Phase counts an ended migration (migration.Observer).
func (m *Metrics) Phase(mg migration.Migration, from migration.Phase) {
	if !mg.Phase.Terminal() {
		return
	}
	outcome := string(mg.Phase)
	m.migrations.WithLabelValues(outcome).Inc()
	rec := mg.Record
	if from != migration.PhaseNew { // a refusal never ran
		m.duration.WithLabelValues(outcome).Observe(rec.Total.Seconds())
	}
	if mg.Phase == migration.PhaseCompleted {
		m.downtime.Observe(rec.Downtime.Seconds())
	}
	m.bytes.WithLabelValues("memory").Add(float64(rec.MemBytes))
	m.bytes.WithLabelValues("disk").Add(float64(rec.DiskBytes))
}

// Action counts an action the monitor took (migration.Observer).
func (m *Metrics) Action(_ migration.Migration, a migration.ActionRecord, err error) {
	m.actions.WithLabelValues(a.Action, okOr(err, "error")).Inc()
}

// RPC counts a request served (oslo.Observer).
func (m *Metrics) RPC(method string, call bool, took time.Duration, err error) {
	if !m.methods[method] {
		method = "other"
	}
	kind := "cast"
	if call {
		kind = "call"
	}
	m.rpcs.WithLabelValues(method, kind, okOr(err, "error")).Inc()
	m.rpcLatency.WithLabelValues(method, kind).Observe(took.Seconds())
}

// Forwarded counts a message companion mode settled without owning it
// (oslo.Observer); outcome is one of a fixed set.
func (m *Metrics) Forwarded(outcome string) { m.forwarded.WithLabelValues(outcome).Inc() }

// Duplicate counts a dropped duplicate (oslo.Observer).
func (m *Metrics) Duplicate() { m.duplicates.Inc() }

// AMQPLost counts a lost session (oslo.Observer).
func (m *Metrics) AMQPLost(link string) { m.lost.WithLabelValues(link).Inc() }

// AMQPResumed counts a reconnect (oslo.Observer).
func (m *Metrics) AMQPResumed(link string) { m.reconnects.WithLabelValues(link).Inc() }

// LibvirtCall counts a libvirt call and its time (virt.Observer).
func (m *Metrics) LibvirtCall(call string, took time.Duration, err error) {
	m.libvirtCalls.WithLabelValues(call, libvirtResult(err)).Inc()
	m.libvirtLatency.WithLabelValues(call).Observe(took.Seconds())
}

// WatchdogTrip counts a watchdog's cut (virt.Observer).
func (m *Metrics) WatchdogTrip() { m.watchdog.Inc() }

func okOr(err error, failed string) string {
	if err == nil {
		return "ok"
	}
	return failed
}

func libvirtResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, errdefs.ErrTimeout):
		return "timeout"
	case errors.Is(err, errdefs.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, errdefs.ErrNotFound):
		return "not_found"
	}
	return "error"
}
