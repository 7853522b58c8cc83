package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"opendev.org/x/ferry/pkg/openstack"
)

// drainer runs a drain's queue. Its loop is the only one that decides and
// the only one that touches the items: it admits the next server when the
// plan allows, gives each started migration a worker that talks to Nova,
// and keeps one display from what the workers tell it. It never waits on
// the network itself.
type drainer struct {
	a      *app
	host   string
	limits drainLimits
	queue  []*drainItem
	next   int    // queue[next] starts next
	wait   string // why queue[next] waits, when the link (not --max-parallel) is the reason
	disp   *display
}

// drainEvent is what a worker tells the loop: a look at its migration, a
// note, or (done, last) how it ended.
type drainEvent struct {
	i        int
	v        *migrationView
	note     string
	done     bool
	err      error // with done: why the worker stopped before the migration ended
	accepted bool  // with done: Nova took the live-migrate request
}

// run drives the queue to its end, or until ctx ends: then it starts
// nothing more, lets the workers stop waiting (their migrations go on)
// and says which still run. It returns whether it was interrupted.
func (d *drainer) run(ctx context.Context) bool {
	d.disp = newDisplay(d.a.errw, d.a.isTerminal())
	defer d.disp.close()
	events := make(chan drainEvent, 16)
	active := 0 // workers whose done event has not come yet
	stop := ctx.Done()
	for {
		if stop != nil && ctx.Err() == nil {
			active += d.admit(ctx, events)
		}
		d.disp.show(d.line())
		if active == 0 {
			return ctx.Err() != nil
		}
		select {
		case ev := <-events:
			if d.apply(ev) {
				active--
			}
		case <-stop:
			stop = nil
			d.disp.note(d.interruptNote())
		}
	}
}

// admit starts every server the plan lets start now, in queue order, and
// returns how many workers it started. It starts one server at a time:
// the next only once Nova has recorded the migration of the one before
// (so they start in the plan's order, and the scheduler places one at a
// time).
func (d *drainer) admit(ctx context.Context, events chan<- drainEvent) int {
	started := 0
	for d.next < len(d.queue) {
		it := d.queue[d.next]
		if it.resume == nil { // one already running is not the plan's to hold back
			if d.starting() {
				return started
			}
			running := d.running()
			if ok, why := admit(d.limits, running, it.cand); !ok {
				d.wait = ""
				if len(running) < d.limits.MaxParallel {
					d.wait = why
				}
				return started
			}
		}
		d.wait = ""
		it.state, it.started = "starting", time.Now()
		if it.resume != nil {
			it.state = "running"
			d.look(it, viewOf(*it.resume))
		}
		go d.a.drainWorker(ctx, d.next, it.cand.ID, it.resume, events) // owner: run, which waits for its done event
		d.next++
		started++
	}
	return started
}

// running is what shares the link now: the migrations running and the
// one starting.
func (d *drainer) running() []drainCandidate {
	var out []drainCandidate
	for _, it := range d.queue {
		if it.state == "running" || it.state == "starting" {
			out = append(out, it.cand)
		}
	}
	return out
}

func (d *drainer) starting() bool {
	for _, it := range d.queue {
		if it.state == "starting" {
			return true
		}
	}
	return false
}

// drainWorker starts one server's migration (unless it runs already) and
// polls it to its end, telling the loop each look; its last event is done.
func (a *app) drainWorker(ctx context.Context, i int, serverID string, resume *openstack.Migration, events chan<- drainEvent) {
	var m openstack.Migration
	if resume != nil {
		m = *resume
	} else {
		var accepted bool
		var err error
		if m, accepted, err = a.startLive(ctx, serverID, "", "auto"); err != nil {
			events <- drainEvent{i: i, done: true, err: err, accepted: accepted}
			return
		}
		events <- drainEvent{i: i, note: fmt.Sprintf("live migration %d (%s) accepted by Nova", m.ID, m.UUID)}
	}
	first := viewOf(m)
	events <- drainEvent{i: i, v: &first}
	end, err := a.poll(ctx, serverID, m.ID,
		func(v migrationView) { events <- drainEvent{i: i, v: &v} },
		func(s string) { events <- drainEvent{i: i, note: s} })
	last := drainEvent{i: i, done: true, err: err, accepted: true}
	if end.ID != 0 {
		last.v = &end
	}
	events <- last
}

// apply takes in one event; it reports whether it was a worker's last.
func (d *drainer) apply(ev drainEvent) bool {
	it := d.queue[ev.i]
	if ev.v != nil {
		d.look(it, *ev.v)
		if it.state == "starting" {
			it.state = "running" // Nova recorded its migration
		}
	}
	if ev.note != "" {
		d.disp.note(it.cand.Name + ": " + ev.note)
	}
	if !ev.done {
		return false
	}
	it.state = "ended"
	d.settle(it, ev)
	return true
}

func (d *drainer) look(it *drainItem, v migrationView) {
	it.view = v
	it.rep.MigrationID, it.rep.MigrationUUID, it.rep.Status, it.rep.Dest = v.ID, v.UUID, v.Status, v.Dest
}

// settle writes an ended worker's outcome into its report.
func (d *drainer) settle(it *drainItem, ev drainEvent) {
	r, v := &it.rep, it.view
	stopped := errors.Is(ev.err, context.Canceled) || errors.Is(ev.err, context.DeadlineExceeded)
	r.Seconds = tenths(time.Since(it.started))
	switch {
	case ev.err == nil && v.Status == "completed":
		r.Outcome = drainMigrated
		if !v.CreatedAt.IsZero() && v.UpdatedAt.After(v.CreatedAt) {
			r.Seconds = tenths(v.UpdatedAt.Sub(v.CreatedAt)) // Nova's clock, both ends
		}
		d.disp.note(fmt.Sprintf("%s: migration %d completed, now on %s", it.cand.Name, v.ID, orDefault(v.Dest, "?")))
	case ev.err == nil:
		r.Outcome, r.Reason = drainFailed, failReason(v)
		d.disp.note(fmt.Sprintf("%s: migration %d ended %s: %s", it.cand.Name, v.ID, v.Status, r.Reason))
	case stopped && v.ID != 0:
		r.Outcome = drainRunning
	case stopped && ev.accepted:
		r.Outcome, r.Reason = drainRunning, "Nova accepted its live migration; the drain stopped before Nova's record of it showed"
	case stopped:
		r.Outcome, r.Seconds = drainNotStarted, 0
	default:
		r.Outcome, r.Reason = drainFailed, ev.err.Error()
		d.disp.note(fmt.Sprintf("%s: %v", it.cand.Name, ev.err))
	}
}

func tenths(d time.Duration) float64 { return math.Round(d.Seconds()*10) / 10 }

// failReason is why a migration ended other than completed: ferry's
// reason, else where to look.
func failReason(v migrationView) string {
	if v.Ferry != nil && v.Ferry.Reason != "" {
		return v.Ferry.Reason
	}
	return fmt.Sprintf("Nova says %s (see `openstack server event list %s`)", v.Status, v.Server)
}

// line is the drain at a glance: the counts, each running migration's
// progress, and why the next one waits when the link is the reason.
func (d *drainer) line() string {
	var running, done, failedN, waiting int
	var progress []string
	for _, it := range d.queue {
		switch {
		case it.state == "running" || it.state == "starting":
			running++
			progress = append(progress, drainProgress(it.cand.Name, it.view))
		case it.state == "waiting" || it.rep.Outcome == drainNotStarted:
			waiting++
		case it.rep.Outcome == drainRunning: // the drain stopped waiting; it runs on
			running++
			progress = append(progress, drainProgress(it.cand.Name, it.view))
		case it.rep.Outcome == drainMigrated:
			done++
		default:
			failedN++
		}
	}
	parts := append([]string{fmt.Sprintf("drain %s: %d running, %d done, %d failed, %d waiting", d.host, running, done, failedN, waiting)}, progress...)
	if d.wait != "" && d.next < len(d.queue) {
		parts = append(parts, fmt.Sprintf("%s waits: %s", d.queue[d.next].cand.Name, d.wait))
	}
	return strings.Join(parts, " · ")
}

// drainProgress is one running migration in the drain's line.
func drainProgress(name string, v migrationView) string {
	s := name + " " + orDefault(v.Status, "starting")
	f := figuresOf(v)
	if f.memTotal > 0 {
		s += " memory " + moved(f.memDone, f.memTotal, f.memLeft)
	}
	if f.bps > 0 {
		s += fmt.Sprintf(" %.1f MiB/s", float64(f.bps)/(1<<20))
	}
	return s
}

// interruptNote says what an interrupt leaves running.
func (d *drainer) interruptNote() string {
	var still []string
	for _, it := range d.queue {
		if it.state != "running" && it.state != "starting" {
			continue
		}
		if it.view.ID != 0 {
			still = append(still, fmt.Sprintf("%s (migration %d)", it.cand.Name, it.view.ID))
		} else {
			still = append(still, it.cand.Name+" (starting)")
		}
	}
	if len(still) == 0 {
		return "interrupted: starting no more migrations"
	}
	return "interrupted: starting no more migrations; still running, not aborted: " + strings.Join(still, ", ")
}
