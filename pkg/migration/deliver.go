package migration

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/virt"
)

// Delivery: every phase change journals the reports it owes (Records.Reports)
// before anything else happens, and one loop per migration delivers them in
// order beside the runner. The runner never waits on the caller's records: a
// slow conductor or a broker outage delays the records, never a sample, an
// abort or a post-copy recovery. A report that fails for an outage is
// retried with backoff until it is delivered (Kick retries at once, after a
// reconnect); one the records refuse outright is given up after a few
// tries, so that it cannot hold back the ones after it. A restarted engine
// re-sends whatever its journal still owes.

// progress is the latest job sample the loop has not saved yet.
type progress struct{ js virt.JobStats }

const (
	retryFirst = time.Second
	retryMax   = 30 * time.Second
)

// deliverLoop starts the entry's delivery loop unless one runs (or wakes
// it). Before Run it does nothing: Run starts the loops of what is owed.
func (m *Manager) deliverLoop(e *entry) {
	e.mu.Lock()
	if e.delivering || m.runCtx == nil {
		e.mu.Unlock()
		e.wake()
		return
	}
	e.delivering = true
	e.mu.Unlock()
	ctx := m.runCtx
	m.wg.Add(1)
	go func() { // owner: Manager (Run waits)
		defer m.wg.Done()
		m.deliverAll(ctx, e)
	}()
}

// deliverAll runs until the migration has ended and owes nothing, or ctx ends.
func (m *Manager) deliverAll(ctx context.Context, e *entry) {
	log := m.o.Log.WithFields(e.snapshot().LogFields())
	wait := retryFirst
	for {
		r, ok, js, done := e.next()
		switch {
		case done:
			return
		case ok:
			err := m.deliverOne(ctx, e, r, log)
			if err == nil {
				wait = retryFirst
				continue
			}
			if ctx.Err() != nil {
				return
			}
			if !sleep(ctx, e.poke, wait) {
				return
			}
			wait = min(2*wait, retryMax)
			continue
		case js != nil:
			snap := e.snapshot()
			err := safely(func() error { return m.o.Records.Progress(ctx, snap, js.js) })
			switch {
			case errors.Is(err, errPanic):
				log.WithError(err).Error("bug: saving the progress panicked; the next sample is tried")
			case err != nil:
				log.WithError(err).Debug("progress not saved; the next sample replaces it")
			}
			continue
		}
		select { // nothing owed now: wait for the runner
		case <-e.poke:
		case <-ctx.Done():
			return
		}
	}
}

// next returns the first report not yet delivered, else the latest sample
// not yet saved, or done once the migration ended and owes nothing.
func (e *entry) next() (r Report, ok bool, js *progress, done bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.m.Reports {
		if !r.Delivered {
			return r, true, nil, false
		}
	}
	if e.m.Phase.Terminal() {
		e.progress = nil
		if !e.running {
			e.delivering = false
			return Report{}, false, nil, true
		}
	}
	js, e.progress = e.progress, nil
	return Report{}, false, js, false
}

// deliverOne hands one report to the caller and journals its outcome.
func (m *Manager) deliverOne(ctx context.Context, e *entry, r Report, log *logrus.Entry) error {
	snap := e.snapshot()
	err := safely(func() error { return m.o.Records.Deliver(ctx, snap, r) })
	l := log.WithFields(logrus.Fields{"report": r.Name, "phase": r.Phase, "seq": r.Seq})
	e.mu.Lock()
	i := r.Seq - 1
	rep := &e.m.Reports[i]
	rep.Attempts++
	gaveUp := false
	switch {
	case err == nil:
		rep.Delivered, rep.Outcome, rep.LastError, rep.At = true, "delivered", "", time.Now()
	case errors.Is(err, ErrSkipped):
		rep.Delivered, rep.Outcome, rep.LastError, rep.At = true, err.Error(), "", time.Now()
	case !retryable(err) && rep.Attempts >= maxRefusals && ctx.Err() == nil:
		// The records keep refusing it: give it up, so that what follows
		// (the status above all) is not held back for ever.
		gaveUp = true
		rep.Delivered, rep.At = true, time.Now()
		rep.Outcome = fmt.Sprintf("given up after %d refusals: %v", rep.Attempts, err)
		rep.LastError = err.Error()
	default:
		rep.LastError = err.Error()
	}
	attempts := rep.Attempts
	e.m.Updated = time.Now()
	e.mu.Unlock()
	if jerr := m.persist(e); jerr != nil {
		l.WithError(jerr).Error("journal write failed")
	}
	switch {
	case err == nil:
		if attempts > 1 {
			l.WithField("attempts", attempts).Info("report delivered")
		} else {
			l.Debug("report delivered")
		}
		return nil
	case errors.Is(err, ErrSkipped):
		l.WithError(err).Warn("report not sent")
		return nil
	case gaveUp:
		l.WithError(err).WithField("attempts", attempts).Error("report refused every time; given up, the next ones go on (see ferry journal show)")
		return nil
	}
	if ctx.Err() == nil {
		l.WithError(err).WithField("attempts", attempts).Warn("report not delivered; retrying")
	}
	return err
}

// maxRefusals is how often a report the records refuse (not an outage: an
// answer) is sent before it is given up.
const maxRefusals = 5

// retryable tells an outage (the broker, the conductor, Placement not
// answering), which is retried for as long as it lasts, from a refusal.
func retryable(err error) bool {
	return errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, errdefs.ErrTimeout) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// errPanic marks the error safely makes of a panic.
var errPanic = errors.New("panic")

// safely runs f, turning a panic into an error: a bug in the caller's
// bookkeeping must not take the engine down.
func safely(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", errPanic, p)
		}
	}()
	return f()
}

// sleep waits d, or until poked; it reports false when ctx ended.
func sleep(ctx context.Context, poke <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-poke:
	case <-ctx.Done():
		return false
	}
	return true
}
