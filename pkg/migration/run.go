package migration

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/virt"
)

// runner drives one migration through its phases. Work runs as named
// steps; each done step is journalled, so a restarted engine skips it.
type runner struct {
	m       *Manager
	e       *entry
	log     *logrus.Entry
	st      State
	last    virt.JobStats // the latest sample
	start   time.Time     // the job's start, for sample times
	series  series        // the samples, for the record
	hasSlot bool
	// unanswered is since when no job was seen moving (zero while one
	// is); cut is set once the streams were closed.
	unanswered time.Time
	cut        bool
}

func newRunner(m *Manager, e *entry) *runner {
	s := e.snapshot()
	return &runner{m: m, e: e, log: m.o.Log.WithFields(s.LogFields()).WithField("dest", s.Dest.Host)}
}

func (r *runner) run(ctx context.Context) {
	defer func() {
		if r.hasSlot {
			r.m.slots.release()
		}
	}()
	for {
		var phase func(context.Context) error
		switch p := r.e.snapshot().Phase; p {
		case PhaseQueued:
			phase = r.queued
		case PhasePreparing:
			phase = r.preparing
		case PhaseRunning, PhasePostCopy:
			phase = r.running
		default:
			return // terminal
		}
		if err := r.guarded(ctx, phase); err != nil {
			_ = r.update(func(m *Migration) { m.Detached = true })
			r.log.WithField("phase", r.e.snapshot().Phase).Info("detached; a restarted engine re-attaches")
			return
		}
	}
}

// errPanicked: a panic's outcome could not be recorded either.
var errPanicked = errors.New("the runner panicked")

// guarded runs one phase, turning a panic (a bug in ferry or in a caller's
// hook) into the migration's end. Before the job started the guest was not
// touched: the migration has failed. Once it started ferry no longer
// watches the job: as nova-compute does when its monitor raises, the job is
// aborted (unless in post-copy, where it cannot be) and the migration ends
// in error, for ferry cannot say where the guest runs. When even that
// cannot be recorded the runner detaches.
func (r *runner) guarded(ctx context.Context, phase func(context.Context) error) (err error) {
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		err = nil
		r.log.WithField("panic", p).WithField("stack", string(debug.Stack())).Error("bug: the migration's runner panicked")
		snap := r.e.snapshot()
		if snap.Phase.Terminal() {
			return // it had ended (a hook of its last phase change panicked)
		}
		to, reason := PhaseFailed, fmt.Sprintf("ferry failed before the job started (%v); the guest was not touched", p)
		if snap.done("job-started") {
			to, reason = PhaseError, fmt.Sprintf("ferry's monitor failed (%v); %s; check on both hosts where the guest runs", p, r.abandon(ctx, snap))
		}
		if perr := safely(func() error { r.setPhase(ctx, to, reason); return nil }); perr != nil {
			r.log.WithError(perr).Error("bug: recording the outcome of a panic panicked")
		}
		if !r.e.snapshot().Phase.Terminal() {
			err = fmt.Errorf("%w: %v", errPanicked, p)
		}
	}()
	return phase(ctx)
}

// abandonTimeout bounds the abort of a job whose monitor failed.
const abandonTimeout = 30 * time.Second

// abandon aborts the job of a running migration whose monitor failed, on a
// connection of its own, and says what became of the job.
func (r *runner) abandon(ctx context.Context, snap Migration) string {
	if snap.Phase == PhasePostCopy {
		return "a job in post-copy cannot be aborted"
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abandonTimeout)
	defer cancel()
	err := safely(func() error {
		h, err := r.m.o.Dial(actx, r.m.o.LocalURI)
		if err != nil {
			return err
		}
		defer h.Close()
		return h.Control(actx, snap.InstanceUUID, virt.Control{Op: virt.OpAbort})
	})
	if err != nil {
		r.log.WithError(err).Error("the job of a migration whose monitor failed could not be aborted")
		return fmt.Sprintf("aborting the job failed (%v)", err)
	}
	return "the job was aborted"
}

// update changes the journalled state; the error is the journal's.
func (r *runner) update(f func(m *Migration)) error {
	r.e.mu.Lock()
	f(&r.e.m)
	r.e.m.Updated = time.Now()
	r.e.mu.Unlock()
	if err := r.m.persist(r.e); err != nil {
		r.log.WithError(err).Error("journal write failed")
		return err
	}
	return nil
}

// journalFirst journals a change before the engine acts on it: the change
// is applied in memory only once it is on disk. A step that guards a side
// effect (job-started) is recorded this way, so that a failed write stops
// the migration before the side effect.
func (r *runner) journalFirst(f func(m *Migration)) error {
	r.e.saveMu.Lock()
	defer r.e.saveMu.Unlock()
	next := r.e.snapshot()
	f(&next)
	next.Updated = time.Now()
	if err := r.m.j.save(&next); err != nil {
		r.log.WithError(err).Error("journal write failed")
		return err
	}
	r.e.mu.Lock()
	f(&r.e.m)
	r.e.m.Updated = next.Updated
	r.e.mu.Unlock()
	return nil
}

// setPhase validates, journals, logs a transition and the reports it owes,
// and wakes the delivery loop. It never waits on the caller's records.
func (r *runner) setPhase(ctx context.Context, p Phase, reason string) {
	cur := r.e.snapshot()
	if err := checkTransition(cur.Phase, p); err != nil {
		r.log.WithError(err).Error("bug: refused transition")
		return
	}
	names := r.m.o.Records.Reports(withPhase(cur, p, reason), cur.Phase, p)
	_ = r.update(func(m *Migration) {
		m.Phase = p
		if reason != "" {
			m.Reason = reason
		}
		if p.Terminal() {
			m.Record.Ended = time.Now()
			if m.Record.Total == 0 {
				m.Record.Total = m.Record.Ended.Sub(m.Record.Started)
			}
		}
		m.Reports = numbered(m.Reports, names, p, m.Reason)
	})
	snap := r.e.snapshot()
	l := r.log.WithFields(logrus.Fields{"from": cur.Phase, "to": p})
	if reason != "" {
		l = l.WithField("reason", reason)
	}
	l.Info("phase")
	if p.Terminal() {
		rec := snap.Record
		r.log.WithFields(logrus.Fields{"outcome": p, "total": rec.Total, "downtime": rec.Downtime,
			"memory_bytes": rec.MemBytes, "disk_bytes": rec.DiskBytes, "iterations": rec.Iterations,
			"bandwidth_bps": int64(rec.Bandwidth), "floor_bytes": rec.Floor, "stalls": rec.Stalls,
			"actions": len(rec.Actions)}).Info("migration record")
	}
	r.m.o.Observer.Phase(snap, cur.Phase)
	r.m.deliverLoop(r.e)
}

func withPhase(m Migration, p Phase, reason string) Migration {
	m.Phase = p
	if reason != "" {
		m.Reason = reason
	}
	return m
}

// commanded journals the reports an operator's command that took effect
// owes (Commander), before any report of the outcome it causes.
func (r *runner) commanded(kind string) {
	c, ok := r.m.o.Records.(Commander)
	if !ok {
		return
	}
	names := c.CommandReports(r.e.snapshot(), kind)
	if len(names) == 0 {
		return
	}
	_ = r.update(func(m *Migration) { m.Reports = numbered(m.Reports, names, m.Phase, "") })
	r.m.deliverLoop(r.e)
}

// step runs a named step once.
func (r *runner) step(name string, f func() error) error {
	if snap := r.e.snapshot(); snap.done(name) {
		return nil
	}
	if err := f(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	_ = r.update(func(m *Migration) { m.Steps = append(m.Steps, name) })
	return nil
}

func (r *runner) queued(ctx context.Context) error {
	granted, leave := r.e.granted, r.e.leave
	if granted == nil {
		granted, leave = r.m.slots.wait()
	}
	for {
		select {
		case <-granted:
			r.hasSlot = true
			r.setPhase(ctx, PhasePreparing, "")
			return nil
		case c := <-r.e.cmds:
			if c.kind == "abort" {
				answer(c, func() error {
					leave()
					_ = r.update(func(m *Migration) { m.AbortRequested = true })
					r.setPhase(ctx, PhaseCancelled, "aborted while queued")
					return nil
				})
				return nil
			}
			c.reply <- fmt.Errorf("%s: %w: the migration is still queued", c.kind, errdefs.ErrFailedPrecondition)
		case <-ctx.Done():
			leave()
			return context.Cause(ctx)
		}
	}
}

func (r *runner) preparing(ctx context.Context) error {
	if !r.hasSlot { // a resumed migration takes a slot if one is free
		r.hasSlot = r.m.slots.try()
	}
	type result struct {
		p   Preparation
		err error
	}
	done := make(chan result, 1)
	snap := r.e.snapshot()
	go func() { // owner: preparing (waits below)
		var res result
		res.err = safely(func() error {
			var err error
			res.p, err = r.m.o.Destination.Prepare(ctx, snap)
			return err
		})
		done <- res
	}()
	var res result
wait:
	for {
		select {
		case res = <-done:
			break wait
		case c := <-r.e.cmds:
			if c.kind == "abort" {
				answer(c, func() error {
					_ = r.update(func(m *Migration) { m.AbortRequested = true })
					r.commanded(c.kind)
					return nil
				})
				continue
			}
			c.reply <- fmt.Errorf("%s: %w: the migration is still preparing", c.kind, errdefs.ErrFailedPrecondition)
		}
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	switch {
	case r.e.snapshot().AbortRequested:
		r.setPhase(ctx, PhaseCancelled, "aborted while preparing")
	case res.err != nil:
		r.setPhase(ctx, PhaseFailed, "prepare destination: "+res.err.Error())
	default:
		p := res.p
		_ = r.update(func(m *Migration) {
			m.Prep = &p
			if p.State != nil {
				m.State = p.State
			}
		})
		r.setPhase(ctx, PhaseRunning, "")
	}
	return nil
}

// dialRetry connects, retrying while the daemon is unreachable.
func (r *runner) dialRetry(ctx context.Context, uri string) (Hypervisor, error) {
	wait := 500 * time.Millisecond
	for {
		h, err := r.m.o.Dial(ctx, uri)
		if err == nil {
			return h, nil
		}
		r.log.WithError(err).Warn("libvirt unreachable; retrying")
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, context.Cause(ctx)
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Second)
	}
}
