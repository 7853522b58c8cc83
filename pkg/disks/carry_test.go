package disks

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/virt"
)

func TestCarryOver(t *testing.T) {
	local := virt.Disk{Target: "vda", Device: "disk", Type: "file", Source: "/i/u/disk", Format: "qcow2"}
	cfg := virt.Disk{Target: "hdd", Device: "cdrom", Type: "file", Source: "/i/u/disk.config", Format: "raw", ReadOnly: true}
	roFile := virt.Disk{Target: "vdz", Device: "disk", Type: "file", Source: "/i/u/disk.ro", ReadOnly: true}
	emptyCD := virt.Disk{Target: "hdc", Device: "cdrom", Type: "file"}
	roVolume := virt.Disk{Target: "vdb", Device: "disk", Type: "block", Source: "/dev/sdx", Serial: "vol-1", ReadOnly: true}
	roNet := virt.Disk{Target: "vdc", Device: "disk", Type: "network", Source: "rbd/x", ReadOnly: true}
	iso := virt.Disk{Target: "hde", Device: "cdrom", Type: "file", Source: "/srv/iso/install.iso", ReadOnly: true}
	qcowRO := virt.Disk{Target: "vdy", Device: "disk", Type: "file", Source: "/i/u/disk.ro2", Format: "qcow2", ReadOnly: true}
	deep := virt.Disk{Target: "hdf", Device: "cdrom", Type: "file", Source: "/i/u/sub/disk.config", ReadOnly: true}
	other := virt.Disk{Target: "hdg", Device: "cdrom", Type: "file", Source: "/i/u/../v/disk.config", ReadOnly: true}
	tests := []struct {
		name   string
		in     []virt.Disk
		carry  []virt.Disk
		refuse []string
	}{
		{name: "no read-only disk", in: []virt.Disk{local}},
		{name: "config drive and a read-only raw file in the instance directory are carried",
			in: []virt.Disk{local, cfg, roFile}, carry: []virt.Disk{cfg, roFile}},
		{name: "an empty cdrom, a volume and a network disk are not local files", in: []virt.Disk{emptyCD, roVolume, roNet}},
		{name: "outside the instance directory, or not raw: refused and named",
			in: []virt.Disk{iso, qcowRO, cfg, deep, other}, carry: []virt.Disk{cfg},
			refuse: []string{"hde (/srv/iso/install.iso) is not a file of the instance directory /i/u",
				"vdy (/i/u/disk.ro2) is qcow2; only raw read-only disks are carried over",
				"hdf (/i/u/sub/disk.config) is not a file of the instance directory /i/u",
				"hdg (/i/u/../v/disk.config) is not a file of the instance directory /i/u"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			carry, refuse := CarryOver(tt.in, "/i/u")
			if diff := cmp.Diff(tt.carry, carry); diff != "" {
				t.Errorf("carry (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.refuse, refuse); diff != "" {
				t.Errorf("refuse (-want +got):\n%s", diff)
			}
		})
	}
}
