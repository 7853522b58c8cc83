package nova

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

type bookFixture struct {
	b         *Bookkeeper
	nova      *fakeNova
	local     *fakeLibvirt
	placement *fakePlacement
	instances string
	m         migration.Migration
}

func newBookFixture(t *testing.T, shared bool) *bookFixture {
	f := &bookFixture{nova: newFakeNova(), local: newFakeLibvirt(), placement: &fakePlacement{}, instances: t.TempDir()}
	inst, mig := f.nova.seed("src", "dst")
	log, _ := testLog(t)
	f.b = NewBookkeeper(BookOptions{Host: "src", InstancesPath: f.instances, Log: log}, NewConductor(f.nova),
		NewComputes(f.nova, 0, 0), f.placement, f.local.open)
	st := &State{Instance: inst, Migration: mig, NovaID: 12, Context: AdminContext(),
		MigrateData: mustObject("LibvirtLiveMigrateData", "1.10", map[string]any{"is_shared_instance_path": shared, "is_shared_block_storage": false})}
	b, _ := st.encode()
	f.m = migration.Migration{Request: migration.Request{ID: migUUID, InstanceUUID: instUUID, Dest: hostnet.Dest{Host: "dst"},
		Job: migration.Job{Disks: []string{"vda"}}, State: b}}
	return f
}

func (f *bookFixture) deliver(t *testing.T, name string, p migration.Phase, reason string) error {
	t.Helper()
	return f.b.Deliver(context.Background(), f.m, migration.Report{Name: name, Phase: p, Reason: reason})
}

// Every report of each move, delivered in order to the fake conductor,
// leaves what nova-compute leaves, in Zed's order.
func TestReportsInNovasOrder(t *testing.T) {
	tests := []struct {
		name     string
		from, to migration.Phase
		reason   string
		want     []string
	}{
		{"queued", migration.PhaseNew, migration.PhaseQueued, "", []string{
			"event_start compute_live_migration", "Migration.get_by_id", "Migration.save status=queued",
			"event_finish compute_live_migration", "event_start ferry_live_migration"}},
		{"refused before it was queued", migration.PhaseNew, migration.PhaseError, "instance not found", []string{
			"event_start compute_live_migration", "InstanceFault.create code=500 details= host=src instance_uuid=" + instUUID + " message=instance not found",
			"placement: revert " + migUUID + " to " + instUUID, "Instance.save progress=0 task_state=<nil>",
			"Migration.get_by_id", "Migration.save status=error", "event_finish compute_live_migration failed: instance not found"}},
		{"completed", migration.PhaseRunning, migration.PhaseCompleted, "", []string{
			"call dst post_live_migration_at_destination", "Migration.get_by_id", "Migration.save status=completed",
			"placement: release " + migUUID, "event_finish ferry_live_migration"}},
		{"failed", migration.PhaseRunning, migration.PhaseFailed, "transport stall: no bytes for 30s", []string{
			"placement: revert " + migUUID + " to " + instUUID, "cast dst rollback_live_migration_at_destination destroy_disks=true",
			"Instance.save progress=0 task_state=<nil>", "Migration.get_by_id", "Migration.save status=failed",
			"event_finish ferry_live_migration failed: transport stall: no bytes for 30s"}},
		{"cancelled while queued", migration.PhaseQueued, migration.PhaseCancelled, "aborted while queued", []string{
			"placement: revert " + migUUID + " to " + instUUID, "Instance.save progress=0 task_state=<nil>",
			"Migration.get_by_id", "Migration.save status=cancelled", "event_finish ferry_live_migration"}},
		{"error", migration.PhasePostCopy, migration.PhaseError, "the guest's memory is split", []string{
			"Instance.save task_state=<nil> vm_state=error", "InstanceFault.create code=500 details= host=src instance_uuid=" + instUUID + " message=the guest's memory is split",
			"Migration.get_by_id", "Migration.save status=error", "event_finish ferry_live_migration failed: the guest's memory is split"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newBookFixture(t, false)
			for _, name := range f.b.Reports(f.m, tt.from, tt.to) {
				if err := f.deliver(t, name, tt.to, tt.reason); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if strings.HasPrefix(name, "placement") {
					f.nova.add("placement: " + f.placement.done[len(f.placement.done)-1])
				}
			}
			var got []string
			for _, e := range f.nova.entries("") {
				if !strings.HasPrefix(e, "call dst") || strings.Contains(e, "post_live") {
					got = append(got, e)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeliverAlreadyApplied(t *testing.T) {
	t.Run("a status Nova has already is not sent again", func(t *testing.T) {
		f := newBookFixture(t, false)
		f.nova.migrations[12]["status"] = "running"
		if err := f.deliver(t, repStatus, migration.PhaseRunning, ""); err != nil {
			t.Fatal(err)
		}
		if err := f.deliver(t, repStatus, migration.PhasePreparing, ""); err != nil {
			t.Fatal(err)
		}
		if saves := f.nova.entries("Migration.save"); len(saves) != 0 {
			t.Errorf("saved %v", saves)
		}
	})
	t.Run("a status nova-compute ended otherwise is left", func(t *testing.T) {
		f := newBookFixture(t, false)
		f.nova.migrations[12]["status"] = "error"
		if err := f.deliver(t, repStatus, migration.PhaseCompleted, ""); !errors.Is(err, migration.ErrSkipped) {
			t.Errorf("= %v, want skipped", err)
		}
	})
	t.Run("a task state cleared before counts as delivered", func(t *testing.T) {
		f := newBookFixture(t, false)
		f.nova.instances[instUUID]["task_state"] = nil
		if err := f.deliver(t, repClearTask, migration.PhaseFailed, ""); err != nil {
			t.Errorf("re-sent clear: %v", err)
		}
		f.nova.instances[instUUID]["task_state"] = "rebooting"
		if err := f.deliver(t, repClearTask, migration.PhaseFailed, ""); !errors.Is(err, migration.ErrSkipped) {
			t.Errorf("when someone else set another task: %v", err)
		}
	})
	t.Run("a conductor that does not answer is retried", func(t *testing.T) {
		f := newBookFixture(t, false)
		f.nova.fail = func(string) error { return oslo.ErrTimeout }
		if err := f.deliver(t, repStatus, migration.PhaseRunning, ""); err == nil || errors.Is(err, migration.ErrSkipped) {
			t.Errorf("= %v, want an error to retry", err)
		}
	})
	t.Run("no placement configured: skipped, said", func(t *testing.T) {
		f := newBookFixture(t, false)
		f.b.placement = nil
		if err := f.deliver(t, repRelease, migration.PhaseCompleted, ""); !errors.Is(err, migration.ErrSkipped) || !strings.Contains(err.Error(), "left to an operator") {
			t.Errorf("= %v", err)
		}
	})
}

func TestCleanupSource(t *testing.T) {
	setup := func(t *testing.T, shared bool) (*bookFixture, string) {
		f := newBookFixture(t, shared)
		dir := filepath.Join(f.instances, instUUID)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "disk"), nil, 0o600)
		return f, dir
	}
	f, dir := setup(t, false)
	if err := f.deliver(t, repCleanupSrc, migration.PhaseCompleted, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the source's directory stays (%v)", err)
	}
	f, dir = setup(t, false)
	f.local.err = errors.New("connection refused")
	if err := f.deliver(t, repCleanupSrc, migration.PhaseCompleted, ""); err == nil || errors.Is(err, migration.ErrSkipped) {
		t.Errorf("libvirt unreachable: %v, want an error to retry", err)
	}
	f.local.err = nil
	f.local.define(instUUID, "<domain/>")
	if err := f.deliver(t, repCleanupSrc, migration.PhaseCompleted, ""); !errors.Is(err, migration.ErrSkipped) {
		t.Errorf("the guest still defined here: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "disk")); err != nil {
		t.Errorf("files removed: %v", err)
	}
	f, dir = setup(t, true)
	if err := f.deliver(t, repCleanupSrc, migration.PhaseCompleted, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "disk")); err != nil {
		t.Errorf("a shared instance path was cleaned: %v", err)
	}
	// A journal without migrate_data (unknown sharing) keeps the files.
	f, dir = setup(t, false)
	st, _ := decodeState(f.m.State)
	st.MigrateData = nil
	f.m.State, _ = st.encode()
	if err := f.deliver(t, repCleanupSrc, migration.PhaseCompleted, ""); !errors.Is(err, migration.ErrSkipped) {
		t.Errorf("unknown sharing: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "disk")); err != nil {
		t.Errorf("files removed: %v", err)
	}
}

func TestPrepareCopyMode(t *testing.T) {
	overlay := `[{"type":"qcow2","path":"/i/u/disk","virt_disk_size":1,"backing_file":"base1","disk_size":1,"over_committed_disk_size":0}]`
	flat := `[{"type":"qcow2","path":"/i/u/disk","virt_disk_size":1,"backing_file":"","disk_size":1,"over_committed_disk_size":0}]`
	tests := []struct {
		name      string
		haveBases bool
		flatDisk  *string // nil: the source offered no incremental copy
		why       string
		wantCopy  virt.DiskCopy
		wantCalls []string
		wantNote  string
	}{
		{name: "the destination has the base: incremental", haveBases: true, flatDisk: &flat,
			wantCopy: virt.CopyIncremental, wantCalls: []string{overlay}, wantNote: "incremental"},
		{name: "the destination lacks the base: asked again flat, full copy", flatDisk: &flat,
			wantCopy: virt.CopyFull, wantCalls: []string{overlay, flat}, wantNote: "full: the destination refused the overlays"},
		{name: "nothing to offer: one call, full copy with the source's reason", why: "no copied disk has a backing file",
			wantCopy: virt.CopyFull, wantCalls: []string{flat}, wantNote: "full: no copied disk has a backing file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newBookFixture(t, false)
			var disksSent []string
			f.nova.computes = func(host, method string, args map[string]any) (json.RawMessage, error) {
				disk, _ := args["disk"].(string)
				disksSent = append(disksSent, disk)
				if keys := slices.Sorted(maps.Keys(args)); !slices.Equal(keys, []string{"disk", "instance", "migrate_data"}) {
					t.Errorf("pre_live_migration arguments %v, want compute RPC 6.0's (instance, disk, migrate_data)", keys)
				}
				if !tt.haveBases && strings.Contains(disk, `"backing_file":"base1"`) {
					return nil, &oslo.Failure{Class: "MigrationPreCheckError", Module: "nova.exception", Message: "backing files not in _base on this host: base1"}
				}
				md := NewObject("LibvirtLiveMigrateData", "1.10")
				md.Set("target_connect_addr", "198.19.0.2")
				return json.Marshal(md)
			}
			st, _ := decodeState(f.m.State)
			disk := overlay
			if tt.flatDisk == nil {
				disk = flat
			}
			st.Disk, st.FlatDisk, st.CopyWhy = &disk, tt.flatDisk, tt.why
			f.m.State, _ = st.encode()
			p, err := f.b.Prepare(context.Background(), f.m)
			if err != nil {
				t.Fatal(err)
			}
			if p.Copy != tt.wantCopy || !strings.HasPrefix(p.CopyNote, tt.wantNote) || p.MigrationAddr != "198.19.0.2" {
				t.Errorf("preparation %+v, want %v %q… at 198.19.0.2", p, tt.wantCopy, tt.wantNote)
			}
			if diff := cmp.Diff(tt.wantCalls, disksSent); diff != "" {
				t.Errorf("pre_live_migration disk arguments (-want +got):\n%s", diff)
			}
			saved, err := decodeState(p.State)
			if err != nil || *saved.Disk != disksSent[len(disksSent)-1] {
				t.Errorf("journalled disk %v, want the one the destination accepted", saved.Disk)
			}
			if addr, _ := Need[string](saved.MigrateData, "target_connect_addr"); addr != "198.19.0.2" {
				t.Errorf("the destination's migrate_data was not kept: %v", saved.MigrateData)
			}
		})
	}
}

func TestProgress(t *testing.T) {
	f := newBookFixture(t, false)
	if err := f.b.Progress(context.Background(), f.m, virt.JobStats{MemTotal: 100, MemRemaining: 25, MemProcessed: 80}); err != nil {
		t.Fatal(err)
	}
	want := []string{"Migration.save disk_processed=0 disk_remaining=0 disk_total=0 memory_processed=80 memory_remaining=25 memory_total=100",
		"Instance.save progress=75"}
	if diff := cmp.Diff(want, f.nova.entries("")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// A journal entry written before the journal had a version keeps its
// objects and loses the token it held.
func TestUpgradeState(t *testing.T) {
	b, err := os.ReadFile("../../pkg/migration/testdata/journal-v0-running.json")
	if err != nil {
		t.Fatal(err)
	}
	var entry struct {
		Extra json.RawMessage `json:"extra"`
	}
	json.Unmarshal(b, &entry)
	var withToken map[string]any
	json.Unmarshal(entry.Extra, &withToken)
	withToken["context"].(map[string]any)["auth_token"] = "gAAAA-from-an-old-journal"
	old, _ := json.Marshal(withToken)
	up, err := UpgradeState(old)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(up), "gAAAA") {
		t.Error("the upgraded state keeps the token")
	}
	st, err := decodeState(up)
	if err != nil || st.NovaID != 901 || st.Disk == nil {
		t.Errorf("upgraded state %+v %v", st, err)
	}
}

func TestHandlerOwnership(t *testing.T) {
	called := ""
	set := map[string]oslo.HandlerFunc{
		"live_migration":     func(context.Context, *oslo.Request) (any, error) { called = "live_migration"; return nil, nil },
		"pre_live_migration": func(context.Context, *oslo.Request) (any, error) { called = "pre"; return nil, nil },
	}
	h, err := Handler([]string{"live_migration"}, nil, set)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.ServeRPC(context.Background(), request(t, "live_migration", nil)); err != nil || called != "live_migration" {
		t.Errorf("owned method: %v %q", err, called)
	}
	if _, err := h.ServeRPC(context.Background(), request(t, "pre_live_migration", nil)); Failure(err).Class != "NoSuchMethod" {
		t.Errorf("a method not owned: %v", err)
	}
	if _, err := Handler([]string{"live_migration", "no_such"}, nil, set); err == nil {
		t.Error("an owned method nothing implements was accepted")
	}
}

// The methods nova-compute decorates record their action event, with the
// failure's message when they fail.
func TestHandlerEvents(t *testing.T) {
	n := newFakeNova()
	log, _ := testLog(t)
	set := map[string]oslo.HandlerFunc{
		"pre_live_migration":   func(context.Context, *oslo.Request) (any, error) { return nil, PreCheck("disk full") },
		"live_migration_abort": func(context.Context, *oslo.Request) (any, error) { return nil, nil },
		"live_migration":       func(context.Context, *oslo.Request) (any, error) { return nil, nil },
	}
	h, err := Handler([]string{"pre_live_migration", "live_migration_abort", "live_migration"}, &Events{Host: "dst", Cond: NewConductor(n), Log: log}, set)
	if err != nil {
		t.Fatal(err)
	}
	inst := instance(map[string]any{"uuid": instUUID})
	for _, m := range []string{"pre_live_migration", "live_migration_abort", "live_migration"} {
		h.ServeRPC(context.Background(), request(t, m, map[string]any{"instance": inst}))
	}
	h.ServeRPC(context.Background(), request(t, "live_migration_abort", map[string]any{"instance": instance(map[string]any{"uuid": "../x"})}))
	want := []string{"event_start compute_pre_live_migration",
		"event_finish compute_pre_live_migration failed: Migration pre-check error: disk full",
		"event_start compute_live_migration_abort", "event_finish compute_live_migration_abort"}
	if diff := cmp.Diff(want, n.entries("event")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// In native mode a migration that never reached the destination's
// pre_live_migration frees the inbound slot its pre-check held.
func TestReleaseInbound(t *testing.T) {
	f := newBookFixture(t, false)
	f.b.o.ReleaseInbound = true
	for _, tc := range []struct {
		from, to migration.Phase
		want     bool
	}{
		{migration.PhaseQueued, migration.PhaseCancelled, true},
		{migration.PhaseNew, migration.PhaseError, true},
		{migration.PhaseRunning, migration.PhaseFailed, false}, // the rollback cast releases it
	} {
		names := f.b.Reports(f.m, tc.from, tc.to)
		if got := slices.Contains(names, repReleaseDst); got != tc.want {
			t.Errorf("%s→%s: %v", tc.from, tc.to, names)
		}
	}
	if err := f.deliver(t, repReleaseDst, migration.PhaseCancelled, ""); err != nil {
		t.Fatal(err)
	}
	if got := f.nova.entries("call"); !slices.Equal(got, []string{"call dst drop_move_claim_at_destination"}) {
		t.Errorf("calls %v", got)
	}
	shared := newBookFixture(t, true)
	shared.b.o.ReleaseInbound = true
	if err := shared.deliver(t, repRollbackDst, migration.PhaseFailed, ""); err != nil {
		t.Fatal(err)
	}
	if got := shared.nova.entries("c"); !slices.Equal(got, []string{"call dst drop_move_claim_at_destination"}) {
		t.Errorf("shared instance path: %v, want the slot released instead of a rollback", got)
	}
}

// Only a pre-check refusal of the overlays is asked again flat: any other
// failure (a stock nova-compute's TypeError after it made the instance
// directory) ends the preparation, or the second call meets that
// directory and the reason an operator reads is the wrong one.
func TestPrepareNoFlatRetryOnOtherFailures(t *testing.T) {
	overlay := `[{"type":"qcow2","path":"/i/u/disk","virt_disk_size":1,"backing_file":"base1","disk_size":1,"over_committed_disk_size":0}]`
	flat := `[{"type":"qcow2","path":"/i/u/disk","virt_disk_size":1,"backing_file":"","disk_size":1,"over_committed_disk_size":0}]`
	f := newBookFixture(t, false)
	calls := 0
	f.nova.computes = func(host, method string, args map[string]any) (json.RawMessage, error) {
		calls++
		return nil, &oslo.Failure{Class: "TypeError", Module: "builtins", Message: "'NoneType' object does not support item assignment"}
	}
	st, _ := decodeState(f.m.State)
	st.Disk, st.FlatDisk = &overlay, &flat
	f.m.State, _ = st.encode()
	if _, err := f.b.Prepare(context.Background(), f.m); err == nil || !strings.Contains(err.Error(), "NoneType") {
		t.Errorf("Prepare: %v, want the destination's TypeError", err)
	}
	if calls != 1 {
		t.Errorf("pre_live_migration called %d times, want 1", calls)
	}
}
