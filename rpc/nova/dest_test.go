package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/qemuimg"
	"opendev.org/x/ferry/rpc/oslo"
)

type destFixture struct {
	d         *Destination
	nova      *fakeNova
	local     *fakeLibvirt
	source    *fakeLibvirt // the source host's libvirt, as dialled
	instances string
	logs      *logs
}

func newDestFixture(t *testing.T, peers map[string]Peer) *destFixture {
	f := &destFixture{nova: newFakeNova(), local: newFakeLibvirt(), source: newFakeLibvirt(), instances: t.TempDir()}
	log, out := testLog(t)
	f.logs = out
	d, err := NewDestination(DestOptions{Host: "dst", InstancesPath: f.instances, InboundAddr: "198.19.0.12", StateDir: t.TempDir(),
		Log: log}, Peers{Host: "dst", Scheme: "tcp", Configured: peers}, f.local.open, f.source.dial,
		NewComputes(f.nova, 0, 0), NewConductor(f.nova))
	if err != nil {
		t.Fatal(err)
	}
	f.d = d
	return f
}

func instance(data map[string]any) map[string]any {
	return map[string]any{"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.version": "2.7",
		"nova_object.data": data}
}

func migrateData(data map[string]any) map[string]any {
	return map[string]any{"nova_object.name": "LibvirtLiveMigrateData", "nova_object.namespace": "nova",
		"nova_object.version": "1.10", "nova_object.data": data}
}

// prepared makes an instance directory the way pre_live_migration leaves it.
func (f *destFixture) prepared(t *testing.T, uuid string) string {
	t.Helper()
	dir := filepath.Join(f.instances, uuid)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, preparedMark), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "disk"), []byte("data"), 0o600)
	return dir
}

// Every hostile rollback leaves every file in place and says why; only
// the directory ferry prepared for a guest not defined here goes.
func TestRollbackAtDestination(t *testing.T) {
	notShared := migrateData(map[string]any{"is_shared_instance_path": false})
	tests := []struct {
		name    string
		args    map[string]any
		setup   func(f *destFixture)
		wantErr bool   // malformed: the cast fails with the reason (rpc/oslo logs it)
		logHas  string // otherwise the warning says why nothing was removed
		removed bool
	}{
		{name: "an empty Instance", args: map[string]any{"instance": instance(map[string]any{}), "destroy_disks": true, "migrate_data": notShared},
			wantErr: true},
		{name: "uuid 42", args: map[string]any{"instance": instance(map[string]any{"uuid": 42}), "destroy_disks": true, "migrate_data": notShared},
			wantErr: true},
		{name: "uuid ../victim", args: map[string]any{"instance": instance(map[string]any{"uuid": "../victim"}), "destroy_disks": true,
			"migrate_data": notShared}, wantErr: true},
		{name: "uuid empty string", args: map[string]any{"instance": instance(map[string]any{"uuid": ""}), "destroy_disks": true,
			"migrate_data": notShared}, wantErr: true},
		{name: "libvirt unreachable", args: map[string]any{"instance": instance(map[string]any{"uuid": otherUID}), "destroy_disks": true,
			"migrate_data": notShared}, setup: func(f *destFixture) { f.local.err = errors.New("dial: connection refused") },
			logHas: "libvirt did not say whether the guest is defined here"},
		{name: "the guest is defined here", args: map[string]any{"instance": instance(map[string]any{"uuid": otherUID}), "destroy_disks": true,
			"migrate_data": notShared}, setup: func(f *destFixture) { f.local.define(otherUID, "<domain/>") },
			logHas: "is defined on this host"},
		{name: "destroy_disks false", args: map[string]any{"instance": instance(map[string]any{"uuid": otherUID}), "destroy_disks": false,
			"migrate_data": notShared}, logHas: "destroy_disks is not true"},
		{name: "destroy_disks missing", args: map[string]any{"instance": instance(map[string]any{"uuid": otherUID}), "migrate_data": notShared},
			logHas: "destroy_disks is not true"},
		{name: "no migrate_data", args: map[string]any{"instance": instance(map[string]any{"uuid": otherUID}), "destroy_disks": true},
			logHas: "whether the instance path is shared is unknown"},
		{name: "migrate_data not an object", args: map[string]any{"instance": instance(map[string]any{"uuid": otherUID}), "destroy_disks": true,
			"migrate_data": "x"}, logHas: "whether the instance path is shared is unknown"},
		{name: "is_shared_instance_path missing", args: map[string]any{"instance": instance(map[string]any{"uuid": otherUID}),
			"destroy_disks": true, "migrate_data": migrateData(map[string]any{})}, logHas: "whether the instance path is shared is unknown"},
		{name: "is_shared_instance_path mistyped", args: map[string]any{"instance": instance(map[string]any{"uuid": otherUID}),
			"destroy_disks": true, "migrate_data": migrateData(map[string]any{"is_shared_instance_path": "no"})},
			logHas: "whether the instance path is shared is unknown"},
		{name: "not prepared by ferry", args: map[string]any{"instance": instance(map[string]any{"uuid": otherUID}), "destroy_disks": true,
			"migrate_data": notShared}, setup: func(f *destFixture) { os.Remove(filepath.Join(f.instances, otherUID, preparedMark)) },
			logHas: "was not created by ferry's pre_live_migration"},
		{name: "a symbolic link", args: map[string]any{"instance": instance(map[string]any{"uuid": instUUID}), "destroy_disks": true,
			"migrate_data": notShared}, setup: func(f *destFixture) {
			os.Symlink(filepath.Join(f.instances, otherUID), filepath.Join(f.instances, instUUID))
		}, logHas: "is a symbolic link"},
		{name: "prepared here, guest not defined: removed", args: map[string]any{"instance": instance(map[string]any{"uuid": otherUID}),
			"destroy_disks": true, "migrate_data": notShared}, removed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newDestFixture(t, nil)
			f.prepared(t, otherUID)
			outside := filepath.Join(filepath.Dir(f.instances), filepath.Base(f.instances)+"-victim")
			os.MkdirAll(outside, 0o755)
			os.WriteFile(filepath.Join(outside, "keep"), nil, 0o600)
			defer os.RemoveAll(outside)
			if tt.setup != nil {
				tt.setup(f)
			}
			before := tree(t, f.instances)
			_, err := f.d.rollbackAtDestination(context.Background(), request(t, "rollback_live_migration_at_destination", tt.args))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("err = %v, want an invalid-argument error naming the uuid", err)
			}
			if tt.logHas != "" && !strings.Contains(f.logs.String(), tt.logHas) {
				t.Errorf("log does not say %q:\n%s", tt.logHas, f.logs.String())
			}
			for _, l := range strings.Split(strings.TrimSpace(f.logs.String()), "\n") {
				if l != "" && !strings.Contains(l, "request_id=req-test") {
					t.Errorf("a log line without the request's id: %s", l)
				}
				if strings.Contains(l, "gAAAA") {
					t.Errorf("a log line with the token: %s", l)
				}
			}
			after := tree(t, f.instances)
			if tt.removed {
				if _, err := os.Stat(filepath.Join(f.instances, otherUID)); !os.IsNotExist(err) {
					t.Errorf("the prepared directory is still there (%v)", err)
				}
			} else if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("files changed (-before +after):\n%s", diff)
			}
			if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
				t.Errorf("a file beside the instances path went: %v", err)
			}
		})
	}
}

func preArgs(uuid string, md map[string]any, disk any) map[string]any {
	return map[string]any{"instance": instance(map[string]any{"uuid": uuid, "host": "src"}), "migrate_data": md,
		"disk": disk, "block_migration": true}
}

func TestPreLiveMigration(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatalf("qemu-img is needed (integration/deps.sh installs qemu-utils): %v", err)
	}
	block := migrateData(map[string]any{"is_shared_instance_path": false, "block_migration": true, "is_shared_block_storage": false})
	disk := func(instances, uuid, name string) string {
		b, _ := json.Marshal([]diskEntry{{Type: "qcow2", Path: filepath.Join(instances, uuid, name), VirtualSize: 1 << 20}})
		return string(b)
	}
	peers := map[string]Peer{"src": {LibvirtURI: "qemu+tcp://src/system"}}

	t.Run("creates the directory, its disks and the config drive", func(t *testing.T) {
		f := newDestFixture(t, peers)
		f.source.define(instUUID, guestXML(instUUID, f.instances))
		f.source.files["hdd"] = []byte("config drive")
		res, err := f.d.preLiveMigration(context.Background(), request(t, "pre_live_migration", preArgs(instUUID, block, disk(f.instances, instUUID, "disk"))))
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(f.instances, instUUID)
		got := tree(t, dir)
		if diff := cmp.Diff([]string{"", "/" + preparedMark, "/disk", "/disk.config"}, got); diff != "" {
			t.Errorf("instance directory (-want +got):\n%s", diff)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "disk.config")); string(b) != "config drive" {
			t.Errorf("config drive %q", b)
		}
		md := res.(*Object)
		if addr, _ := Need[string](md, "target_connect_addr"); addr != "198.19.0.12" {
			t.Errorf("target_connect_addr %q", addr)
		}
		if diff := cmp.Diff([]string{"qemu+tcp://src/system"}, f.source.dials); diff != "" {
			t.Errorf("dialled (-want +got):\n%s", diff)
		}
		// The flat retry of the same migration finds its own directory.
		if _, err := f.d.preLiveMigration(context.Background(), request(t, "pre_live_migration", preArgs(instUUID, block, disk(f.instances, instUUID, "disk")))); err != nil {
			t.Errorf("second pre_live_migration of the same instance: %v", err)
		}
	})

	hostile := []struct {
		name  string
		args  func(f *destFixture) map[string]any
		setup func(f *destFixture)
		class string // nova.exception class of the answer, "" for any error
	}{
		{name: "uuid ../escaped/x", args: func(f *destFixture) map[string]any { return preArgs("../escaped/x", block, nil) }},
		{name: "uuid missing", args: func(f *destFixture) map[string]any {
			return map[string]any{"instance": instance(map[string]any{"host": "src"}), "migrate_data": block}
		}},
		{name: "shared storage unknown", args: func(f *destFixture) map[string]any {
			return preArgs(instUUID, migrateData(map[string]any{"block_migration": true}), nil)
		}},
		{name: "a disk in another instance's directory", args: func(f *destFixture) map[string]any {
			return preArgs(instUUID, block, disk(f.instances, otherUID, "disk"))
		}, class: "MigrationPreCheckError"},
		{name: "a disk beside the instances path", args: func(f *destFixture) map[string]any {
			return preArgs(instUUID, block, disk(f.instances, "..", "victim"))
		}, class: "MigrationPreCheckError"},
		{name: "the directory exists (not ferry's)", args: func(f *destFixture) map[string]any {
			return preArgs(otherUID, block, nil)
		}, setup: func(f *destFixture) {
			os.MkdirAll(filepath.Join(f.instances, otherUID), 0o755)
			os.WriteFile(filepath.Join(f.instances, otherUID, "disk"), []byte("live"), 0o600)
		}, class: "DestinationDiskExists"},
		{name: "the guest is defined here", args: func(f *destFixture) map[string]any { return preArgs(instUUID, block, nil) },
			setup: func(f *destFixture) { f.local.define(instUUID, "<domain/>") }, class: "MigrationPreCheckError"},
		{name: "libvirt unreachable", args: func(f *destFixture) map[string]any { return preArgs(instUUID, block, nil) },
			setup: func(f *destFixture) { f.local.err = errors.New("connection refused") }},
		{name: "the source is not a peer and Nova's records name another host", args: func(f *destFixture) map[string]any {
			a := preArgs(instUUID, block, nil)
			a["instance"] = instance(map[string]any{"uuid": instUUID, "host": "evil.example"})
			return a
		}, setup: func(f *destFixture) { f.nova.seed("src", "dst") }, class: "MigrationPreCheckError"},
	}
	for _, tt := range hostile {
		t.Run(tt.name, func(t *testing.T) {
			f := newDestFixture(t, peers)
			f.source.define(instUUID, guestXML(instUUID, f.instances))
			if tt.setup != nil {
				tt.setup(f)
			}
			parent := filepath.Dir(f.instances)
			beforeParent, before := tree(t, parent), tree(t, f.instances)
			_, err := f.d.preLiveMigration(context.Background(), request(t, "pre_live_migration", tt.args(f)))
			if err == nil {
				t.Fatal("accepted")
			}
			if tt.class != "" {
				if fl := Failure(err); fl.Class != tt.class {
					t.Errorf("answered %s (%v), want %s", fl.Class, err, tt.class)
				}
			}
			t.Logf("answer: %v", err)
			if diff := cmp.Diff(before, tree(t, f.instances)); tt.name != "uuid ../escaped/x" && diff != "" &&
				!strings.Contains(diff, instUUID+"/"+preparedMark) {
				t.Errorf("instances path changed (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(beforeParent, tree(t, parent)); strings.Contains(diff, "escaped") || strings.Contains(diff, "victim") {
				t.Errorf("something was created beside the instances path:\n%s", diff)
			}
			if _, ok := f.d.inbound.slots[instUUID]; ok {
				t.Error("the inbound slot stays taken after a refusal")
			}
			for _, dial := range f.source.dials {
				if strings.Contains(dial, "evil") {
					t.Errorf("dialled %s", dial)
				}
			}
		})
	}
}

func TestCheckDestination(t *testing.T) {
	check := func(f *destFixture, host string) (any, error) {
		return f.d.checkDestination(context.Background(), request(t, "check_can_live_migrate_destination", map[string]any{
			"instance": instance(map[string]any{"uuid": instUUID, "host": host}), "block_migration": nil, "disk_over_commit": false}))
	}
	t.Run("passes, asks the source, and holds a slot", func(t *testing.T) {
		f := newDestFixture(t, map[string]Peer{"src": {Management: "198.18.0.11"}})
		f.source.define(instUUID, guestXML(instUUID, f.instances))
		var asked map[string]any
		f.nova.computes = func(host, method string, args map[string]any) (json.RawMessage, error) {
			asked = args
			return json.RawMessage(`{"answer": "from the source"}`), nil
		}
		if _, err := check(f, "src"); err != nil {
			t.Fatal(err)
		}
		if got := f.nova.entries("call"); !cmp.Equal(got, []string{"call src check_can_live_migrate_source"}) {
			t.Errorf("calls %v", got)
		}
		dcd := asked["dest_check_data"].(map[string]any)["nova_object.data"].(map[string]any)
		if dcd["disk_over_commit"] != false || dcd["filename"] == "" {
			t.Errorf("dest_check_data %v", dcd)
		}
		if !cmp.Equal(f.source.dials, []string{"qemu+tcp://198.18.0.11/system"}) {
			t.Errorf("dialled %v", f.source.dials)
		}
		if len(f.d.inbound.slots) != 1 || f.d.Inbound() != 1 {
			t.Errorf("slots %v, Inbound() = %d", f.d.inbound.slots, f.d.Inbound())
		}
		f.d.inbound.now = func() time.Time { return time.Now().Add(time.Hour) } // the reservation lapsed
		if n := f.d.Inbound(); n != 0 {
			t.Errorf("Inbound() = %d after the reservation lapsed, want 0", n)
		}
	})
	t.Run("an unknown source is dialled only when Nova's records name it", func(t *testing.T) {
		f := newDestFixture(t, nil)
		f.nova.seed("src.example", "dst")
		f.source.define(instUUID, guestXML(instUUID, f.instances))
		if _, err := check(f, "src.example"); err != nil {
			t.Fatalf("the source Nova's records name: %v", err)
		}
		if !cmp.Equal(f.source.dials, []string{"qemu+tcp://src.example/system"}) {
			t.Errorf("dialled %v", f.source.dials)
		}
		f.source.dials = nil
		_, err := check(f, "evil.example")
		if fl := Failure(err); fl.Class != "MigrationPreCheckError" || len(f.source.dials) != 0 {
			t.Errorf("a host Nova's records do not name: %v, dialled %v", err, f.source.dials)
		}
	})
	t.Run("refusals", func(t *testing.T) {
		f := newDestFixture(t, map[string]Peer{"src": {}})
		f.source.define(instUUID, guestXML(instUUID, f.instances))
		f.local.cpu = 0 // incompatible
		if _, err := check(f, "src"); Failure(err).Class != "InvalidCPUInfo" {
			t.Errorf("CPU mismatch: %v", err)
		}
		f.local.cpu = 1
		f.source.define(instUUID, strings.Replace(guestXML(instUUID, f.instances), "/dev/null", "/dev/no-such-lun", 1))
		if _, err := check(f, "src"); Failure(err).Class != "MigrationPreCheckError" || !strings.Contains(err.Error(), "is not present on dst") {
			t.Errorf("missing LUN: %v", err)
		}
		if _, err := check(f, ""); err == nil {
			t.Error("no source host: accepted")
		}
		if len(f.d.inbound.slots) != 0 {
			t.Errorf("refused pre-checks hold slots: %v", f.d.inbound.slots)
		}
		f.d.inbound.reserve(otherUID)
		f.d.inbound.reserve("c0ffee00-0000-4000-8000-00000000a11f")
		if _, err := check(f, "src"); !strings.Contains(err.Error(), "2/2 inbound migrations already on dst") {
			t.Errorf("inbound limit: %v", err)
		}
	})
}

// A re-sent post_live_migration_at_destination (the source restarted
// before it learned the answer) is answered as the first was.
func TestPostAtDestination(t *testing.T) {
	f := newDestFixture(t, nil)
	inst, _ := f.nova.seed("src", "dst")
	dir := f.prepared(t, instUUID)
	args := map[string]any{"instance": inst, "block_migration": true}
	if _, err := f.d.postAtDestination(context.Background(), request(t, "post_live_migration_at_destination", args)); err != nil {
		t.Fatal(err)
	}
	if f.nova.instances[instUUID]["host"] != "dst" || f.nova.instances[instUUID]["node"] != "dst.hv.example" || f.nova.instances[instUUID]["task_state"] != nil {
		t.Errorf("instance %v", f.nova.instances[instUUID])
	}
	if _, err := os.Stat(filepath.Join(dir, preparedMark)); !os.IsNotExist(err) {
		t.Error("the prepared mark stays: a later rollback could remove the live guest's files")
	}
	if _, err := f.d.postAtDestination(context.Background(), request(t, "post_live_migration_at_destination", args)); err != nil {
		t.Errorf("re-sent: %v", err)
	}
	f.nova.instances[instUUID]["host"] = "elsewhere"
	_, err := f.d.postAtDestination(context.Background(), request(t, "post_live_migration_at_destination", args))
	if fl, ok := errors.AsType[*oslo.Failure](err); !ok || fl.Class != "UnexpectedTaskStateError" {
		t.Errorf("re-sent when the record moved on: %v", err)
	}
}

// fakeImages is Glance's image data by id.
type fakeImages map[string]string

func (f fakeImages) Fetch(_ context.Context, id string, w io.Writer, max int64) (string, int64, error) {
	b, ok := f[id]
	if !ok {
		return "", 0, fmt.Errorf("image %s: %w", id, errdefs.ErrNotFound)
	}
	if int64(len(b)) > max {
		return "", 0, errdefs.ErrFailedPrecondition
	}
	n, err := io.WriteString(w, b)
	return "raw", int64(n), err
}

// An instance booted from kernel and ramdisk images gets them in its
// directory from Glance, as nova-compute's pre_live_migration fetches
// them: no migration stream carries them, and QEMU opens them at the
// incoming start ("could not open kernel file" otherwise).
func TestPreLiveMigrationBootFiles(t *testing.T) {
	const kernel, ramdisk = "3b1d7c36-46a2-4a5e-8d4c-3b1e5a1d2f10", "7c2e9f41-8a55-4b0e-9f3c-1d2e3f4a5b6c"
	md := migrateData(map[string]any{"is_shared_instance_path": false, "block_migration": false, "is_shared_block_storage": true})
	args := func(k, r any) map[string]any {
		a := preArgs(instUUID, md, nil)
		a["instance"] = instance(map[string]any{"uuid": instUUID, "host": "src", "kernel_id": k, "ramdisk_id": r})
		return a
	}
	peers := map[string]Peer{"src": {LibvirtURI: "qemu+tcp://src/system"}}
	fixture := func(images Images) *destFixture {
		f := newDestFixture(t, peers)
		f.d.o.Images = images
		f.source.define(instUUID, guestXML(instUUID, f.instances))
		return f
	}

	f := fixture(fakeImages{kernel: "vmlinuz", ramdisk: "initrd"})
	if _, err := f.d.preLiveMigration(context.Background(), request(t, "pre_live_migration", args(kernel, ramdisk))); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.instances, instUUID)
	for name, want := range map[string]string{"kernel": "vmlinuz", "ramdisk": "initrd"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); string(b) != want {
			t.Errorf("%s: %q %v, want %q", name, b, err, want)
		}
	}
	if diff := cmp.Diff([]string{"", "/" + preparedMark, "/disk.config", "/kernel", "/ramdisk"}, tree(t, dir)); diff != "" {
		t.Errorf("instance directory (-want +got):\n%s", diff)
	}

	// Nova's "" and null are no image.
	f = fixture(nil)
	if _, err := f.d.preLiveMigration(context.Background(), request(t, "pre_live_migration", args("", nil))); err != nil {
		t.Errorf("no kernel image: %v", err)
	}

	for _, tt := range []struct {
		name   string
		images Images
		k      any
		class  string
	}{
		{"no Glance configured", nil, kernel, "MigrationPreCheckError"},
		{"the image is gone", fakeImages{}, kernel, ""},
		{"a kernel id that is a path", fakeImages{}, "../../etc/passwd", ""},
		{"a kernel id that is not a string", fakeImages{}, 42, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := fixture(tt.images)
			_, err := f.d.preLiveMigration(context.Background(), request(t, "pre_live_migration", args(tt.k, nil)))
			if err == nil {
				t.Fatal("accepted")
			}
			if tt.class != "" && Failure(err).Class != tt.class {
				t.Errorf("answered %s (%v), want %s", Failure(err).Class, err, tt.class)
			}
			t.Logf("answer: %v", err)
			if _, err := os.Stat(filepath.Join(f.instances, instUUID, "kernel")); !os.IsNotExist(err) {
				t.Errorf("a kernel file is there: %v", err)
			}
			if _, ok := f.d.inbound.slots[instUUID]; ok {
				t.Error("the inbound slot stays taken after a refusal")
			}
		})
	}
}

// formatImages is Glance with one image of a given disk format.
type formatImages struct{ id, format, path string }

func (f formatImages) Fetch(_ context.Context, id string, w io.Writer, max int64) (string, int64, error) {
	if id != f.id {
		return "", 0, errdefs.ErrNotFound
	}
	b, err := os.ReadFile(f.path)
	if err != nil || int64(len(b)) > max {
		return "", 0, fmt.Errorf("%v: %w", err, errdefs.ErrFailedPrecondition)
	}
	n, err := w.Write(b)
	return f.format, int64(n), err
}

// A disk whose backing file is the instance image's cache entry, missing
// here, gets its base from Glance (stored raw, as Nova's image cache keeps
// it) instead of a refusal and a full copy; a qcow2 image with a backing
// file of its own is never fetched.
func TestPreLiveMigrationFetchesBase(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatalf("qemu-img is needed (integration/deps.sh installs qemu-utils): %v", err)
	}
	const image = "9d4f6a1e-2b3c-4d5e-8f90-1a2b3c4d5e6f"
	block := migrateData(map[string]any{"is_shared_instance_path": false, "block_migration": true, "is_shared_block_storage": false})
	run := func(t *testing.T, imgs Images) (*destFixture, error) {
		f := newDestFixture(t, map[string]Peer{"src": {LibvirtURI: "qemu+tcp://src/system"}})
		f.d.o.Images = imgs
		f.source.define(instUUID, guestXML(instUUID, f.instances))
		b, _ := json.Marshal([]diskEntry{{Type: "qcow2", Path: filepath.Join(f.instances, instUUID, "disk"), VirtualSize: 1 << 20,
			BackingFile: cacheName(image)}})
		a := preArgs(instUUID, block, string(b))
		a["instance"] = instance(map[string]any{"uuid": instUUID, "host": "src", "image_ref": image})
		_, err := f.d.preLiveMigration(context.Background(), request(t, "pre_live_migration", a))
		return f, err
	}
	src := t.TempDir()
	qimg := func(name string, args ...string) string {
		p := filepath.Join(src, name)
		if out, err := exec.Command("qemu-img", append(append([]string{"create", "-q"}, args...), p, "1M")...).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		return p
	}

	f, err := run(t, formatImages{image, "qcow2", qimg("base.qcow2", "-f", "qcow2")})
	if err != nil {
		t.Fatal(err)
	}
	info, err := qemuimg.Read(context.Background(), filepath.Join(f.instances, "_base", cacheName(image)), "raw")
	if err != nil || info.VirtualSize != 1<<20 {
		t.Errorf("cached base: %+v %v", info, err)
	}
	over, err := qemuimg.Read(context.Background(), filepath.Join(f.instances, instUUID, "disk"), "qcow2")
	if err != nil || over.Backing != filepath.Join(f.instances, "_base", cacheName(image)) || over.BackingFormat != "raw" {
		t.Errorf("overlay: %+v %v", over, err)
	}

	evil := qimg("evil.qcow2", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw")
	f, err = run(t, formatImages{image, "qcow2", evil})
	if err == nil || Failure(err).Class != "MigrationPreCheckError" {
		t.Errorf("a qcow2 with a backing file: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(f.instances, "_base")); len(ents) != 0 {
		t.Errorf("the image cache holds %v", ents)
	}
}
