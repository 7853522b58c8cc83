package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
)

type sourceFixture struct {
	s         *Source
	nova      *fakeNova
	local     *fakeLibvirt
	engine    *fakeEngine
	instances string
	inst, mig *Object
}

func newSourceFixture(t *testing.T, peers map[string]Peer) *sourceFixture {
	f := &sourceFixture{nova: newFakeNova(), local: newFakeLibvirt(), engine: &fakeEngine{}, instances: t.TempDir()}
	f.inst, f.mig = f.nova.seed("src", "dst")
	log, _ := testLog(t)
	f.s = NewSource(SourceOptions{Host: "src", InstancesPath: f.instances, Bandwidth: 50, Parallel: 1,
		Policy: migration.Policy{DowntimeBudget: time.Second}, CompletionPerGiB: 800 * time.Second, Log: log},
		Peers{Host: "src", Scheme: "tcp", Configured: peers}, f.local.open, NewConductor(f.nova), f.engine)
	return f
}

// guest defines the test instance on the source with a 64 MiB qcow2 disk
// and a config drive.
func (f *sourceFixture) guest(t *testing.T) {
	t.Helper()
	dir := filepath.Join(f.instances, instUUID)
	os.MkdirAll(dir, 0o755)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "disk"), "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	os.WriteFile(filepath.Join(dir, "disk.config"), []byte("cfg"), 0o600)
	f.local.define(instUUID, guestXML(instUUID, f.instances))
}

func liveArgs(inst, mig *Object, dest string) map[string]any {
	md := migrateData(map[string]any{"is_shared_instance_path": false, "block_migration": true, "is_shared_block_storage": false})
	return map[string]any{"instance": inst, "migration": mig, "migrate_data": md, "dest": dest, "block_migration": true}
}

func TestLiveMigration(t *testing.T) {
	t.Run("starts the engine with the planned request", func(t *testing.T) {
		f := newSourceFixture(t, map[string]Peer{"dst": {Management: "198.18.0.12", LibvirtURI: "qemu+unix:///x"}})
		f.guest(t)
		if _, err := f.s.liveMigration(context.Background(), request(t, "live_migration", liveArgs(f.inst, f.mig, "dst"))); err != nil {
			t.Fatal(err)
		}
		if len(f.engine.started) != 1 || len(f.engine.refused) != 0 {
			t.Fatalf("started %v refused %v", f.engine.started, f.engine.refused)
		}
		r := f.engine.started[0]
		want := migration.Request{ID: migUUID, InstanceUUID: instUUID, RequestID: "req-test", Dest: hostnet.Dest{Host: "dst", Mgmt: "198.18.0.12", Scheme: "tcp"},
			DestCheckURI: "qemu+unix:///x", Job: migration.Job{Disks: []string{"vda"}, Bandwidth: 50, Parallel: 1},
			// 3 GiB of RAM, and the 64 MiB disk counted as 2 GiB, as Nova does.
			Policy: migration.Policy{DowntimeBudget: time.Second, CompletionTimeout: 5 * 800 * time.Second}}
		if diff := cmp.Diff(want, r, cmpIgnoreState); diff != "" {
			t.Errorf("request (-want +got):\n%s", diff)
		}
		st, err := decodeState(r.State)
		if err != nil || st.NovaID != 12 || st.Disk == nil || !strings.Contains(*st.Disk, `"virt_disk_size":67108864`) {
			t.Fatalf("state %+v %v", st, err)
		}
		if strings.Contains(string(r.State), "gAAAA") {
			t.Error("the request context's token is journalled")
		}
		// The token stays with the request in memory, for the calls made
		// on its behalf (a stock destination fetches images with it), and
		// never reaches the journal's encoding.
		if !strings.Contains(string(r.Credentials), "gAAAA") {
			t.Errorf("the request's credentials lack the token: %s", r.Credentials)
		}
		if b, _ := json.Marshal(migration.Migration{Request: r}); strings.Contains(string(b), "gAAAA") {
			t.Error("a migration's encoding carries the token")
		}
		if c := callContext(migration.Migration{Request: r}, st); c.Str("auth_token") == "" {
			t.Error("the calls made for the request carry no token")
		}
		if c := callContext(migration.Migration{Request: migration.Request{State: r.State}}, st); c.Str("auth_token") != "" {
			t.Error("a resumed migration's calls carry a token")
		}
	})
	refusals := []struct {
		name   string
		args   func(f *sourceFixture) map[string]any
		setup  func(f *sourceFixture)
		reason string
	}{
		{name: "the guest is not on this host", args: func(f *sourceFixture) map[string]any { return liveArgs(f.inst, f.mig, "dst") },
			reason: "guest not found on this host"},
		{name: "libvirt unreachable", args: func(f *sourceFixture) map[string]any { return liveArgs(f.inst, f.mig, "dst") },
			setup: func(f *sourceFixture) { f.local.err = errors.New("dial: connection refused") }, reason: "connection refused"},
		{name: "libvirt times out", args: func(f *sourceFixture) map[string]any { return liveArgs(f.inst, f.mig, "dst") },
			setup: func(f *sourceFixture) {
				f.local.err = fmt.Errorf("domain xml: %w: no answer within 10s", errdefs.ErrTimeout)
			}, reason: "no answer within 10s"},
		{name: "no destination", args: func(f *sourceFixture) map[string]any { return liveArgs(f.inst, f.mig, "") },
			reason: "no destination host"},
		{name: "a destination Nova's records do not name", args: func(f *sourceFixture) map[string]any {
			return liveArgs(f.inst, f.mig, "evil.example")
		}, reason: `"evil.example" is not a configured peer and Nova's records name "dst"`},
		{name: "the conductor is unreachable to verify the destination", args: func(f *sourceFixture) map[string]any {
			return liveArgs(f.inst, f.mig, "dst")
		}, setup: func(f *sourceFixture) {
			f.nova.fail = func(string) error { return errdefs.ErrUnavailable }
		}, reason: "verify the destination"},
		{name: "shared storage unknown", args: func(f *sourceFixture) map[string]any {
			a := liveArgs(f.inst, f.mig, "dst")
			a["migrate_data"] = migrateData(map[string]any{})
			return a
		}, reason: "is_shared_instance_path: invalid argument: missing"},
		{name: "its disk cannot be read (qemu-img)", args: func(f *sourceFixture) map[string]any { return liveArgs(f.inst, f.mig, "dst") },
			setup: func(f *sourceFixture) { f.local.define(instUUID, guestXML(instUUID, f.instances)) }, reason: "qemu-img"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			f := newSourceFixture(t, nil)
			if tt.setup != nil {
				tt.setup(f)
			}
			if _, err := f.s.liveMigration(context.Background(), request(t, "live_migration", tt.args(f))); err != nil {
				t.Fatalf("the cast failed instead of recording the refusal: %v", err)
			}
			if len(f.engine.started) != 0 || !strings.Contains(f.engine.refused[migUUID], tt.reason) {
				t.Errorf("refused %q, want the reason %q (started %v)", f.engine.refused[migUUID], tt.reason, f.engine.started)
			}
		})
	}
	t.Run("without the ids Nova could be told nothing: the cast fails with the reason", func(t *testing.T) {
		f := newSourceFixture(t, nil)
		for name, mutate := range map[string]func(a map[string]any){
			"instance uuid 42": func(a map[string]any) { a["instance"] = instance(map[string]any{"uuid": 42}) },
			"migration uuid ../x": func(a map[string]any) {
				a["migration"] = mustObject("Migration", "1.7", map[string]any{"uuid": "../x", "id": 12})
			},
			"migration id missing": func(a map[string]any) {
				a["migration"] = mustObject("Migration", "1.7", map[string]any{"uuid": migUUID})
			},
			"no migration": func(a map[string]any) { delete(a, "migration") },
		} {
			a := liveArgs(f.inst, f.mig, "dst")
			mutate(a)
			if _, err := f.s.liveMigration(context.Background(), request(t, "live_migration", a)); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%s: %v", name, err)
			}
		}
		if len(f.engine.started)+len(f.engine.refused) != 0 {
			t.Errorf("the engine was asked anyway: %v %v", f.engine.started, f.engine.refused)
		}
	})
}

var cmpIgnoreState = cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".State" || p.Last().String() == ".Credentials" }, cmp.Ignore())

func TestCheckSource(t *testing.T) {
	check := func(f *sourceFixture, data map[string]any) (any, error) {
		return f.s.checkSource(context.Background(), request(t, "check_can_live_migrate_source", map[string]any{
			"instance": f.inst, "dest_check_data": migrateData(data)}))
	}
	f := newSourceFixture(t, nil)
	if _, err := check(f, map[string]any{}); Failure(err).Class != "MigrationPreCheckError" || !strings.Contains(err.Error(), "not running on src") {
		t.Errorf("no guest: %v", err)
	}
	f.guest(t)
	res, err := check(f, map[string]any{"filename": "ferry-shared-check-1", "disk_available_mb": 10240})
	if err != nil {
		t.Fatal(err)
	}
	md := res.(*Object)
	if b, _ := Need[bool](md, "block_migration"); !b {
		t.Errorf("block_migration not chosen for unshared storage: %v", md.Data)
	}
	if _, err := check(f, map[string]any{"disk_available_mb": 10}); !strings.Contains(err.Error(), "disks need 64 MiB, the destination has 10 MiB") {
		t.Errorf("disk space: %v", err)
	}
	for _, bad := range []string{"../../etc/passwd", "a/b", "..", "/etc/passwd"} {
		if _, err := check(f, map[string]any{"filename": bad}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("filename %q: %v", bad, err)
		}
	}
	if _, err := check(f, map[string]any{"block_migration": "yes"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("mistyped block_migration: %v", err)
	}
	withPort := f.inst.fresh()
	withPort.Set("info_cache", mustObject("InstanceInfoCache", "1.5", map[string]any{"network_info": `[{"id": "port-1"}]`}))
	f.inst = withPort
	if _, err := check(f, map[string]any{}); !strings.Contains(err.Error(), "Neutron ports (port-1)") {
		t.Errorf("ports: %v", err)
	}
}

func TestAbortAndForceComplete(t *testing.T) {
	f := newSourceFixture(t, nil)
	st := &State{Instance: f.inst, Migration: f.mig, NovaID: 12}
	b, _ := st.encode()
	f.engine.list = []migration.Migration{{Request: migration.Request{ID: migUUID, InstanceUUID: instUUID, State: b}, Phase: migration.PhaseRunning}}
	ctx := context.Background()
	if _, err := f.s.abort(ctx, request(t, "live_migration_abort", map[string]any{"instance": f.inst, "migration_id": 12})); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.forceComplete(ctx, request(t, "live_migration_force_complete", map[string]any{"instance": f.inst, "migration": f.mig})); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"abort " + migUUID, "force-complete " + migUUID}, f.engine.commands); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
	for name, id := range map[string]any{"missing": nil, "a string": "12", "zero": 0} {
		args := map[string]any{"instance": f.inst}
		if id != nil {
			args["migration_id"] = id
		}
		if _, err := f.s.abort(ctx, request(t, "live_migration_abort", args)); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("migration_id %s: %v", name, err)
		}
	}
	if _, err := f.s.abort(ctx, request(t, "live_migration_abort", map[string]any{"instance": f.inst, "migration_id": 99})); Failure(err).Class != "InvalidMigrationState" {
		t.Errorf("unknown migration id: %v", err)
	}
	f.engine.list = nil
	if _, err := f.s.forceComplete(ctx, request(t, "live_migration_force_complete", map[string]any{"instance": f.inst})); Failure(err).Class != "NoActiveMigrationForInstance" {
		t.Errorf("force-complete of nothing: %v", err)
	}
}

// Nova's completion timeout counts the RAM and each copied disk at their
// size, each at least 2 GiB (issue 12, item 6).
func TestCompletionGiB(t *testing.T) {
	inst := func(memMB int64) *Object {
		return mustObject("Instance", "2.7", map[string]any{"flavor": map[string]any{"nova_object.name": "Flavor",
			"nova_object.namespace": "nova", "nova_object.version": "1.2", "nova_object.data": map[string]any{"memory_mb": memMB}}})
	}
	for _, tt := range []struct {
		name  string
		memMB int64
		disks []int64 // actual sizes
		want  int64
	}{
		{"no disk copied, small RAM", 512, nil, 2},
		{"3 GiB RAM, a 64 MiB disk counted as 2 GiB", 3072, []int64{64 << 20}, 5},
		{"a 5 GiB disk counts 5", 3072, []int64{5 << 30}, 8},
		{"two disks, one large", 4096, []int64{1 << 30, 10 << 30}, 16},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var imgs []disks.Image
			for _, s := range tt.disks {
				imgs = append(imgs, disks.Image{ActualSize: s, VirtualSize: s})
			}
			if got := completionGiB(inst(tt.memMB), imgs); got != tt.want {
				t.Errorf("completionGiB = %d, want %d", got, tt.want)
			}
		})
	}
}
