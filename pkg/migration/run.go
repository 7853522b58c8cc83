package migration

import (
	"context"
	"fmt"
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
	hasSlot bool
}

func newRunner(m *Manager, e *entry) *runner {
	s := e.snapshot()
	return &runner{m: m, e: e, log: m.o.Log.WithFields(logrus.Fields{
		"migration_id": s.ID, "instance_uuid": s.InstanceUUID, "domain": s.Domain, "dest": s.DestHost})}
}

func (r *runner) run(ctx context.Context) {
	defer func() {
		if r.hasSlot {
			<-r.m.slots
		}
	}()
	for {
		var err error
		switch p := r.e.snapshot().Phase; p {
		case PhaseQueued:
			err = r.queued(ctx)
		case PhasePreparing:
			err = r.preparing(ctx)
		case PhaseRunning, PhasePostCopy:
			err = r.running(ctx)
		default:
			return // terminal
		}
		if err != nil {
			r.update(func(m *Migration) { m.Detached = true })
			r.log.WithField("phase", r.e.snapshot().Phase).Info("detached; a restarted engine re-attaches")
			return
		}
	}
}

// update changes the journalled state.
func (r *runner) update(f func(m *Migration)) {
	r.e.mu.Lock()
	f(&r.e.m)
	r.e.m.Updated = time.Now()
	snap := r.e.m
	r.e.mu.Unlock()
	if err := r.m.j.save(&snap); err != nil {
		r.log.WithError(err).Error("journal write failed")
	}
}

// setPhase validates, journals, logs and reports a transition.
func (r *runner) setPhase(ctx context.Context, p Phase, reason string) {
	cur := r.e.snapshot().Phase
	if err := checkTransition(cur, p); err != nil {
		r.log.WithError(err).Error("bug: refused transition")
		return
	}
	r.update(func(m *Migration) {
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
	})
	snap := r.e.snapshot()
	l := r.log.WithFields(logrus.Fields{"from": cur, "to": p})
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
	r.m.o.Hooks.Phase(context.WithoutCancel(ctx), &snap)
}

// step runs a named step once.
func (r *runner) step(name string, f func() error) error {
	if snap := r.e.snapshot(); snap.done(name) {
		return nil
	}
	if err := f(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.update(func(m *Migration) { m.Steps = append(m.Steps, name) })
	return nil
}

func (r *runner) queued(ctx context.Context) error {
	for {
		select {
		case r.m.slots <- struct{}{}:
			r.hasSlot = true
			r.setPhase(ctx, PhasePreparing, "")
			return nil
		case c := <-r.e.cmds:
			if c.kind == "abort" {
				r.update(func(m *Migration) { m.AbortRequested = true })
				r.setPhase(ctx, PhaseCancelled, "aborted while queued")
				c.reply <- nil
				return nil
			}
			c.reply <- fmt.Errorf("%s: %w: the migration is still queued", c.kind, errdefs.ErrFailedPrecondition)
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

func (r *runner) preparing(ctx context.Context) error {
	if !r.hasSlot {
		select { // a resumed migration takes a slot if one is free
		case r.m.slots <- struct{}{}:
			r.hasSlot = true
		default:
		}
	}
	done := make(chan error, 1)
	snap := r.e.snapshot()
	go func() { done <- r.m.o.Hooks.Prepare(ctx, &snap) }() // owner: preparing (waits below)
	var err error
wait:
	for {
		select {
		case err = <-done:
			break wait
		case c := <-r.e.cmds:
			if c.kind == "abort" {
				r.update(func(m *Migration) { m.AbortRequested = true })
				c.reply <- nil
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
		r.rollback(ctx, "aborted while preparing")
		r.setPhase(ctx, PhaseCancelled, "aborted while preparing")
	case err != nil:
		reason := "prepare destination: " + err.Error()
		r.rollback(ctx, reason)
		r.setPhase(ctx, PhaseFailed, reason)
	default:
		// Prepare may have learned the destination's migration address and
		// settled the disk copy mode.
		r.update(func(m *Migration) { m.Spec, m.Extra, m.CopyNote = snap.Spec, snap.Extra, snap.CopyNote })
		r.setPhase(ctx, PhaseRunning, "")
	}
	return nil
}

func (r *runner) rollback(ctx context.Context, reason string) {
	_ = r.step("rollback", func() error {
		snap := r.e.snapshot()
		r.m.o.Hooks.Rollback(context.WithoutCancel(ctx), &snap, reason)
		return nil
	})
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
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// startSpec is the request's spec with the start flags the permits decide.
func (r *runner) startSpec() virt.MigrateSpec {
	s := r.e.snapshot()
	spec := s.Spec
	spec.PostCopy = s.Policy.PostCopy
	spec.AutoConverge = s.Policy.AutoConverge
	spec.PersistDest = true
	spec.UndefineSource = false // the source's completed stats are read first, then it is undefined
	return spec
}
