// Package virt is ferry's only door to libvirt (through the pure-Go
// github.com/digitalocean/go-libvirt client). It exists to put the things that
// client lacks around every call: a deadline with a name on every short call,
// a watchdog that turns a hung daemon into an error, error classes from
// pkg/errdefs instead of libvirt codes, and plain value types (MigrateSpec,
// JobStats, DomainState) so that no other package sees a go-libvirt type.
//
// A long Perform3Params call (Migrate) blocks until the job ends and gets a
// connection of its own; stats, control and the watchdog share another, since
// libvirtd serves at most five calls per client at once.
//
// An Observer (WithObserver) hears every call under a fixed name, never a
// domain or a URI, with its time and error, and every watchdog trip: what
// ferryd's metrics count, without this package knowing Prometheus.
package virt
