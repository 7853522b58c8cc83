// Package migration is ferry's engine: it runs a live migration from this
// host to another so that it always ends well — it converges, switches
// strategy, or aborts with a reason an operator can act on — and it keeps
// doing so across restarts of ferry itself.
//
// A Migration moves through Nova's phases (queued, preparing, running,
// running (post-copy), completed | failed | cancelled | error) along one
// transition table; every move is journalled (a small file per migration
// under the state directory), logged, reported to the caller's Records and
// shown to the Observer (metrics), as is every action the monitor takes.
// Every log line about a migration carries its ids and the request's
// (Request.LogFields).
// Work runs as named steps ("job-started", "read-stats", "undefine-source",
// "finish", "resume-guest", "rollback"); a done step is journalled, so a
// restarted engine neither repeats nor forgets one.
//
// The monitor samples the job every half second and feeds Decide, a pure
// function of the samples that estimates the bandwidth B, the floor F of the
// per-pass dirty set and the downtime F/B a switch-over needs, and picks one
// lever: max downtime, post-copy, pause or abort.
//
// # What a restart can rely on
//
// Probe (integration/engine TestProbeJobSurvivesConnectionClose, libvirt
// 9.0.0, QEMU 7.2, run by every `make test`, failing if any of this stops
// being true): a peer-to-peer job whose Perform3Params connection is closed
// once the job has moved 8 MiB keeps running — the Perform call returns
// "procedure interrupted", job stats on another connection go on rising,
// the job completes, the destination domain runs (reason "migrated"), the
// source shuts off (reason "migrated") and its completed-job statistics
// (downtime included) can still be read. So closing the engine detaches:
// it stops monitoring, journals "detached" and closes its connections, and
// never aborts. Only Abort, the policy or a panic (below) aborts a job. A
// new engine on the same state directory re-attaches: it polls the job
// while libvirt reports one, and when there is none it settles the outcome
// from both hosts' domain states (Nova's find_job_type rule, cross-checked
// with the destination): the source gone or shut off with the destination
// running means completed; the guest running on the source only means
// failed (or cancelled); anything else is an error an operator must look at.
//
// # When post-copy fails
//
// Once the guest runs on the destination there is no going back: the
// source holds a stale copy. On PAUSED_POSTCOPY_FAILED the engine tries
// libvirt's post-copy resume for PostcopyRecovery, and if that never works it
// ends in error saying the guest's memory is split, never resuming the
// source. On libvirt 9.0 with QEMU 7.2 under TCG the Perform call itself can
// hang after the failure, its job reporting stale statistics; the engine
// waits PostcopyHang for it, then recovers without it, so that this case
// ends too.
//
// # When ferry itself fails
//
// A panic in a runner, in the engine or in a caller's hook (Destination,
// Records, Observer), ends that migration, not ferryd, with the panic in
// the reason. Before the job started the guest was not touched, so the
// migration has failed. Once it started nothing watches the job any more:
// as nova-compute does when its monitor raises, the engine aborts it
// (unless it is in post-copy, where it cannot be) and ends in error. A
// panic in Deliver or Progress costs that report (given up like a refused
// one, the panic as its outcome) or that sample, never the migration.
package migration
