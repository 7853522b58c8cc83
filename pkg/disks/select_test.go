package disks

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/virt"
)

func TestSelect(t *testing.T) {
	local := virt.Disk{Target: "vda", Device: "disk", Type: "file", Source: "/inst/u/disk", Format: "qcow2"}
	blockVol := virt.Disk{Target: "vdb", Device: "disk", Type: "block", Source: "/dev/loop3", Serial: "vol-1"}
	netVol := virt.Disk{Target: "vdc", Device: "disk", Type: "network", Source: "nbd/x", Serial: "vol-2"}
	tests := []struct {
		name    string
		disks   []virt.Disk
		volumes []Volume
		shared  func(string) bool
		want    Selection
	}{
		{
			name:    "local disk copied, volumes skipped by serial",
			disks:   []virt.Disk{local, blockVol, netVol},
			volumes: []Volume{{ID: "vol-1"}, {ID: "vol-2"}},
			want: Selection{Copy: []string{"vda"}, Skip: []Skipped{
				{"vdb", "volume vol-1"}, {"vdc", "volume vol-2"}}},
		},
		{
			name:    "volume matched by device when the serial is missing",
			disks:   []virt.Disk{local, {Target: "vdb", Device: "disk", Type: "block", Source: "/dev/sdx"}},
			volumes: []Volume{{ID: "vol-9", Dev: "vdb"}},
			want:    Selection{Copy: []string{"vda"}, Skip: []Skipped{{"vdb", "volume vol-9"}}},
		},
		{
			name:  "a block device not known as a volume is local and copied",
			disks: []virt.Disk{{Target: "vdb", Device: "disk", Type: "block", Source: "/dev/vg/lv"}, local},
			want:  Selection{Copy: []string{"vda", "vdb"}},
		},
		{
			name: "read-only, shareable, cdrom and network disks are never copied",
			disks: []virt.Disk{
				{Target: "vdd", Device: "disk", Type: "file", Source: "/inst/u/disk.config", ReadOnly: true},
				{Target: "vde", Device: "disk", Type: "file", Source: "/shared/x", Shareable: true},
				{Target: "hdc", Device: "cdrom", Type: "file", Source: "/iso"},
				{Target: "vdf", Device: "disk", Type: "network", Source: "rbd/pool/img"},
			},
			want: Selection{Skip: []Skipped{
				{"vdd", "read-only"}, {"vde", "shareable"}, {"hdc", "cdrom device"},
				{"vdf", "network disk (not local storage)"}}},
		},
		{
			name:   "disks on a shared path are not copied",
			disks:  []virt.Disk{local},
			shared: func(p string) bool { return strings.HasPrefix(p, "/inst/") },
			want:   Selection{Skip: []Skipped{{"vda", "on shared storage"}}},
		},
		{
			name:  "no disks",
			disks: nil,
			want:  Selection{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Select(tc.disks, tc.volumes, tc.shared)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Select mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
