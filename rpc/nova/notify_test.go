package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/rpc/oslo"
)

// capture is rpc/nova/testdata/notify/notifications.json: what python3-nova
// (Zed) emits on the source for one instance (gen.py).
type capture struct {
	Host     string                     `json:"host"`
	Glance   string                     `json:"glance"`
	Context  map[string]json.RawMessage `json:"context"`
	Instance *Object                    `json:"instance"`
	Notes    []struct {
		Group    string                     `json:"group"`
		Topics   string                     `json:"topics"` // legacy or versioned
		Context  map[string]json.RawMessage `json:"context"`
		Message  map[string]json.RawMessage `json:"message"`
		Priority string                     `json:"priority"`
	} `json:"notifications"`
}

func loadCapture(t *testing.T) capture { return loadCaptureFile(t, "notifications.json") }

func loadCaptureFile(t *testing.T, name string) capture {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "notify", name))
	if err != nil {
		t.Fatal(err)
	}
	var c capture
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// normal is v as plain JSON values, for comparing what ferry builds with
// what Nova built.
func normal(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Ferry's notifications, built from the instance primitive and the cast's
// context, equal Nova's field by field, in Nova's order, with these
// differences only, which are not the instance's: message_id (a uuid4 in
// Nova, one derived from the migration and the report in ferry, so that a
// re-send is recognisable) and timestamp, in the message and in the
// context (the moment of sending). notifications.json is an admin's request
// for a running instance with a port; notifications-edge.json a member's,
// with Keystone's domains, for an instance with no port, a progress, a
// locked reason, a termination time and fields unset.
func TestNotificationsAsNova(t *testing.T) {
	for _, file := range []string{"notifications.json", "notifications-edge.json"} {
		t.Run(file, func(t *testing.T) { asNova(t, loadCaptureFile(t, file)) })
	}
}

func asNova(t *testing.T, c capture) {
	b := &Bookkeeper{o: BookOptions{Host: c.Host, Notify: &NotifyOptions{Format: "both",
		Payload: PayloadOptions{ImageAPI: c.Glance}}}}
	ignore := map[string]bool{"message_id": true, "timestamp": true}
	i := 0
	for _, name := range []string{repNotePostStart, repNotePostEnd, repNoteRollbackStart, repNoteRollbackEnd,
		repNoteAbortStart, repNoteAbortEnd, repNoteForceStart, repNoteForceEnd} {
		notes, err := b.notifications(c.Instance, Context(c.Context), name, "m1", 1, time.Now())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, n := range notes {
			if i >= len(c.Notes) {
				t.Fatalf("%s: more notifications than Nova's %d", name, len(c.Notes))
			}
			want := c.Notes[i]
			i++
			if n.versioned != (want.Topics == "versioned") {
				t.Errorf("%s %s: versioned %v, want %s topics", name, n.note.EventType, n.versioned, want.Topics)
			}
			got := map[string]any{"publisher_id": n.note.PublisherID, "event_type": n.note.EventType,
				"priority": n.note.Priority, "payload": n.note.Payload}
			for k, v := range want.Message {
				if ignore[k] {
					continue
				}
				if diff := cmp.Diff(normal(t, v), normal(t, got[k])); diff != "" {
					t.Errorf("%s %s: %s (-nova +ferry):\n%s", name, n.note.EventType, k, diff)
				}
			}
			wctx, gctx := normal(t, want.Context).(map[string]any), normal(t, n.note.Context).(map[string]any)
			delete(wctx, "timestamp")
			delete(gctx, "timestamp")
			if diff := cmp.Diff(wctx, gctx); diff != "" {
				t.Errorf("%s %s: context (-nova +ferry):\n%s", name, n.note.EventType, diff)
			}
			if want.Priority != n.note.Priority {
				t.Errorf("%s: priority %s, want %s", name, n.note.Priority, want.Priority)
			}
		}
	}
	if i != len(c.Notes) {
		t.Errorf("ferry built %d notifications, Nova %d", i, len(c.Notes))
	}
}

// Each format sends what Nova's does: the legacy one alone (Zed's
// default), the versioned one alone, or both, legacy first; a re-built
// notification keeps its message_id and _unique_id.
func TestNotificationFormats(t *testing.T) {
	c := loadCapture(t)
	for format, want := range map[string][]string{
		"unversioned": {"compute.instance.live_migration._post.start"},
		"versioned":   {"instance.live_migration_post.start"},
		"both":        {"compute.instance.live_migration._post.start", "instance.live_migration_post.start"},
	} {
		b := &Bookkeeper{o: BookOptions{Host: c.Host, Notify: &NotifyOptions{Format: format}}}
		notes, err := b.notifications(c.Instance, Context(c.Context), repNotePostStart, "m1", 3, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, n := range notes {
			got = append(got, n.note.EventType)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", format, diff)
		}
		again, _ := b.notifications(c.Instance, Context(c.Context), repNotePostStart, "m1", 3, time.Now())
		if again[0].note.MessageID != notes[0].note.MessageID || again[0].note.UniqueID != notes[0].note.UniqueID {
			t.Errorf("%s: a re-built notification has other ids", format)
		}
	}
}

// An instance without its flavor (not loaded in the cast) cannot be
// described; the report asks for it to be loaded first (needsLoad).
func TestNotificationNeedsFlavor(t *testing.T) {
	c := loadCapture(t)
	inst := c.Instance.fresh()
	delete(inst.Data, "flavor")
	if got := needsLoad(inst); len(got) != 1 || got[0] != "flavor" {
		t.Errorf("needsLoad = %v, want [flavor]", got)
	}
	if got := needsLoad(c.Instance); len(got) != 0 {
		t.Errorf("needsLoad of a whole instance = %v", got)
	}
}

// fakeNotifier records each notification in the fake Nova's log, so that
// its place among the records' calls shows.
type fakeNotifier struct {
	nova *fakeNova
	err  error
	sent []oslo.Notification
}

func (f *fakeNotifier) Notify(_ context.Context, topic string, envelope bool, n oslo.Notification) error {
	if f.err != nil {
		return f.err
	}
	f.sent = append(f.sent, n)
	f.nova.add(fmt.Sprintf("notify %s envelope=%v %s %s", topic, envelope, n.PublisherID, n.EventType))
	return nil
}

// With notifications configured, companion mode's reports send them where
// Zed's source does, among the records' calls: _post.start before the
// bindings move, _post.end after the destination's post call and before
// the status; _rollback.start after Placement's revert and before the
// destination's rollback, _rollback.end after the task state is cleared.
// A field the cast's instance lacks (its metadata here) is loaded from the
// conductor first, as nova-compute's lazy-load does.
func TestCompanionNotificationOrder(t *testing.T) {
	tests := []struct {
		name     string
		from, to migration.Phase
		want     []string
	}{
		{"completed", migration.PhaseRunning, migration.PhaseCompleted, []string{
			"Instance.get_by_uuid", "notify notifications envelope=true compute.src compute.instance.live_migration._post.start",
			"activate " + portA + " dst", "call dst post_live_migration_at_destination",
			"Instance.get_by_uuid", "notify notifications envelope=true compute.src compute.instance.live_migration._post.end",
			"Migration.get_by_id", "Migration.save status=completed", "placement: release " + migUUID, "event_finish ferry_live_migration"}},
		{"failed", migration.PhaseRunning, migration.PhaseFailed, []string{
			"placement: revert " + migUUID + " to " + instUUID,
			"Instance.get_by_uuid", "notify notifications envelope=true compute.src compute.instance.live_migration._rollback.start",
			"cast dst rollback_live_migration_at_destination destroy_disks=true", "Instance.save progress=0 task_state=<nil>",
			"Instance.get_by_uuid", "notify notifications envelope=true compute.src compute.instance.live_migration._rollback.end",
			"Migration.get_by_id", "Migration.save status=failed", "event_finish ferry_live_migration failed: r"}},
		{"cancelled while queued: the abort's, no rollback's", migration.PhaseQueued, migration.PhaseCancelled, []string{
			"Instance.get_by_uuid", "notify notifications envelope=true compute.src compute.instance.live.migration.abort.start",
			"placement: revert " + migUUID + " to " + instUUID, "Instance.save progress=0 task_state=<nil>",
			"Migration.get_by_id", "Migration.save status=cancelled",
			"Instance.get_by_uuid", "notify notifications envelope=true compute.src compute.instance.live.migration.abort.end",
			"event_finish ferry_live_migration"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, ports := companionFixture(t, false)
			st, _ := decodeState(f.m.State)
			st.Instance.Data["flavor"] = mustJSON(mustObject("Flavor", "1.2", map[string]any{"name": "m1", "flavorid": "1",
				"memory_mb": 3072, "vcpus": 1, "root_gb": 1, "ephemeral_gb": 0}))
			f.m.State, _ = st.encode()
			n := &fakeNotifier{nova: f.nova}
			f.b.o.Notify = &NotifyOptions{Notifier: n, Drivers: []string{"messagingv2", "noop"}, Topics: []string{"notifications"},
				VersionedTopics: []string{"versioned_notifications"}, Format: "unversioned"}
			seenPorts := 0
			for _, name := range f.b.Reports(f.m, tt.from, tt.to) {
				if name == repCleanupSrc {
					continue
				}
				if err := f.deliver(t, name, tt.to, "r"); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if strings.HasPrefix(name, "placement") {
					f.nova.add("placement: " + f.placement.done[len(f.placement.done)-1])
				}
				for ; seenPorts < len(ports.calls); seenPorts++ {
					f.nova.add(ports.calls[seenPorts])
				}
			}
			if diff := cmp.Diff(tt.want, f.nova.entries("")); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	// Without a driver (oslo's default) or outside companion mode: none.
	f, _ := companionFixture(t, false)
	f.b.o.Notify = &NotifyOptions{Drivers: []string{"noop"}, Format: "both"}
	if got := f.b.Reports(f.m, migration.PhaseRunning, migration.PhaseCompleted); slices.Contains(got, repNotePostStart) {
		t.Errorf("noop driver: reports %v", got)
	}
	f.b.o.Notify.Drivers, f.b.o.Companion = []string{"messaging"}, false
	if got := f.b.Reports(f.m, migration.PhaseRunning, migration.PhaseCompleted); slices.Contains(got, repNotePostStart) {
		t.Errorf("native mode: reports %v", got)
	}
}

// An outage is an error the engine retries (the report stays owed); the
// same report built again later carries the same ids and timestamp.
func TestNotificationRetried(t *testing.T) {
	f, _ := companionFixture(t, false)
	st, _ := decodeState(f.m.State)
	st.Instance.Data["flavor"] = mustJSON(mustObject("Flavor", "1.2", map[string]any{"name": "m1", "root_gb": 1, "ephemeral_gb": 0}))
	f.m.State, _ = st.encode()
	n := &fakeNotifier{nova: f.nova, err: fmt.Errorf("down: %w", errdefs.ErrUnavailable)}
	f.b.o.Notify = &NotifyOptions{Notifier: n, Drivers: []string{"messaging"}, Topics: []string{"notifications"}, Format: "unversioned"}
	r := migration.Report{Seq: 4, Name: repNotePostStart, Phase: migration.PhaseCompleted, Owed: time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC)}
	if err := f.b.Deliver(t.Context(), f.m, r); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Deliver during an outage: %v, want ErrUnavailable", err)
	}
	n.err = nil
	for range 2 {
		if err := f.b.Deliver(t.Context(), f.m, r); err != nil {
			t.Fatal(err)
		}
	}
	if len(n.sent) != 2 || n.sent[0].MessageID != n.sent[1].MessageID || n.sent[0].UniqueID != n.sent[1].UniqueID ||
		!n.sent[0].Timestamp.Equal(r.Owed) {
		t.Errorf("re-sends %+v: want the same ids, stamped with the report's time", n.sent)
	}
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
