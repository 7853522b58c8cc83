package migration

import (
	"context"
	"errors"
	"fmt"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/virt"
)

// running starts the libvirt job (or re-attaches to it), samples it, applies
// the policy's actions and the operator's commands, and settles the outcome
// once the job has ended.
func (r *runner) running(ctx context.Context) error {
	snap := r.e.snapshot()
	src, err := r.dialRetry(ctx, r.m.o.LocalURI)
	if err != nil {
		return err
	}
	defer func() { src.Close() }()
	policy := snap.Policy.WithDefaults()
	r.st = State{}
	if snap.Phase == PhasePostCopy {
		r.st.PostCopy = true
	}
	r.st.Paused = snap.PausedByUs
	r.st.Downtime = snap.Downtime

	var done chan error // the Perform call's result; nil when re-attached
	var mc Hypervisor
	if !snap.done("job-started") {
		if mc, err = r.dialRetry(ctx, r.m.o.LocalURI); err != nil {
			return err
		}
		// Journalled before the call: after a crash from here on the engine
		// re-attaches instead of starting a second job.
		r.update(func(m *Migration) { m.Steps = append(m.Steps, "job-started") })
		done = make(chan error, 1)
		spec := r.startSpec()
		go func() { done <- mc.Migrate(context.WithoutCancel(ctx), snap.Domain, spec) }() // owner: running (waits below)
		r.start = time.Now()
	} else {
		r.update(func(m *Migration) { m.Record.Attaches++ })
		r.start = time.Now()
		if js, err := src.JobStats(ctx, snap.Domain, false); err == nil && js.Elapsed > 0 {
			r.start = time.Now().Add(-js.Elapsed)
		}
		r.log.Info("re-attached to the running job")
	}
	defer func() {
		if done != nil { // closing the connection ends the wait, never the job
			mc.Close()
			<-done
		} else if mc != nil {
			mc.Close()
		}
	}()

	var migErr error
	t := time.NewTicker(r.m.o.PollInterval)
	defer t.Stop()
	lastProgress := time.Time{}
	var pcFailedAt time.Time // when the source was first seen with post-copy failed while the call was still out
	for ended := false; !ended; {
		select {
		case migErr = <-done:
			done = nil
			if errors.Is(migErr, errdefs.ErrUnavailable) {
				// Our connection died, not necessarily the job: watch it.
				r.log.WithError(migErr).Warn("lost the Perform call's connection; watching the job")
				migErr = nil
				continue
			}
			ended = true
		case <-t.C:
			if r.st.PostCopy && done != nil {
				// libvirt 9.0 can leave the Perform call hanging after post-copy
				// failed (QEMU 7.2, TCG): the job then shows stale statistics
				// for ever. Recover without the call rather than wait on it.
				if s := stateOf(ctx, src, snap.Domain); !s.postcopyFailed() {
					pcFailedAt = time.Time{}
				} else if pcFailedAt.IsZero() {
					pcFailedAt = time.Now()
				} else if time.Since(pcFailedAt) >= r.m.o.PostcopyHang {
					r.log.WithField("waited", r.m.o.PostcopyHang).Warn("post-copy failed and libvirt's migration call has not returned; recovering without it")
					mc.Close()
					<-done
					done = nil
					migErr = fmt.Errorf("post-copy failed; libvirt's migration call did not return within %s", r.m.o.PostcopyHang)
					ended = true
					continue
				}
			}
			js, err := src.JobStats(ctx, snap.Domain, false)
			switch {
			case errors.Is(err, errdefs.ErrNotFound):
				ended = true
				continue
			case err != nil:
				r.log.WithError(err).Warn("job stats failed; reconnecting")
				src.Close()
				if src, err = r.dialRetry(ctx, r.m.o.LocalURI); err != nil {
					return err
				}
				continue
			}
			if js.Type == virt.JobNone {
				if done == nil && !js.Busy { // re-attached (or lost the call): no job means it ended
					ended = true
				}
				continue
			}
			r.last = js
			r.apply(ctx, src, Decide(policy, &r.st, Sample{At: time.Since(r.start), Stats: js}))
			if time.Since(lastProgress) >= r.m.o.ProgressInterval {
				lastProgress = time.Now()
				s := r.e.snapshot()
				r.m.o.Hooks.Progress(ctx, &s, js)
			}
		case c := <-r.e.cmds:
			c.reply <- r.command(ctx, src, policy, c.kind)
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return r.settle(ctx, src, migErr)
}

// command applies an operator's abort or force-complete.
func (r *runner) command(ctx context.Context, src Hypervisor, p Policy, kind string) error {
	dom := r.e.snapshot().Domain
	switch kind {
	case "abort":
		if r.st.PostCopy {
			return fmt.Errorf("abort: %w: the migration is in post-copy; the guest already runs on the destination", errdefs.ErrFailedPrecondition)
		}
		r.update(func(m *Migration) { m.AbortRequested = true })
		r.record("abort", 0, "requested by the operator", nil)
		return src.Control(ctx, dom, virt.Control{Op: virt.OpAbort})
	case "force-complete":
		a := ForceComplete(p, &r.st, time.Since(r.start), "force-complete requested by the operator")
		if a.Kind == ActNone {
			return fmt.Errorf("force-complete: %w: already in post-copy or paused", errdefs.ErrFailedPrecondition)
		}
		return r.apply(ctx, src, a)
	}
	return fmt.Errorf("%s: %w: unknown command", kind, errdefs.ErrInvalidArgument)
}

// apply carries out one policy action on the job.
func (r *runner) apply(ctx context.Context, src Hypervisor, a Action) error {
	dom := r.e.snapshot().Domain
	var err error
	switch a.Kind {
	case ActNone:
		return nil
	case ActSetDowntime:
		if err = src.Control(ctx, dom, virt.Control{Op: virt.OpSetDowntime, Downtime: a.Downtime}); err == nil {
			r.update(func(m *Migration) { m.Downtime = a.Downtime })
		}
	case ActPostCopy:
		if err = src.Control(ctx, dom, virt.Control{Op: virt.OpStartPostCopy}); err == nil {
			r.setPhase(ctx, PhasePostCopy, "")
		} else {
			r.st.PostCopy = false // the policy may try again
		}
	case ActPause:
		if err = src.Control(ctx, dom, virt.Control{Op: virt.OpSuspend}); err == nil {
			r.update(func(m *Migration) { m.PausedByUs = true })
		} else {
			r.st.Paused = false
		}
	case ActAbort:
		r.update(func(m *Migration) { m.Reason = a.Reason })
		err = src.Control(ctx, dom, virt.Control{Op: virt.OpAbort})
	case ActPostcopyPause:
		if err = src.Control(ctx, dom, virt.Control{Op: virt.OpPostcopyPause}); err != nil {
			r.st.pcBroken = false // e.g. the switch to post-copy has not happened yet; try again later
		}
	}
	r.record(a.Kind.String(), a.Downtime, a.Reason, err)
	return err
}

func (r *runner) record(action string, d time.Duration, reason string, err error) {
	if err != nil {
		reason += " (failed: " + err.Error() + ")"
	}
	at := time.Since(r.start)
	r.update(func(m *Migration) {
		m.Record.Actions = append(m.Record.Actions, ActionRecord{At: at, Action: action, Downtime: d, Reason: reason})
	})
	l := r.log.WithField("action", action).WithField("at", at.Round(100*time.Millisecond))
	if d > 0 {
		l = l.WithField("downtime", d)
	}
	if err != nil {
		l.WithError(err).Warn(reason)
		return
	}
	l.Info(reason)
}

// hostState is a domain's state on one host, or why it is unknown.
type hostState struct {
	st    virt.DomainState
	gone  bool  // no such domain
	err   error // unknown
	known bool
}

func (h hostState) running() bool {
	return h.known && !h.gone && (h.st.State == virt.StateRunning ||
		(h.st.State == virt.StatePaused && h.st.Reason != virt.ReasonPausedPostcopyFailed))
}

func (h hostState) postcopyFailed() bool {
	return h.known && !h.gone && h.st.State == virt.StatePaused && h.st.Reason == virt.ReasonPausedPostcopyFailed
}

func (h hostState) String() string {
	switch {
	case !h.known:
		return fmt.Sprintf("unknown (%v)", h.err)
	case h.gone:
		return "no domain"
	}
	return fmt.Sprintf("%s (reason %d)", h.st.State, h.st.Reason)
}

func stateOf(ctx context.Context, h Hypervisor, dom string) hostState {
	var err error
	for i := 0; i < 3; i++ {
		var st virt.DomainState
		st, err = h.DomainState(ctx, dom)
		switch {
		case err == nil:
			return hostState{st: st, known: true}
		case errors.Is(err, errdefs.ErrNotFound):
			return hostState{gone: true, known: true}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return hostState{err: err}
}

func (r *runner) destState(ctx context.Context) hostState {
	snap := r.e.snapshot()
	if snap.DestCheckURI == "" {
		return hostState{err: errors.New("no way to reach the destination's libvirtd configured")}
	}
	d, err := r.m.o.Dial(ctx, snap.DestCheckURI)
	if err != nil {
		return hostState{err: err}
	}
	defer d.Close()
	return stateOf(ctx, d, snap.Domain)
}

// settle decides the outcome from both hosts' domain states (Nova's
// find_job_type rule, cross-checked with the destination) and finishes.
func (r *runner) settle(ctx context.Context, src Hypervisor, migErr error) error {
	snap := r.e.snapshot()
	s, d := stateOf(ctx, src, snap.Domain), r.destState(ctx)
	r.log.WithFields(map[string]any{"source": s.String(), "destination": d.String(), "perform_error": migErr}).Info("job ended")
	srcGone := s.gone || (s.known && s.st.State == virt.StateShutoff)
	switch {
	case s.postcopyFailed() || d.postcopyFailed():
		return r.recoverPostcopy(ctx, src)
	case srcGone && (d.running() || (!d.known && migErr == nil && snap.done("job-started"))):
		return r.succeed(ctx, src, d)
	case s.running() && !d.running():
		r.fail(ctx, src, s, migErr)
		return nil
	}
	r.setPhase(ctx, PhaseError, fmt.Sprintf("cannot tell where the guest runs: source %s, destination %s (libvirt: %v)", s, d, migErr))
	return nil
}

func (r *runner) succeed(ctx context.Context, src Hypervisor, d hostState) error {
	snap := r.e.snapshot()
	_ = r.step("read-stats", func() error {
		js, err := src.JobStats(ctx, snap.Domain, true)
		if err != nil {
			r.log.WithError(err).Warn("completed-job statistics unavailable")
		}
		if js.Type != virt.JobCompleted {
			js = r.last
		}
		r.fillRecord(js)
		return nil
	})
	if err := r.step("undefine-source", func() error {
		err := src.Control(ctx, snap.Domain, virt.Control{Op: virt.OpUndefine})
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		return err
	}); err != nil {
		r.log.WithError(err).Warn("the source domain's definition stays; undefine it by hand")
	}
	if snap.PausedByUs && d.known && d.st.State == virt.StatePaused {
		r.resumeOnDest(ctx)
	}
	err := r.step("finish", func() error {
		s := r.e.snapshot()
		return r.m.o.Hooks.Finish(ctx, &s)
	})
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		r.setPhase(ctx, PhaseError, "the guest runs on the destination, but finishing failed: "+err.Error())
		return nil
	}
	r.setPhase(ctx, PhaseCompleted, "")
	return nil
}

func (r *runner) resumeOnDest(ctx context.Context) {
	snap := r.e.snapshot()
	h, err := r.m.o.Dial(ctx, snap.DestCheckURI)
	if err == nil {
		err = h.Control(ctx, snap.Domain, virt.Control{Op: virt.OpResume})
		h.Close()
	}
	if err != nil {
		r.log.WithError(err).Error("the guest stays paused on the destination")
	}
}

func (r *runner) fail(ctx context.Context, src Hypervisor, s hostState, migErr error) {
	snap := r.e.snapshot()
	if s.st.State == virt.StatePaused {
		_ = r.step("resume-guest", func() error {
			err := src.Control(ctx, snap.Domain, virt.Control{Op: virt.OpResume})
			if err != nil {
				r.log.WithError(err).Error("could not resume the guest on the source")
			}
			return err
		})
	}
	r.fillRecord(r.last)
	reason := snap.Reason
	phase := PhaseFailed
	if snap.AbortRequested {
		phase, reason = PhaseCancelled, "aborted by the operator"
	}
	if reason == "" && migErr != nil {
		reason = migErr.Error()
	}
	if reason == "" {
		reason = "the job ended and the guest still runs on the source"
	}
	r.rollback(ctx, reason)
	r.setPhase(ctx, phase, reason)
}

// recoverPostcopy resumes a post-copy migration whose link failed
// (PAUSED_POSTCOPY_FAILED) instead of giving the guest up, retrying while
// the link is down.
func (r *runner) recoverPostcopy(ctx context.Context, src Hypervisor) error {
	snap := r.e.snapshot()
	if snap.Phase == PhaseRunning {
		r.setPhase(ctx, PhasePostCopy, "")
	}
	spec := r.startSpec()
	spec.PostcopyResume = true
	// The disks were mirrored before the switch to post-copy; a resume
	// carries RAM only.
	spec.Copy, spec.Disks, spec.DisksURI = virt.CopyNone, nil, ""
	deadline := time.Now().Add(r.m.o.PostcopyRecovery)
	for attempt := 1; time.Now().Before(deadline); attempt++ {
		mc, err := r.m.o.Dial(ctx, r.m.o.LocalURI)
		if err == nil {
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = mc.Migrate(actx, snap.Domain, spec)
			cancel()
			mc.Close()
			if errors.Is(err, context.DeadlineExceeded) {
				// A resume that hangs holds the job; break it so the next attempt can run.
				_ = src.Control(ctx, snap.Domain, virt.Control{Op: virt.OpPostcopyPause})
			}
		}
		r.record("post-copy-resume", 0, fmt.Sprintf("attempt %d", attempt), err)
		s, d := stateOf(ctx, src, snap.Domain), r.destState(ctx)
		if (s.gone || s.st.State == virt.StateShutoff) && d.running() {
			return r.succeed(ctx, src, d)
		}
		if d.known && (d.gone || d.st.State == virt.StateShutoff || d.st.State == virt.StateCrashed) {
			r.setPhase(ctx, PhaseError, fmt.Sprintf("post-copy failed and the destination's guest is gone (%s); the source holds a stale, paused copy — do not resume it without checking the guest", d))
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(2 * time.Second):
		}
	}
	r.setPhase(ctx, PhaseError, fmt.Sprintf("post-copy failed and could not be resumed within %s; the guest's memory is split between the hosts", r.m.o.PostcopyRecovery))
	return nil
}

// fillRecord puts a job's statistics and the policy's estimates into the record.
func (r *runner) fillRecord(js virt.JobStats) {
	r.update(func(m *Migration) {
		rec := &m.Record
		rec.Downtime, rec.MemBytes, rec.DiskBytes, rec.Iterations = js.Downtime, js.MemProcessed, js.DiskProcessed, js.MemIteration
		if js.Elapsed > 0 {
			rec.Total = js.Elapsed
		}
		rec.Bandwidth, rec.Floor = r.st.Bps, r.st.Floor
		rec.FirstPass = r.st.FirstPass
		if rec.FirstPass == 0 { // done within the first pass
			rec.FirstPass = js.MemProcessed
		}
		rec.Stalls, rec.LongestStall = max(rec.Stalls, r.st.Stalls), max(rec.LongestStall, r.st.LongestStall)
	})
}
