package migration

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Options configure a Manager. Zero values take the defaults in brackets.
type Options struct {
	StateDir         string        // journals live in StateDir/migrations (required)
	LocalURI         string        // this host's libvirtd (required)
	Dial             Dialer        // opens libvirt connections (required)
	Hooks            Hooks         // the caller's side (required)
	MaxOutbound      int           // concurrent outbound migrations [1, Nova's max_concurrent_live_migrations]
	PollInterval     time.Duration // job-stats sampling [500ms]
	ProgressInterval time.Duration // Hooks.Progress cadence [5s]
	PostcopyRecovery time.Duration // how long a failed post-copy is retried [5m]
	// PostcopyHang is how long the engine waits for libvirt's migration
	// call to return once post-copy has failed on the source, before it
	// recovers without it [15s].
	PostcopyHang time.Duration
	Log          *logrus.Entry
}

// Manager runs this host's outbound migrations. It owns every goroutine it
// starts: Run spawns the runners and returns only after all of them ended.
// Cancelling Run's context detaches (monitoring stops, libvirt jobs go on);
// only Abort or the policy aborts a job. A new Manager on the same state
// directory re-attaches to what is still running.
type Manager struct {
	o     Options
	j     *journal
	slots chan struct{}

	mu      sync.Mutex
	entries map[string]*entry
	runCtx  context.Context // set while Run runs
	wg      sync.WaitGroup
}

type entry struct {
	mu   sync.Mutex
	m    Migration
	cmds chan command // to the runner, buffered
}

type command struct {
	kind  string // "abort", "force-complete"
	reply chan error
}

// NewManager checks the options and loads the journals.
func NewManager(o Options) (*Manager, error) {
	var errs []error
	if o.StateDir == "" {
		errs = append(errs, errors.New("no state directory"))
	}
	if o.LocalURI == "" {
		errs = append(errs, errors.New("no local libvirt URI"))
	}
	if o.Dial == nil || o.Hooks == nil {
		errs = append(errs, errors.New("no dialer or hooks"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("migration manager: %w: %w", errdefs.ErrInvalidArgument, errors.Join(errs...))
	}
	if o.MaxOutbound <= 0 {
		o.MaxOutbound = 1
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 500 * time.Millisecond
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 5 * time.Second
	}
	if o.PostcopyRecovery <= 0 {
		o.PostcopyRecovery = 5 * time.Minute
	}
	if o.PostcopyHang <= 0 {
		o.PostcopyHang = 15 * time.Second
	}
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	j, err := newJournal(o.StateDir)
	if err != nil {
		return nil, err
	}
	ms, err := j.load()
	if err != nil {
		o.Log.WithError(err).Error("some journals are unreadable; those migrations need an operator")
	}
	m := &Manager{o: o, j: j, slots: make(chan struct{}, o.MaxOutbound), entries: map[string]*entry{}}
	for _, mg := range ms {
		m.entries[mg.ID] = &entry{m: *mg, cmds: make(chan command, 4)}
	}
	return m, nil
}

// Run resumes every journalled migration that has not ended, then serves
// until ctx ends; it returns after every runner has detached.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.runCtx != nil {
		m.mu.Unlock()
		return fmt.Errorf("migration manager: %w: Run called twice", errdefs.ErrFailedPrecondition)
	}
	m.runCtx = ctx
	for _, e := range m.entries {
		if !e.m.Phase.Terminal() {
			m.o.Log.WithFields(logrus.Fields{"migration_id": e.m.ID, "phase": e.m.Phase}).Info("resuming journalled migration")
			m.spawn(e)
		}
	}
	m.mu.Unlock()
	<-ctx.Done()
	m.wg.Wait()
	return nil
}

// spawn starts a runner; m.mu is held.
func (m *Manager) spawn(e *entry) {
	m.wg.Add(1)
	go func() { // owner: Manager (Run waits)
		defer m.wg.Done()
		rctx, cancel := context.WithCancelCause(m.runCtx)
		defer cancel(nil)
		stop := context.AfterFunc(m.runCtx, func() { cancel(ErrDetached) })
		defer stop()
		newRunner(m, e).run(rctx)
	}()
}

// Start journals a new migration and starts it; it returns once the intent
// is on disk (a cast may then be acked). Starting an id that is already
// known starts nothing and returns the existing migration.
func (m *Manager) Start(ctx context.Context, req Request) (Migration, error) {
	if err := validID(req.ID); err != nil {
		return Migration{}, fmt.Errorf("start: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if req.Domain == "" || req.Spec.DestURI == "" {
		return Migration{}, fmt.Errorf("start %s: %w: no domain or destination", req.ID, errdefs.ErrInvalidArgument)
	}
	m.mu.Lock()
	if m.runCtx == nil || m.runCtx.Err() != nil {
		m.mu.Unlock()
		return Migration{}, fmt.Errorf("start %s: %w: the engine is not running", req.ID, errdefs.ErrUnavailable)
	}
	if e, ok := m.entries[req.ID]; ok {
		m.mu.Unlock()
		return e.snapshot(), fmt.Errorf("start %s: %w: migration already known (%s)", req.ID, errdefs.ErrConflict, e.snapshot().Phase)
	}
	req.Policy = req.Policy.WithDefaults()
	e := &entry{m: Migration{Request: req, Phase: PhaseQueued, Updated: time.Now()}, cmds: make(chan command, 4)}
	e.m.Record.Started = time.Now()
	if err := m.j.save(&e.m); err != nil {
		m.mu.Unlock()
		return Migration{}, fmt.Errorf("start %s: %w", req.ID, err)
	}
	m.entries[req.ID] = e
	m.mu.Unlock()
	// Reported before the runner exists, so "queued" is the first status the
	// caller's records see; outside the lock, since it may be a remote call.
	snap := e.snapshot()
	m.o.Hooks.Phase(ctx, &snap)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.runCtx.Err() == nil { // else the journal holds it and the next Run resumes it
		m.spawn(e)
	}
	return e.snapshot(), nil
}

// Abort asks for a migration to be aborted: a queued one is cancelled
// without touching libvirt; a running job is aborted; a migration in
// post-copy cannot be aborted (the guest already runs on the destination).
func (m *Manager) Abort(ctx context.Context, id string) error { return m.command(ctx, id, "abort") }

// ForceComplete switches a running migration to post-copy when permitted
// and the link is healthy, else pauses the guest.
func (m *Manager) ForceComplete(ctx context.Context, id string) error {
	return m.command(ctx, id, "force-complete")
}

func (m *Manager) command(ctx context.Context, id, kind string) error {
	m.mu.Lock()
	e, ok := m.entries[id]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("%s %s: %w: %w", kind, id, errdefs.ErrNotFound, ErrUnknownMigration)
	}
	if p := e.snapshot().Phase; p.Terminal() {
		return fmt.Errorf("%s %s: %w: migration is %s", kind, id, errdefs.ErrFailedPrecondition, p)
	}
	c := command{kind: kind, reply: make(chan error, 1)}
	select {
	case e.cmds <- c:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-c.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status returns a migration's journalled state.
func (m *Manager) Status(id string) (Migration, bool) {
	m.mu.Lock()
	e, ok := m.entries[id]
	m.mu.Unlock()
	if !ok {
		return Migration{}, false
	}
	return e.snapshot(), true
}

// List returns every known migration, newest first.
func (m *Manager) List() []Migration {
	m.mu.Lock()
	var out []Migration
	for _, e := range m.entries {
		out = append(out, e.snapshot())
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Record.Started.After(out[j].Record.Started) })
	return out
}

func (e *entry) snapshot() Migration {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := e.m
	m.Steps = append([]string(nil), e.m.Steps...)
	m.Record.Actions = append([]ActionRecord(nil), e.m.Record.Actions...)
	return m
}
