// Package virttest is a scripted stand-in for libvirt hosts, for unit tests
// of the migration engine. A World holds hosts by URI; a Conn to a host is a
// handle that implements the engine's Hypervisor. Each migration job runs
// the package's QEMU model (Model, the same one the policy's simulator
// tests drive): RAM moves at Job.BandwidthMiBps while the guest dirties
// Job.WSMiB at Job.DirtyMiBps, and the job switches over once the dirty set
// fits bandwidth × max downtime. Closing the connection that started a job
// does not stop it (libvirt behaves the same for peer-to-peer jobs).
package virttest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/virt"
)

// Job shapes every migration the world runs. Zero values: 256 MiB RAM, idle,
// 100 MiB/s.
type Job struct {
	RAMMiB, WSMiB  float64
	DirtyMiBps     float64
	BandwidthMiBps float64
	// LinkDown, when it returns true, stops bytes from moving.
	LinkDown func() bool
	// FailPerform, when set, makes Perform fail at once with this error.
	FailPerform error
	// HangOnPostcopyFailure: when post-copy fails, Perform does not return
	// and the job keeps reporting its last statistics, while both domains
	// show the failure; a resume is refused because the hung call holds the
	// job (libvirt 9.0 with QEMU 7.2 under TCG, seen in the lab).
	HangOnPostcopyFailure bool
	// WedgeAfter, when not 0, wedges the source's libvirtd once the job has
	// run that long, as a destination lost mid-job does (libvirt 9.0, QEMU
	// 7.2: the cancel waits on the disk mirror's writes to the dead peer):
	// bytes stop, job statistics time out, until CutStreams closes the
	// streams, which fails the job with the guest running on the source.
	WedgeAfter time.Duration
	// WedgedAnswers: a wedged job's statistics answer, with WedgedType (no
	// job, or a failed one: libvirt between its cancel and the call's
	// return), instead of timing out.
	WedgedAnswers bool
	WedgedType    virt.JobType
}

// World is a set of fake hosts.
type World struct {
	mu    sync.Mutex
	hosts map[string]*Host // by URI
	Job   Job
	calls []Call
}

// Call is one recorded operation.
type Call struct {
	URI, Op, Dom string
	Spec         virt.MigrateSpec
	Control      virt.Control
}

// Host is one fake libvirt host.
type Host struct {
	URI     string
	HostURI map[string]string // Perform's DestURI → the World URI of that host
	domains map[string]*virt.DomainState
	jobs    map[string]*job
	done    map[string]virt.JobStats // completed-job stats
	broken  map[string]*job          // post-copy jobs paused after a failure
}

type job struct {
	wedged   bool // WedgeAfter passed; CutStreams ends it
	cut      bool
	spec     virt.MigrateSpec
	dest     *Host
	start    time.Time
	model    *Model
	pcPaused bool
	finished chan error
}

// NewWorld makes a world with the named hosts.
func NewWorld(uris ...string) *World {
	w := &World{hosts: map[string]*Host{}}
	for _, u := range uris {
		w.hosts[u] = &Host{URI: u, HostURI: map[string]string{}, domains: map[string]*virt.DomainState{},
			jobs: map[string]*job{}, done: map[string]virt.JobStats{}, broken: map[string]*job{}}
	}
	return w
}

// Host returns the host with the URI.
func (w *World) Host(uri string) *Host { return w.hosts[uri] }

// Define puts a running domain on a host.
func (w *World) Define(uri, dom string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hosts[uri].domains[dom] = &virt.DomainState{State: virt.StateRunning}
}

// State returns a domain's state on a host (ok false: no such domain).
func (w *World) State(uri, dom string) (virt.DomainState, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, ok := w.hosts[uri].domains[dom]
	if !ok {
		return virt.DomainState{}, false
	}
	return *st, true
}

// Calls returns a copy of the recorded operations.
func (w *World) Calls() []Call {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Call(nil), w.calls...)
}

// Ops lists the recorded operation names.
func (w *World) Ops() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, c := range w.calls {
		out = append(out, c.Op)
	}
	return out
}

// Dial returns a connection to a host.
func (w *World) Dial(_ context.Context, uri string) (*Conn, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.hosts[uri]; !ok {
		return nil, fmt.Errorf("dial %s: %w: no such host", uri, errdefs.ErrUnavailable)
	}
	return &Conn{w: w, uri: uri, closed: make(chan struct{})}, nil
}

// Conn is a connection to a fake host.
type Conn struct {
	w      *World
	uri    string
	once   sync.Once
	closed chan struct{}
}

// Close ends the connection; a Migrate waiting on it returns ErrUnavailable.
func (c *Conn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *Conn) host() *Host { return c.w.hosts[c.uri] }

func (c *Conn) rec(op, dom string, s virt.MigrateSpec, ctl virt.Control) {
	c.w.calls = append(c.w.calls, Call{URI: c.uri, Op: op, Dom: dom, Spec: s, Control: ctl})
}

// Migrate starts the job and waits for it like Perform3Params.
func (c *Conn) Migrate(ctx context.Context, dom string, s virt.MigrateSpec) error {
	c.w.mu.Lock()
	h := c.host()
	c.rec("migrate", dom, s, virt.Control{})
	st, ok := h.domains[dom]
	if !ok {
		c.w.mu.Unlock()
		return fmt.Errorf("migrate %s: %w", dom, errdefs.ErrNotFound)
	}
	if c.w.Job.FailPerform != nil {
		c.w.mu.Unlock()
		return c.w.Job.FailPerform
	}
	j := h.jobs[dom]
	if s.PostcopyResume {
		j = h.broken[dom]
		if j != nil && c.w.Job.HangOnPostcopyFailure {
			c.w.mu.Unlock()
			return fmt.Errorf("resume %s: %w: migration of domain %s is being actively monitored by another thread", dom, errdefs.ErrFailedPrecondition, dom)
		}
		if j == nil {
			c.w.mu.Unlock()
			return fmt.Errorf("resume %s: %w: no failed post-copy migration", dom, errdefs.ErrFailedPrecondition)
		}
		if c.w.Job.LinkDown != nil && c.w.Job.LinkDown() {
			c.w.mu.Unlock()
			return fmt.Errorf("resume %s: %w: destination unreachable", dom, errdefs.ErrUnavailable)
		}
		delete(h.broken, dom)
		j.pcPaused, j.finished = false, make(chan error, 1)
		h.jobs[dom] = j
		go c.w.runJob(h, dom, j) // owner: the fake host; ends with the job
	} else if j == nil {
		dest := c.w.hosts[h.HostURI[s.DestURI]]
		if dest == nil {
			c.w.mu.Unlock()
			return fmt.Errorf("migrate %s: %w: unknown destination %s", dom, errdefs.ErrUnavailable, s.DestURI)
		}
		j = &job{spec: s, dest: dest, start: time.Now(), model: c.w.Job.model(s), finished: make(chan error, 1)}
		h.jobs[dom] = j
		go c.w.runJob(h, dom, j) // owner: the fake host; ends with the job
	}
	_ = st
	c.w.mu.Unlock()
	select {
	case err := <-j.finished:
		j.finished <- err // let another waiter (post-copy resume) see it too
		return err
	case <-c.closed:
		return fmt.Errorf("migrate %s: %w: connection closed", dom, errdefs.ErrUnavailable)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *World) runJob(h *Host, dom string, j *job) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for range t.C {
		w.mu.Lock()
		err, end := w.stepJob(j)
		if end && j.pcPaused && err != nil && w.Job.HangOnPostcopyFailure {
			h.domains[dom].State, h.domains[dom].Reason = virt.StatePaused, virt.ReasonPausedPostcopyFailed
			j.dest.domains[dom] = &virt.DomainState{State: virt.StatePaused, Reason: virt.ReasonPausedPostcopyFailed}
			h.broken[dom] = j // and still in h.jobs: the statistics go stale; nothing is sent on finished
			w.mu.Unlock()
			return
		}
		if end {
			delete(h.jobs, dom)
			elapsed := time.Since(j.start)
			if err == nil {
				h.domains[dom].State, h.domains[dom].Reason = virt.StateShutoff, 3
				j.dest.domains[dom] = &virt.DomainState{State: virt.StateRunning, Reason: 2}
				js := j.model.Stats()
				js.Type, js.Elapsed = virt.JobCompleted, elapsed
				h.done[dom] = js
			} else if j.pcPaused {
				h.domains[dom].State, h.domains[dom].Reason = virt.StatePaused, virt.ReasonPausedPostcopyFailed
				j.dest.domains[dom] = &virt.DomainState{State: virt.StateRunning, Reason: 11}
				h.broken[dom] = j
			} else {
				h.domains[dom].State = virt.StateRunning
			}
			w.mu.Unlock()
			j.finished <- err
			return
		}
		w.mu.Unlock()
	}
}

// model is the QEMU model of one job the World runs.
func (jb Job) model(s virt.MigrateSpec) *Model {
	ram, bw := jb.RAMMiB, jb.BandwidthMiBps
	if ram == 0 {
		ram = 256
	}
	if bw == 0 {
		bw = 100
	}
	m := NewModel(int(ram), int(jb.WSMiB), 0, jb.DirtyMiBps, bw)
	if jb.LinkDown != nil {
		m.LinkUp = func(time.Duration) bool { return !jb.LinkDown() }
	}
	m.AutoConverge = s.AutoConverge
	if s.AutoConvergeIni > 0 {
		m.ACInitial = s.AutoConvergeIni
	}
	if s.AutoConvergeInc > 0 {
		m.ACIncrement = s.AutoConvergeInc
	}
	return m
}

// stepJob advances a job by 100 ms; w.mu is held.
func (w *World) stepJob(j *job) (error, bool) {
	if w.Job.WedgeAfter > 0 && !j.wedged && time.Since(j.start) >= w.Job.WedgeAfter {
		j.wedged = true
	}
	switch {
	case j.cut:
		return fmt.Errorf("operation failed: Lost connection to destination host: %w", errdefs.ErrUnavailable), true
	case j.wedged:
		return nil, false
	case j.model.Aborted():
		return fmt.Errorf("operation aborted: job 'migration out' canceled by client: %w", errdefs.ErrAborted), true
	case j.pcPaused:
		return fmt.Errorf("operation failed: job 'migration out' failed in post-copy phase: %w", errdefs.ErrFailedPrecondition), true
	}
	j.model.Advance(100 * time.Millisecond)
	return nil, j.model.Done()
}

// JobStats reports the running job, or the last completed one.
func (c *Conn) JobStats(_ context.Context, dom string, completed bool) (virt.JobStats, error) {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	h := c.host()
	if _, ok := h.domains[dom]; !ok {
		return virt.JobStats{}, fmt.Errorf("job stats %s: %w", dom, errdefs.ErrNotFound)
	}
	if completed {
		return h.done[dom], nil
	}
	j := h.jobs[dom]
	if j == nil {
		return virt.JobStats{Type: virt.JobNone}, nil
	}
	if j.wedged && c.w.Job.WedgedAnswers {
		return virt.JobStats{Type: c.w.Job.WedgedType}, nil
	}
	if j.wedged {
		return virt.JobStats{}, fmt.Errorf("job stats of %s: %w after 10s", dom, errdefs.ErrTimeout)
	}
	js := j.model.Stats()
	js.Type = virt.JobUnbounded // until the job's end is settled
	return js, nil
}

// DomainState reports a domain's state.
func (c *Conn) DomainState(_ context.Context, dom string) (virt.DomainState, error) {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	st, ok := c.host().domains[dom]
	if !ok {
		return virt.DomainState{}, fmt.Errorf("state %s: %w", dom, errdefs.ErrNotFound)
	}
	return *st, nil
}

// Control applies a run-time action.
func (c *Conn) Control(_ context.Context, dom string, ctl virt.Control) error {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	h := c.host()
	c.rec(ctl.Op.String(), dom, virt.MigrateSpec{}, ctl)
	st, ok := h.domains[dom]
	if !ok {
		return fmt.Errorf("%s %s: %w", ctl.Op, dom, errdefs.ErrNotFound)
	}
	j := h.jobs[dom]
	switch ctl.Op {
	case virt.OpUndefine:
		delete(h.domains, dom)
		return nil
	case virt.OpSuspend:
		st.State = virt.StatePaused
		if j != nil {
			j.model.Pause()
		}
		return nil
	case virt.OpResume:
		st.State = virt.StateRunning
		return nil
	}
	if j == nil {
		return fmt.Errorf("%s %s: %w: no job", ctl.Op, dom, errdefs.ErrFailedPrecondition)
	}
	switch ctl.Op {
	case virt.OpSetDowntime:
		j.model.SetDowntime(ctl.Downtime)
	case virt.OpStartPostCopy:
		if !j.spec.PostCopy {
			return fmt.Errorf("post-copy %s: %w: job not started with post-copy", dom, errdefs.ErrFailedPrecondition)
		}
		j.model.StartPostCopy()
	case virt.OpAbort:
		j.model.Abort()
	case virt.OpPostcopyPause:
		if !j.model.PostCopy() {
			return fmt.Errorf("post-copy pause %s: %w: current job is not outgoing migration in post-copy mode", dom, errdefs.ErrFailedPrecondition)
		}
		j.pcPaused = true
	}
	return nil
}

// CutStreams closes the migration streams from the host at uri to addr, as
// the kernel's socket destroy does: a wedged job fails. It reports how many
// jobs it cut.
func (w *World) CutStreams(uri, addr string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, Call{URI: uri, Op: "cut-streams", Dom: addr})
	n := 0
	for _, j := range w.hosts[uri].jobs {
		if j.wedged {
			j.cut = true
			n++
		}
	}
	return n
}
