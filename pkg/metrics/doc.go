// Package metrics is ferryd's Prometheus metrics: the one importer of
// github.com/prometheus/client_golang. The packages that do the work do
// not know Prometheus; each defines the observer it reports to
// (migration.Observer, oslo.Observer, virt.Observer) and *Metrics
// implements all three, so cmd/ferryd wires one value into each.
//
// Names follow Prometheus's conventions: a ferry_ prefix, base units
// (seconds, bytes), _total on counters. No label carries a migration,
// an instance, a host or anything else a sender chooses: RPC methods are
// counted by name only when they are ones ferryd serves (Options.Methods),
// every other name counts as "other".
//
//	ferry_migrations_total{outcome}                  completed | failed | cancelled | error
//	ferry_migration_duration_seconds{outcome}        histogram: start to end of a migration that was queued
//	ferry_migration_downtime_seconds                 histogram: achieved downtime of completed migrations
//	ferry_migration_bytes_total{kind}                memory | disk, counted when a migration ends
//	ferry_migrations_in_flight{role}                 source | destination, read when scraped
//	ferry_migration_actions_total{action,result}     set-downtime, post-copy, pause, abort, post-copy-pause, post-copy-resume; ok | error
//	ferry_rpc_requests_total{method,kind,outcome}    kind call | cast; outcome ok | error
//	ferry_rpc_duration_seconds{method,kind}          histogram: the handler's time
//	ferry_rpc_forwarded_total{outcome}               companion mode: forwarded | duplicate | expired | returned | unconfirmed
//	ferry_rpc_duplicates_total                       messages dropped for a _unique_id seen before
//	ferry_amqp_sessions_lost_total{link}             a session in use ended under it
//	ferry_amqp_reconnects_total{link}                the link is served again after a loss or failed dials
//	ferry_libvirt_calls_total{call,result}           result ok | timeout | unavailable | not_found | error
//	ferry_libvirt_call_duration_seconds{call}        histogram
//	ferry_libvirt_watchdog_trips_total               pings that outlived their timeout: the connection was cut
//
// Counters start at zero with each ferryd: a migration counts in the
// process that saw it end (a restarted engine that settles a re-attached
// migration counts it; one that ended before the restart is not counted
// again).
package metrics
