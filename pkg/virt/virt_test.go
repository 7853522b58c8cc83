package virt

import (
	"errors"
	"testing"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
)

func TestMigrateSpecValidate(t *testing.T) {
	tests := []struct {
		name string
		spec MigrateSpec
		ok   bool
	}{
		{"plain", MigrateSpec{DestURI: "qemu+tcp://h/system"}, true},
		{"copy with disks", MigrateSpec{DestURI: "d", Copy: CopyFull, Disks: []string{"vda"}}, true},
		{"no destination", MigrateSpec{}, false},
		{"copy with an empty disk list copies volumes too", MigrateSpec{DestURI: "d", Copy: CopyIncremental}, false},
		{"disks without a copy mode", MigrateSpec{DestURI: "d", Disks: []string{"vda"}}, false},
		{"tls.destination without TLS", MigrateSpec{DestURI: "d", TLSDestination: "h"}, false},
	}
	for _, tc := range tests {
		err := tc.spec.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: error %v is not ErrInvalidArgument", tc.name, err)
		}
	}
}

func TestMigrateSpecFlagsAndParams(t *testing.T) {
	s := MigrateSpec{
		DestURI: "qemu+tcp://198.18.0.12/system", MigrateURI: "tcp://198.19.0.12", DisksURI: "tcp://198.19.0.12",
		Disks: []string{"vda", "vdb"}, Copy: CopyIncremental, Bandwidth: 50,
		PersistDest: true, AutoConverge: true, AutoConvergeIni: 60, AutoConvergeInc: 20,
		TLS: true, TLSDestination: "lab-b", DestXML: "<domain/>",
	}
	wantFlags := libvirt.MigrateLive | libvirt.MigratePeer2peer | libvirt.MigratePersistDest |
		libvirt.MigrateNonSharedInc | libvirt.MigrateAutoConverge | libvirt.MigrateTLS
	if got := s.Flags(); got != wantFlags {
		t.Errorf("Flags() = %#x, want %#x", got, wantFlags)
	}
	type kv struct {
		K string
		D uint32
		V any
	}
	var got []kv
	for _, p := range s.Params() {
		got = append(got, kv{p.Field, p.Value.D, p.Value.I})
	}
	want := []kv{
		{"migrate_uri", 7, "tcp://198.19.0.12"},
		{"destination_xml", 7, "<domain/>"},
		{"persistent_xml", 7, "<domain/>"},
		{"disks_uri", 7, "tcp://198.19.0.12"},
		{"migrate_disks", 7, "vda"},
		{"migrate_disks", 7, "vdb"},
		{"bandwidth", 4, uint64(50)},
		{"auto_converge.initial", 1, int32(60)},
		{"auto_converge.increment", 1, int32(20)},
		{"tls.destination", 7, "lab-b"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Params() mismatch (-want +got):\n%s", diff)
	}
	full := MigrateSpec{DestURI: "d", Copy: CopyFull, Disks: []string{"vda"}}
	if f := full.Flags(); f&libvirt.MigrateNonSharedDisk == 0 || f&libvirt.MigrateNonSharedInc != 0 {
		t.Errorf("CopyFull flags = %#x, want NON_SHARED_DISK without NON_SHARED_INC", f)
	}
	none := MigrateSpec{DestURI: "d"}
	if f := none.Flags(); f&(libvirt.MigrateNonSharedDisk|libvirt.MigrateNonSharedInc) != 0 {
		t.Errorf("CopyNone flags = %#x, want no non-shared flag", f)
	}
}

func TestDecodeJobStats(t *testing.T) {
	p := func(k string, v *libvirt.TypedParamValue) libvirt.TypedParam {
		return libvirt.TypedParam{Field: k, Value: *v}
	}
	got := decodeJobStats(3, []libvirt.TypedParam{
		p("operation", libvirt.NewTypedParamValueInt(5)),
		p("time_elapsed", libvirt.NewTypedParamValueUllong(2500)),
		p("downtime", libvirt.NewTypedParamValueUllong(170)),
		p("memory_total", libvirt.NewTypedParamValueUllong(268443648)),
		p("memory_processed", libvirt.NewTypedParamValueUllong(116391936)),
		p("memory_remaining", libvirt.NewTypedParamValueUllong(0)),
		p("memory_bps", libvirt.NewTypedParamValueUllong(49152000)),
		p("memory_iteration", libvirt.NewTypedParamValueUllong(4)),
		p("disk_total", libvirt.NewTypedParamValueUllong(67108864)),
		p("auto_converge_throttle", libvirt.NewTypedParamValueInt(40)),
		p("success", libvirt.NewTypedParamValueBoolean(1)),
		p("errmsg", libvirt.NewTypedParamValueString("")),
		p("memory_dirty_rate", libvirt.NewTypedParamValueLlong(-1)),
	})
	want := JobStats{
		Type: JobCompleted, Operation: 5, Elapsed: 2500 * time.Millisecond, Downtime: 170 * time.Millisecond,
		MemTotal: 268443648, MemProcessed: 116391936, MemBps: 49152000, MemIteration: 4, DiskTotal: 67108864,
		AutoConvergePct: 40,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decodeJobStats mismatch (-want +got):\n%s", diff)
	}
}

func TestParseDisks(t *testing.T) {
	xml := `<domain type='qemu'><name>x</name><devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/u/disk'/><target dev='vda' bus='virtio'/></disk>
  <disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/><source dev='/dev/loop0'/><target dev='vdb' bus='virtio'/><serial>vol-1</serial></disk>
  <disk type='network' device='disk'><source protocol='nbd' name='e'><host name='198.18.0.2' port='10809'/></source><target dev='vdc' bus='virtio'/><serial>vol-2</serial></disk>
  <disk type='file' device='cdrom'><source file='/i/u/disk.config'/><target dev='hdd' bus='ide'/><readonly/></disk>
</devices></domain>`
	got, err := ParseDisks(xml)
	if err != nil {
		t.Fatal(err)
	}
	want := []Disk{
		{Target: "vda", Device: "disk", Type: "file", Source: "/i/u/disk", Format: "qcow2"},
		{Target: "vdb", Device: "disk", Type: "block", Source: "/dev/loop0", Format: "raw", Serial: "vol-1"},
		{Target: "vdc", Device: "disk", Type: "network", Source: "nbd/e", Serial: "vol-2"},
		{Target: "hdd", Device: "cdrom", Type: "file", Source: "/i/u/disk.config", ReadOnly: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseDisks mismatch (-want +got):\n%s", diff)
	}
	if _, err := ParseDisks("<domain"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("ParseDisks(garbage) = %v, want ErrInvalidArgument", err)
	}
}

func TestCheckCapabilities(t *testing.T) {
	debian12 := Versions{Libvirt: V(9, 0, 0), QEMU: V(7, 2, 22)}
	newest := Versions{Libvirt: V(11, 6, 0), QEMU: V(10, 1, 0)}
	base := MigrateSpec{DestURI: "d"}
	with := func(f func(*MigrateSpec)) MigrateSpec { s := base; f(&s); return s }
	tests := []struct {
		name string
		v    Versions
		spec MigrateSpec
		ok   bool
	}{
		{"plain on debian 12", debian12, base, true},
		{"multifd zstd on libvirt 9.0", debian12, with(func(s *MigrateSpec) { s.Parallel = 4; s.Compression = []string{"zstd"} }), false},
		{"multifd zstd on a newer libvirt", newest, with(func(s *MigrateSpec) { s.Parallel = 4; s.Compression = []string{"zstd"} }), true},
		{"zstd without parallel", newest, with(func(s *MigrateSpec) { s.Compression = []string{"zstd"} }), false},
		{"xbzrle with parallel", debian12, with(func(s *MigrateSpec) { s.Parallel = 2; s.Compression = []string{"xbzrle"} }), false},
		{"xbzrle single stream", debian12, with(func(s *MigrateSpec) { s.Compression = []string{"xbzrle"} }), true},
		{"mt on QEMU 7.2", debian12, with(func(s *MigrateSpec) { s.Compression = []string{"mt"} }), true},
		{"mt on QEMU 10.1", newest, with(func(s *MigrateSpec) { s.Compression = []string{"mt"} }), false},
		{"parallel + post-copy below QEMU 10.1", debian12, with(func(s *MigrateSpec) { s.Parallel = 2; s.PostCopy = true }), false},
		{"parallel + post-copy on QEMU 10.1", newest, with(func(s *MigrateSpec) { s.Parallel = 2; s.PostCopy = true }), true},
		{"post-copy resume on libvirt 9.0", debian12, with(func(s *MigrateSpec) { s.PostCopy = true; s.PostcopyResume = true }), true},
		{"post-copy resume on libvirt 8.0", Versions{Libvirt: V(8, 0, 0), QEMU: V(6, 2, 0)}, with(func(s *MigrateSpec) { s.PostcopyResume = true }), false},
		{"tls.destination on libvirt 5.10", Versions{Libvirt: V(5, 10, 0), QEMU: V(4, 2, 0)}, with(func(s *MigrateSpec) { s.TLS = true; s.TLSDestination = "h" }), false},
		{"auto-converge steps without the flag", debian12, with(func(s *MigrateSpec) { s.AutoConvergeIni = 60 }), false},
	}
	for _, tc := range tests {
		err := CheckCapabilities(tc.v, tc.spec)
		if (err == nil) != tc.ok {
			t.Errorf("%s: CheckCapabilities = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v is not ErrInvalidArgument", tc.name, err)
		}
	}
}
