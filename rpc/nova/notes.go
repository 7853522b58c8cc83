package nova

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"

	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/rpc/oslo"
)

// Notifications are journalled reports like any other (companion mode
// only): a broker outage delays them, a restart re-sends what is owed, and
// they go in Nova's order among the records' reports. Ferry keeps that
// order strictly: a notification not yet delivered holds back the reports
// after it, as Nova's own thread blocks on a notification send (oslo's
// notifier retries for ever by default) before it saves the status. When
// notifications share the RPC broker (the default) an outage holds both
// back anyway; a separate notification broker that stays down holds
// Nova's records back as it would hold nova-compute's. A notification the
// broker refuses outright (403, 406) is given up after a few tries like
// any refused report, so it cannot hold the records back for ever.

// Notifier sends one notification (*oslo.Notifier).
type Notifier interface {
	Notify(ctx context.Context, topic string, envelope bool, n oslo.Notification) error
}

// NotifyOptions are nova.conf's [oslo_messaging_notifications] and
// [notifications] as ferryd's config carries them.
type NotifyOptions struct {
	Notifier        Notifier
	Drivers         []string // messagingv2, messaging, noop
	Topics          []string // for the legacy notifications
	VersionedTopics []string
	Format          string // unversioned, versioned, both
	Payload         PayloadOptions
	// Timeout bounds one send while the broker is out of reach, after
	// which the report is retried with the engine's backoff (and a
	// warning says so); default 60s.
	Timeout time.Duration
}

// Enabled tells whether any notification would be sent: oslo sends none
// without a driver other than noop.
func (o *NotifyOptions) Enabled() bool {
	return o != nil && slices.ContainsFunc(o.Drivers, func(d string) bool { return d == "messaging" || d == "messagingv2" })
}

// withNotes adds the notifications a move owes to its companion-mode
// reports, where Zed's source emits them (those of the operator's casts
// are CommandReports'): _post.start before the
// bindings move and _post.end after post_live_migration_at_destination;
// _rollback.start after Placement's revert and before the destination's
// rollback, _rollback.end once the task state is cleared, before the
// status. A migration cancelled while queued gets no rollback's, only
// the abort's start and end around the cancellation's reports, as Nova's
// abort of a queued migration sends them.
func (b *Bookkeeper) withNotes(names []string, from, to migration.Phase) []string {
	if !b.o.Notify.Enabled() {
		return names
	}
	switch {
	case to == migration.PhaseCancelled && from == migration.PhaseQueued:
		// live_migration_abort of a queued migration: its start, the
		// revert, the task state, the status, its end.
		names = slices.Insert(names, 0, repNoteAbortStart)
		return slices.Insert(names, slices.Index(names, repStatus)+1, repNoteAbortEnd)
	case to == migration.PhaseCompleted:
		names = slices.Insert(names, 0, repNotePostStart)
		return slices.Insert(names, slices.Index(names, repFinishDst)+1, repNotePostEnd)
	case (to == migration.PhaseFailed || to == migration.PhaseCancelled) && from != migration.PhaseQueued:
		names = slices.Insert(names, slices.Index(names, repRevert)+1, repNoteRollbackStart)
		return slices.Insert(names, slices.Index(names, repClearTask)+1, repNoteRollbackEnd)
	}
	return names
}

var _ migration.Commander = (*Bookkeeper)(nil)

// CommandReports are the notifications around the operator's casts that
// took effect: live_migration_abort's and live_migration_force_complete's
// start and end (companion mode, notifications configured). An abort while
// preparing gets one end, where Nova sends a second after its rollback.
func (b *Bookkeeper) CommandReports(m migration.Migration, command string) []string {
	if !b.o.Companion || !b.o.Notify.Enabled() || m.External {
		return nil
	}
	switch command {
	case "abort":
		return []string{repNoteAbortStart, repNoteAbortEnd}
	case "force-complete":
		return []string{repNoteForceStart, repNoteForceEnd}
	}
	return nil
}

// builtNote is one notification and the topics it goes to.
type builtNote struct {
	note      oslo.Notification
	versioned bool
}

// noteSpace names ferry's notification ids: message_id and _unique_id are
// derived from the migration and the report, so a re-send carries the same.
var noteSpace = uuid.MustParse("4c1f8a52-7d0e-4b8e-9a43-2f6e1c9b7d35")

// notifications builds what report name sends for inst, in Nova's order:
// the legacy one, then the versioned one, as the format asks.
func (b *Bookkeeper) notifications(inst *Object, rctx Context, name, migID string, seq int, at time.Time) ([]builtNote, error) {
	pt, ok := notifyPoints[name]
	if !ok {
		return nil, fmt.Errorf("%w: unknown notification %q", migration.ErrSkipped, name)
	}
	o := b.o.Notify
	mk := func(event, publisher string, payload any, versioned bool) (builtNote, error) {
		p, err := json.Marshal(payload)
		if err != nil {
			return builtNote{}, err
		}
		id := uuid.NewSHA1(noteSpace, []byte(migID+"/"+strconv.Itoa(seq)+"/"+event))
		return builtNote{versioned: versioned, note: oslo.Notification{MessageID: id.String(), PublisherID: publisher,
			EventType: event, Priority: "INFO", Payload: p, Timestamp: at, Context: notifyContext(rctx, at)}}, nil
	}
	var out []builtNote
	if o.Format == "unversioned" || o.Format == "both" {
		p, err := legacyPayload(inst, pt, o.Payload)
		if err != nil {
			return nil, err
		}
		n, err := mk("compute.instance."+pt.legacy, "compute."+b.o.Host, p, false)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	if o.Format == "versioned" || o.Format == "both" {
		p, err := versionedPayload(inst, rctx, pt, o.Payload)
		if err != nil {
			return nil, err
		}
		n, err := mk("instance."+pt.action+"."+pt.phase, "nova-compute:"+b.o.Host, p, true)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// needsLoad lists the instance fields a payload reads that the primitive
// lacks: nova-compute lazy-loads them from the conductor.
func needsLoad(inst *Object) []string {
	var out []string
	for _, f := range []string{"flavor", "metadata", "system_metadata", "info_cache"} {
		if _, ok := inst.Data[f]; !ok {
			out = append(out, f)
		}
	}
	return out
}

// deliverNote sends a notification report through every driver to every
// topic of its kind. Each send has its own _unique_id (oslo adds one per
// send), derived like the message_id, so a re-sent copy is dropped by an
// oslo listener that saw it.
func (b *Bookkeeper) deliverNote(ctx context.Context, m migration.Migration, st *State, r migration.Report) error {
	o := b.o.Notify
	if !o.Enabled() || o.Notifier == nil {
		return fmt.Errorf("%w: notifications are not configured", migration.ErrSkipped)
	}
	inst := st.Instance
	if missing := needsLoad(inst); len(missing) > 0 {
		uuid, err := UUID(inst, "uuid")
		if err != nil {
			return fmt.Errorf("%w: %w", migration.ErrSkipped, err)
		}
		cur, err := b.cond.InstanceWith(ctx, st.Context, uuid, missing)
		if err != nil {
			return fmt.Errorf("load the instance's %v for its notification: %w", missing, err)
		}
		inst = inst.fresh()
		inst.Changes = nil
		for _, f := range missing {
			if v, ok := cur.Data[f]; ok {
				inst.Data[f] = v
			}
		}
	}
	at := r.Owed
	if at.IsZero() {
		at = time.Now()
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	notes, err := b.notifications(inst, st.Context, r.Name, m.ID, r.Seq, at)
	if err != nil {
		return fmt.Errorf("%w: %w", migration.ErrSkipped, err)
	}
	for _, n := range notes {
		topics := o.Topics
		if n.versioned {
			topics = o.VersionedTopics
		}
		for _, d := range o.Drivers {
			if d != "messaging" && d != "messagingv2" {
				continue
			}
			for _, t := range topics {
				u := uuid.NewSHA1(noteSpace, []byte(n.note.MessageID+"/"+d+"/"+t))
				n.note.UniqueID = hex.EncodeToString(u[:])
				if err := o.Notifier.Notify(ctx, t, d == "messagingv2", n.note); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
