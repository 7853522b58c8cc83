package migration

import (
	"testing"

	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/virt"
)

func TestJobSpecURIs(t *testing.T) {
	for _, tt := range []struct {
		name                     string
		addr                     string
		wantControl, wantMigrate string
		wantDisks                string
	}{
		{"the destination's migration address", "198.19.0.12", "qemu+tcp://198.18.0.12/system", "tcp://198.19.0.12", "tcp://198.19.0.12"},
		// Nova's target_connect_addr None: no URI, the destination's
		// libvirtd picks its migration_host (the management address was
		// refused where libvirtd listens on the migration network only).
		{"none named", "", "qemu+tcp://198.18.0.12/system", "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := Migration{Request: Request{ID: "m", InstanceUUID: "i", Dest: hostnet.Dest{Host: "lab-b", Mgmt: "198.18.0.12", Scheme: "tcp"},
				Job: Job{Disks: []string{"vda"}}}, Prep: &Preparation{MigrationAddr: tt.addr, Copy: virt.CopyIncremental}}
			s, err := JobSpec(m)
			if err != nil {
				t.Fatal(err)
			}
			if s.DestURI != tt.wantControl || s.MigrateURI != tt.wantMigrate || s.DisksURI != tt.wantDisks {
				t.Errorf("URIs %q %q %q, want %q %q %q", s.DestURI, s.MigrateURI, s.DisksURI, tt.wantControl, tt.wantMigrate, tt.wantDisks)
			}
		})
	}
}
