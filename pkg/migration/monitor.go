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
	r.st = ResumeState(snap.Phase == PhasePostCopy, snap.PausedByUs, snap.Downtime)
	call, err := r.begin(ctx, snap, src)
	if err != nil || call == nil {
		return err // detached, or the job was refused before it started
	}
	defer call.stop()
	t := time.NewTicker(r.m.o.PollInterval)
	defer t.Stop()
	var lastProgress, pcFailedAt time.Time
	for {
		select {
		case err := <-call.done:
			call.done = nil
			if errors.Is(err, errdefs.ErrUnavailable) {
				// Our connection died, not necessarily the job: watch it.
				r.log.WithError(err).Warn("lost the Perform call's connection; watching the job")
				continue
			}
			return r.settle(ctx, src, err)
		case <-t.C:
			if r.st.PostCopy && call.done != nil && r.postcopyHung(ctx, src, &pcFailedAt) {
				call.stop()
				return r.settle(ctx, src, fmt.Errorf("post-copy failed; libvirt's migration call did not return within %s", r.m.o.PostcopyHang))
			}
			js, ended, err := r.sample(ctx, &src, call.done == nil)
			if err == nil && !ended {
				r.unwedge(ctx)
			}
			switch {
			case err != nil:
				return err
			case ended:
				return r.settle(ctx, src, nil)
			case js == nil:
				continue
			}
			r.last = *js
			r.e.mu.Lock()
			r.e.latest = &sample{at: time.Now(), js: *js}
			r.e.mu.Unlock()
			at := time.Since(r.start)
			r.apply(ctx, src, Decide(policy, &r.st, Sample{At: at, Stats: *js}))
			r.series.add(Point{At: at, MemRemaining: js.MemRemaining, DiskRemaining: js.DiskRemaining, Bps: js.MemBps + js.DiskBps,
				MaxDowntime: r.st.Downtime})
			if time.Since(lastProgress) >= r.m.o.ProgressInterval {
				lastProgress = time.Now()
				r.e.mu.Lock()
				r.e.progress = &progress{js: *js}
				r.e.mu.Unlock()
				r.e.wake()
			}
		case c := <-r.e.cmds:
			answer(c, func() error { return r.command(ctx, src, policy, c.kind) })
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// perform is the Perform call of a job this engine started: its result,
// and the connection it runs on. Closing the connection ends the wait,
// never the job.
type perform struct {
	done chan error // nil once the call returned, or after a re-attach
	conn Hypervisor
}

func (p *perform) stop() {
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
	if p.done != nil {
		<-p.done
		p.done = nil
	}
}

// begin starts the job, or re-attaches to the one the journal says was
// started. It returns nil and no error when the job could not be started;
// the migration has then failed and says why.
func (r *runner) begin(ctx context.Context, snap Migration, src Hypervisor) (*perform, error) {
	dom := snap.InstanceUUID
	if snap.done("job-started") {
		_ = r.update(func(m *Migration) { m.Record.Attaches++ })
		r.start = time.Now()
		if js, err := src.JobStats(ctx, dom, false); err == nil && js.Elapsed > 0 {
			r.start = time.Now().Add(-js.Elapsed)
		}
		r.log.Info("re-attached to the running job")
		return &perform{}, nil
	}
	spec, err := JobSpec(snap)
	if err != nil {
		r.setPhase(ctx, PhaseFailed, "the job cannot be started: "+err.Error())
		return nil, nil
	}
	mc, err := r.dialRetry(ctx, r.m.o.LocalURI)
	if err != nil {
		return nil, err
	}
	// Journalled before the call: after a crash from here on the engine
	// re-attaches instead of starting a second job. Without that record no
	// job may start.
	if err := r.journalFirst(func(m *Migration) { m.Steps = append(m.Steps, "job-started") }); err != nil {
		mc.Close()
		r.setPhase(ctx, PhaseFailed, "the journal cannot record the job's start, so it was not started: "+err.Error())
		return nil, nil
	}
	p := &perform{done: make(chan error, 1), conn: mc}
	go func() { p.done <- mc.Migrate(context.WithoutCancel(ctx), dom, spec) }() // owner: running (stop waits)
	r.start = time.Now()
	return p, nil
}

// postcopyHung tells, once post-copy has failed on the source, whether the
// Perform call has outlived PostcopyHang: libvirt 9.0 can leave it hanging
// (QEMU 7.2, TCG), the job then shows stale statistics for ever, and the
// engine recovers without the call rather than wait on it.
func (r *runner) postcopyHung(ctx context.Context, src Hypervisor, since *time.Time) bool {
	switch s := stateOf(ctx, src, r.e.snapshot().InstanceUUID); {
	case !s.postcopyFailed():
		*since = time.Time{}
	case since.IsZero():
		*since = time.Now()
	case time.Since(*since) >= r.m.o.PostcopyHang:
		r.log.WithField("waited", r.m.o.PostcopyHang).Warn("post-copy failed and libvirt's migration call has not returned; recovering without it")
		return true
	}
	return false
}

// sample reads the job's statistics: nil when there is nothing to decide
// on, ended when the job is gone. A failing connection is replaced.
func (r *runner) sample(ctx context.Context, src *Hypervisor, detached bool) (*virt.JobStats, bool, error) {
	js, err := (*src).JobStats(ctx, r.e.snapshot().InstanceUUID, false)
	// A sample that shows no job moving (an error, no job, or one that has
	// failed or ended while libvirt's migration call has not returned)
	// starts the wedge clock.
	if (err == nil && (js.Type == virt.JobBounded || js.Type == virt.JobUnbounded)) || errors.Is(err, errdefs.ErrNotFound) {
		r.unanswered = time.Time{}
	} else if r.unanswered.IsZero() {
		r.unanswered = time.Now()
	}
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return nil, true, nil
	case err != nil:
		r.log.WithError(err).Warn("job stats failed; reconnecting")
		(*src).Close()
		h, err := r.dialRetry(ctx, r.m.o.LocalURI)
		if err != nil {
			return nil, false, err
		}
		*src = h
		return nil, false, nil
	case js.Type == virt.JobNone:
		// Re-attached (or the call's connection was lost): no job means it ended.
		return nil, detached && !js.Busy, nil
	}
	return &js, false, nil
}

// Wedged is the decision to close a job's migration streams: the source's
// libvirtd has shown no job moving for wedgeAfter (its statistics fail, or
// show no job, or a failed one, while its migration call has not
// returned), the job is in pre-copy (closing a post-copy stream would split
// the guest's memory), and the streams were not closed before.
func Wedged(unanswered, now time.Time, wedgeAfter time.Duration, postCopy, cut bool) bool {
	return !unanswered.IsZero() && now.Sub(unanswered) >= wedgeAfter && !postCopy && !cut
}

// unwedge closes the migration streams of a job whose source libvirtd is
// wedged (Options.CutStreams), once.
func (r *runner) unwedge(ctx context.Context) {
	if r.m.o.CutStreams == nil || !Wedged(r.unanswered, time.Now(), r.m.o.WedgeAfter, r.st.PostCopy, r.cut) {
		return
	}
	r.cut = true
	snap := r.e.snapshot()
	addr := jobDest(snap).MigrationAddr()
	n, err := r.m.o.CutStreams(ctx, snap.InstanceUUID, addr)
	r.record("cut-streams", 0, fmt.Sprintf("the source's libvirtd has shown no job moving for %s during pre-copy (it waits on streams to %s, "+
		"as when the destination is lost); closed %d connections to it, which fails the job with the guest on this host",
		time.Since(r.unanswered).Round(time.Second), addr, n), err)
}

// answer replies to an operator's command with what f returns. When f
// panics the command is answered with the panic, then the panic goes on to
// guarded, which ends the migration: the caller never waits for a reply
// that cannot come.
func answer(c command, f func() error) {
	defer func() {
		if p := recover(); p != nil {
			c.reply <- fmt.Errorf("%s: %w: %v", c.kind, errPanic, p)
			panic(p)
		}
	}()
	c.reply <- f()
}

// command applies an operator's abort or force-complete.
func (r *runner) command(ctx context.Context, src Hypervisor, p Policy, kind string) error {
	dom := r.e.snapshot().InstanceUUID
	switch kind {
	case "abort":
		if r.st.PostCopy {
			return fmt.Errorf("abort: %w: the migration is in post-copy; the guest already runs on the destination", errdefs.ErrFailedPrecondition)
		}
		_ = r.update(func(m *Migration) { m.AbortRequested = true })
		r.record("abort", 0, "requested by the operator", nil)
		err := src.Control(ctx, dom, virt.Control{Op: virt.OpAbort})
		if err == nil {
			r.commanded(kind)
		}
		return err
	case "force-complete":
		a := ForceComplete(p, &r.st, time.Since(r.start), "force-complete requested by the operator")
		if a.Kind == ActNone {
			return fmt.Errorf("force-complete: %w: already in post-copy or paused", errdefs.ErrFailedPrecondition)
		}
		err := r.apply(ctx, src, a)
		if err == nil {
			r.commanded(kind)
		}
		return err
	}
	return fmt.Errorf("%s: %w: unknown command", kind, errdefs.ErrInvalidArgument)
}

// apply carries out one policy action on the job.
func (r *runner) apply(ctx context.Context, src Hypervisor, a Action) error {
	dom := r.e.snapshot().InstanceUUID
	var err error
	switch a.Kind {
	case ActNone:
		return nil
	case ActSetDowntime:
		if err = src.Control(ctx, dom, virt.Control{Op: virt.OpSetDowntime, Downtime: a.Downtime}); err == nil {
			_ = r.update(func(m *Migration) { m.Downtime = a.Downtime })
		}
	case ActPostCopy:
		if err = src.Control(ctx, dom, virt.Control{Op: virt.OpStartPostCopy}); err == nil {
			r.setPhase(ctx, PhasePostCopy, "")
		}
	case ActPause:
		if err = src.Control(ctx, dom, virt.Control{Op: virt.OpSuspend}); err == nil {
			_ = r.update(func(m *Migration) { m.PausedByUs = true })
		}
	case ActAbort:
		_ = r.update(func(m *Migration) { m.Reason = a.Reason })
		err = src.Control(ctx, dom, virt.Control{Op: virt.OpAbort})
	case ActPostcopyPause:
		err = src.Control(ctx, dom, virt.Control{Op: virt.OpPostcopyPause})
	}
	if err != nil {
		r.st.Failed(a) // the policy may choose the lever again
	}
	r.record(a.Kind.String(), a.Downtime, a.Reason, err)
	return err
}

func (r *runner) record(action string, d time.Duration, reason string, err error) {
	if err != nil {
		reason += " (failed: " + err.Error() + ")"
	}
	at := time.Since(r.start)
	ar := ActionRecord{At: at, Action: action, Downtime: d, Reason: reason}
	_ = r.update(func(m *Migration) { m.Record.Actions = append(m.Record.Actions, ar) })
	r.m.o.Observer.Action(r.e.snapshot(), ar, err)
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
	return stateOf(ctx, d, snap.InstanceUUID)
}

// settle decides the outcome from both hosts' domain states (Nova's
// find_job_type rule, cross-checked with the destination) and finishes.
func (r *runner) settle(ctx context.Context, src Hypervisor, migErr error) error {
	snap := r.e.snapshot()
	s, d := stateOf(ctx, src, snap.InstanceUUID), r.destState(ctx)
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
	dom := snap.InstanceUUID
	_ = r.step("read-stats", func() error {
		js, err := src.JobStats(ctx, dom, true)
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
		err := src.Control(ctx, dom, virt.Control{Op: virt.OpUndefine})
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
	// The guest runs on the destination: what is left (the destination's
	// own records, the source's files, the status, Placement) is reported.
	r.setPhase(ctx, PhaseCompleted, "")
	return nil
}

func (r *runner) resumeOnDest(ctx context.Context) {
	snap := r.e.snapshot()
	h, err := r.m.o.Dial(ctx, snap.DestCheckURI)
	if err == nil {
		err = h.Control(ctx, snap.InstanceUUID, virt.Control{Op: virt.OpResume})
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
			err := src.Control(ctx, snap.InstanceUUID, virt.Control{Op: virt.OpResume})
			if err != nil {
				r.log.WithError(err).Error("could not resume the guest on the source")
			}
			return err
		})
	}
	r.fillRecord(r.last)
	// A job that ended without ferry asking (no operator abort, no abort
	// of the policy's, which sets the reason): the records may say who.
	if !snap.AbortRequested && snap.Reason == "" && migErr != nil {
		if e, ok := r.m.o.Records.(Ender); ok {
			if phase, reason, ended := e.EndedElsewhere(ctx, snap, migErr); ended {
				_ = r.update(func(m *Migration) { m.External = true })
				r.setPhase(ctx, phase, reason)
				return
			}
		}
	}
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
	spec, err := resumeSpec(snap)
	if err != nil {
		r.setPhase(ctx, PhaseError, "post-copy failed and cannot be resumed: "+err.Error()+"; the guest's memory is split between the hosts")
		return nil
	}
	deadline := time.Now().Add(r.m.o.PostcopyRecovery)
	for attempt := 1; time.Now().Before(deadline); attempt++ {
		mc, err := r.m.o.Dial(ctx, r.m.o.LocalURI)
		if err == nil {
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = mc.Migrate(actx, snap.InstanceUUID, spec)
			cancel()
			mc.Close()
			if errors.Is(err, context.DeadlineExceeded) {
				// A resume that hangs holds the job; break it so the next attempt can run.
				_ = src.Control(ctx, snap.InstanceUUID, virt.Control{Op: virt.OpPostcopyPause})
			}
		}
		r.record("post-copy-resume", 0, fmt.Sprintf("attempt %d", attempt), err)
		s, d := stateOf(ctx, src, snap.InstanceUUID), r.destState(ctx)
		if (s.gone || s.st.State == virt.StateShutoff) && d.running() {
			return r.succeed(ctx, src, d)
		}
		if d.known && (d.gone || d.st.State == virt.StateShutoff || d.st.State == virt.StateCrashed) {
			r.setPhase(ctx, PhaseError, fmt.Sprintf("post-copy failed and the destination's guest is gone (%s); the source holds a stale, paused copy — do not resume it without checking the guest", d))
			return nil
		}
		if !sleep(ctx, nil, 2*time.Second) {
			return context.Cause(ctx)
		}
	}
	r.setPhase(ctx, PhaseError, fmt.Sprintf("post-copy failed and could not be resumed within %s; the guest's memory is split between the hosts", r.m.o.PostcopyRecovery))
	return nil
}

// fillRecord puts a job's statistics and the policy's estimates into the
// record. A job can end before the monitor saw a pass (an idle guest on a
// fast link); its completed-job statistics still tell B (libvirt's bandwidth
// of the job) and F, which is then what the stop-and-copy sent: B × downtime.
func (r *runner) fillRecord(js virt.JobStats) {
	_ = r.update(func(m *Migration) {
		rec := &m.Record
		rec.Downtime, rec.MemBytes, rec.DiskBytes, rec.Iterations = js.Downtime, js.MemProcessed, js.DiskProcessed, js.MemIteration
		rec.SetupTime = js.SetupTime
		if js.Elapsed > 0 {
			rec.Total = js.Elapsed
		}
		rec.Bandwidth, rec.Floor = r.st.Bps, r.st.Floor
		if rec.Bandwidth <= 0 {
			rec.Bandwidth = float64(js.MemBps)
		}
		if rec.Bandwidth <= 0 && js.Elapsed > js.Downtime && js.MemProcessed > 0 {
			rec.Bandwidth = float64(js.MemProcessed) / (js.Elapsed - js.Downtime).Seconds()
		}
		if rec.Floor == 0 {
			rec.Floor = uint64(rec.Bandwidth * js.Downtime.Seconds())
		}
		rec.FirstPass = r.st.FirstPass
		if rec.FirstPass == 0 { // done within the first pass
			rec.FirstPass = js.MemProcessed
		}
		rec.Stalls, rec.LongestStall = max(rec.Stalls, r.st.Stalls), max(rec.LongestStall, r.st.LongestStall)
		if pts := r.series.points(); len(pts) > 0 {
			rec.Series = pts
		}
	})
}
