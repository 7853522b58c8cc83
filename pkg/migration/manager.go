package migration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/virt"
)

// Options configure a Manager. Zero values take the defaults in brackets.
type Options struct {
	StateDir         string        // journals live in StateDir/migrations (required)
	LocalURI         string        // this host's libvirtd (required)
	Dial             Dialer        // opens libvirt connections (required)
	Destination      Destination   // prepares the destination (required)
	Records          Records       // the caller's bookkeeping (required)
	MaxOutbound      int           // concurrent outbound migrations [1, Nova's max_concurrent_live_migrations]
	PollInterval     time.Duration // job-stats sampling [500ms]
	ProgressInterval time.Duration // Records.Progress cadence [5s]
	PostcopyRecovery time.Duration // how long a failed post-copy is retried [5m]
	// PostcopyHang is how long the engine waits for libvirt's migration
	// call to return once post-copy has failed on the source, before it
	// recovers without it [15s].
	PostcopyHang time.Duration
	// CutStreams closes the TCP connections of an instance's QEMU to a
	// destination's migration address and says how many it closed; nil
	// never does. The engine calls it when the source's libvirtd has shown
	// no job moving for WedgeAfter during pre-copy: a destination lost mid-job leaves
	// libvirt's cancel, and the guest with it, waiting on writes to the
	// dead peer until TCP gives up (about 15 minutes); closing the streams
	// fails the job at once, with the guest running on the source.
	CutStreams func(ctx context.Context, instanceUUID, addr string) (int, error)
	// WedgeAfter is how long no job may be seen moving before CutStreams
	// [45s: libvirt's own keepalive (30 s) first gets its chance].
	WedgeAfter time.Duration
	// Retention is how long the journal keeps a migration that ended and
	// owes no report [7 days]; negative keeps them for ever.
	Retention time.Duration
	// UpgradeState converts the caller's state of a journal entry written
	// by an older ferryd (format 0); nil keeps it as it is.
	UpgradeState func(json.RawMessage) (json.RawMessage, error)
	// Observer learns every phase change and action (metrics); nil for none.
	Observer Observer
	Log      *logrus.Entry
}

// Manager runs this host's outbound migrations. It owns every goroutine it
// starts: Run spawns the runners and the delivery loops, and returns only
// after all of them ended. Cancelling Run's context detaches (monitoring
// stops, libvirt jobs go on, undelivered reports stay journalled); only
// Abort or the policy aborts a job. A new Manager on the same state
// directory re-attaches to what is still running and re-sends what is owed.
type Manager struct {
	o     Options
	j     *journal
	slots *slots
	bad   []Unreadable

	mu      sync.Mutex
	entries map[string]*entry
	runCtx  context.Context // set while Run runs
	wg      sync.WaitGroup
}

type entry struct {
	saveMu     sync.Mutex // one journal write at a time, of the latest state
	mu         sync.Mutex
	m          Migration
	cmds       chan command // to the runner, buffered
	poke       chan struct{}
	progress   *progress // the latest sample not yet saved
	latest     *sample   // the latest sample, for Progress
	delivering bool      // a delivery loop runs for it
	running    bool      // a runner runs for it
	// A queued migration's place in line for an outbound slot, taken when
	// it is admitted (or resumed), so that slots go in that order.
	granted <-chan struct{}
	leave   func()
}

type command struct {
	kind  string // "abort", "force-complete"
	reply chan error
}

// NewManager checks the options and loads the journal; entries it cannot
// read are moved aside and listed by Unreadable.
func NewManager(o Options) (*Manager, error) {
	var errs []error
	if o.StateDir == "" {
		errs = append(errs, errors.New("no state directory"))
	}
	if o.LocalURI == "" {
		errs = append(errs, errors.New("no local libvirt URI"))
	}
	if o.Dial == nil || o.Destination == nil || o.Records == nil {
		errs = append(errs, errors.New("no dialer, destination or records"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("migration manager: %w: %w", errdefs.ErrInvalidArgument, errors.Join(errs...))
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if o.MaxOutbound <= 0 {
		o.MaxOutbound = 1
	}
	def(&o.PollInterval, 500*time.Millisecond)
	def(&o.ProgressInterval, 5*time.Second)
	def(&o.PostcopyRecovery, 5*time.Minute)
	def(&o.PostcopyHang, 15*time.Second)
	def(&o.WedgeAfter, 45*time.Second)
	def(&o.Retention, 7*24*time.Hour)
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	j, err := newJournal(o.StateDir)
	if err != nil {
		return nil, err
	}
	ms, bad, err := j.read(true, o.UpgradeState)
	if err != nil {
		return nil, err
	}
	for _, u := range bad {
		o.Log.WithField("entry", u.Name).WithField("moved_to", u.Path).WithError(u.Err).Error("journal entry unreadable: moved aside; that migration needs an operator")
	}
	ms = j.prune(ms, o.Retention, time.Now())
	m := &Manager{o: o, j: j, slots: newSlots(o.MaxOutbound), entries: map[string]*entry{}, bad: bad}
	for _, mg := range ms {
		m.entries[mg.ID] = newEntry(*mg)
	}
	return m, nil
}

func newEntry(m Migration) *entry {
	return &entry{m: m, cmds: make(chan command, 4), poke: make(chan struct{}, 1)}
}

// Unreadable lists the journal entries NewManager moved aside.
func (m *Manager) Unreadable() []Unreadable { return append([]Unreadable(nil), m.bad...) }

// Run resumes every journalled migration that has not ended and delivers
// every report still owed, then serves until ctx ends; it returns after
// every runner has detached and every delivery loop stopped.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.runCtx != nil {
		m.mu.Unlock()
		return fmt.Errorf("migration manager: %w: Run called twice", errdefs.ErrFailedPrecondition)
	}
	m.runCtx = ctx
	entries := make([]*entry, 0, len(m.entries))
	for _, e := range m.entries {
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].m.Record.Started.Before(entries[j].m.Record.Started) })
	for _, e := range entries {
		s := e.snapshot()
		if s.Phase == PhaseQueued {
			e.granted, e.leave = m.slots.wait()
		}
		if !s.Phase.Terminal() {
			m.o.Log.WithFields(s.LogFields()).WithField("phase", s.Phase).Info("resuming journalled migration")
			m.spawn(e)
		}
		if s.Pending() > 0 {
			m.o.Log.WithFields(s.LogFields()).WithField("reports", s.Pending()).Info("re-sending the reports still owed")
		}
		if s.Pending() > 0 || !s.Phase.Terminal() {
			// A resumed migration's loop also saves its job's progress,
			// though nothing may be owed yet.
			m.deliverLoop(e)
		}
	}
	m.mu.Unlock()
	<-ctx.Done()
	m.wg.Wait()
	return nil
}

// spawn starts a runner; m.mu is held.
func (m *Manager) spawn(e *entry) {
	e.mu.Lock()
	if e.running {
		e.mu.Unlock()
		return
	}
	e.running = true
	e.mu.Unlock()
	m.wg.Add(1)
	go func() { // owner: Manager (Run waits)
		defer m.wg.Done()
		defer func() { e.mu.Lock(); e.running = false; e.mu.Unlock(); e.wake() }()
		rctx, cancel := context.WithCancelCause(m.runCtx)
		defer cancel(nil)
		stop := context.AfterFunc(m.runCtx, func() { cancel(ErrDetached) })
		defer stop()
		newRunner(m, e).run(rctx)
	}()
}

// Start journals a new migration and starts it; it returns once the intent
// is on disk (a cast may then be acked). Nothing is reported to the
// caller's records before Start returns: the reports are journalled and
// delivered beside the engine. Starting an id that is already known starts
// nothing and returns the existing migration with ErrConflict.
func (m *Manager) Start(ctx context.Context, req Request) (Migration, error) {
	if err := checkRequest(req); err != nil {
		return Migration{}, fmt.Errorf("start: %w", err)
	}
	return m.admit(req, PhaseQueued, "")
}

// Refuse records a migration that ends before it is queued (the request
// could not be planned: the guest is not here, its disks cannot be read, …),
// so that the caller's records learn it like any other outcome. It returns
// once the outcome is journalled, or kept in memory when the journal cannot
// be written (a full disk), and delivered either way.
func (m *Manager) Refuse(ctx context.Context, req Request, reason string) (Migration, error) {
	if err := validID(req.ID); err != nil {
		return Migration{}, fmt.Errorf("refuse: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if err := disks.ValidUUID(req.InstanceUUID); err != nil {
		return Migration{}, fmt.Errorf("refuse %s: %w: %w", req.ID, errdefs.ErrInvalidArgument, err)
	}
	return m.admit(req, PhaseError, reason)
}

func checkRequest(req Request) error {
	var errs []error
	if err := validID(req.ID); err != nil {
		errs = append(errs, err)
	}
	if err := disks.ValidUUID(req.InstanceUUID); err != nil {
		errs = append(errs, err)
	}
	if req.Dest.Host == "" || req.DestCheckURI == "" {
		errs = append(errs, errors.New("no destination host or check URI"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s: %w: %w", req.ID, errdefs.ErrInvalidArgument, errors.Join(errs...))
	}
	return nil
}

// admit journals a new migration in phase p (queued, or error for a refusal).
func (m *Manager) admit(req Request, p Phase, reason string) (Migration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.runCtx == nil || m.runCtx.Err() != nil {
		return Migration{}, fmt.Errorf("%s: %w: the engine is not running", req.ID, errdefs.ErrUnavailable)
	}
	if e, ok := m.entries[req.ID]; ok {
		s := e.snapshot()
		return s, fmt.Errorf("%s: %w: migration already known (%s)", req.ID, errdefs.ErrConflict, s.Phase)
	}
	req.Policy = req.Policy.WithDefaults()
	now := time.Now()
	mg := Migration{Request: req, Phase: p, Reason: reason, Updated: now, Record: Record{Started: now}}
	if p.Terminal() {
		mg.Record.Ended = now
	}
	mg.Reports = numbered(nil, m.o.Records.Reports(mg, PhaseNew, p), p, reason)
	e := newEntry(mg)
	err := m.persist(e)
	if err != nil && !p.Terminal() {
		return Migration{}, fmt.Errorf("%s: %w", req.ID, err)
	}
	if err != nil { // a refusal still reaches the records, from memory
		m.o.Log.WithFields(req.LogFields()).WithError(err).Error("journal write failed; reporting the refusal from memory")
	}
	m.entries[req.ID] = e
	m.o.Observer.Phase(e.snapshot(), PhaseNew)
	m.deliverLoop(e)
	if !p.Terminal() {
		e.granted, e.leave = m.slots.wait()
		m.spawn(e)
	}
	return e.snapshot(), nil
}

// numbered appends the named reports after the existing ones.
func numbered(have []Report, names []string, p Phase, reason string) []Report {
	seq := len(have)
	now := time.Now()
	for _, n := range names {
		seq++
		have = append(have, Report{Seq: seq, Name: n, Phase: p, Reason: reason, Owed: now})
	}
	return have
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

// Kick makes every delivery loop waiting out a backoff try again now (the
// broker is back).
func (m *Manager) Kick() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.entries {
		e.wake()
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

// sample is one job-stats reading and when it was taken.
type sample struct {
	at time.Time
	js virt.JobStats
}

// Progress returns the latest job statistics the monitor read for a
// migration whose job runs (running or in post-copy), and when it read
// them; false when there is none.
func (m *Manager) Progress(id string) (virt.JobStats, time.Time, bool) {
	m.mu.Lock()
	e, ok := m.entries[id]
	m.mu.Unlock()
	if !ok {
		return virt.JobStats{}, time.Time{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.m.Phase.Active() || e.latest == nil {
		return virt.JobStats{}, time.Time{}, false
	}
	return e.latest.js, e.latest.at, true
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
	m.Reports = append([]Report(nil), e.m.Reports...)
	m.Record.Actions = append([]ActionRecord(nil), e.m.Record.Actions...)
	if e.m.Prep != nil {
		p := *e.m.Prep
		m.Prep = &p
	}
	return m
}

// persist journals the entry's current state. Writes are serialised and
// each takes its snapshot inside the lock, so the last write is the latest
// state, whichever goroutine (runner or delivery loop) made it.
func (m *Manager) persist(e *entry) error {
	e.saveMu.Lock()
	defer e.saveMu.Unlock()
	snap := e.snapshot()
	return m.j.save(&snap)
}

// wake tells the entry's delivery loop there is something new.
func (e *entry) wake() {
	select {
	case e.poke <- struct{}{}:
	default:
	}
}
