package migration

import (
	"fmt"

	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/virt"
)

// JobSpec assembles the libvirt job from what the migration was started
// with, what preparing the destination decided and the policy's permits. It
// is the only author of a virt.MigrateSpec: the start, a re-attach and a
// post-copy resume all come from here, so the three cannot disagree.
func JobSpec(m Migration) (virt.MigrateSpec, error) {
	if m.Prep == nil {
		return virt.MigrateSpec{}, fmt.Errorf("migration %s: no preparation journalled", m.ID)
	}
	uris, err := hostnet.For(jobDest(m), m.Job.NativeTLS)
	if err != nil {
		return virt.MigrateSpec{}, err
	}
	s := virt.MigrateSpec{
		DestURI: uris.Control, MigrateURI: uris.Migrate, Bandwidth: m.Job.Bandwidth,
		TLS: m.Job.NativeTLS, TLSDestination: uris.TLSDestination, Parallel: m.Job.Parallel, Compression: m.Job.Compression,
		PostCopy: m.Policy.PostCopy, AutoConverge: m.Policy.AutoConverge,
		AutoConvergeIni: m.Policy.AutoConvergeInitial, AutoConvergeInc: m.Policy.AutoConvergeIncrement,
		// The destination keeps a persistent definition; the source's is
		// removed only after its completed-job statistics were read.
		PersistDest: true,
		DestXML:     m.Prep.DestXML,
	}
	if m.Prep.Copy != virt.CopyNone && len(m.Job.Disks) > 0 {
		s.Copy, s.Disks, s.DisksURI = m.Prep.Copy, m.Job.Disks, uris.Disks
	}
	if m.Prep.MigrationAddr == "" {
		// The destination named no migration address (no
		// live_migration_inbound_addr): its libvirtd chooses where QEMU and
		// the NBD server listen (qemu.conf's migration_host and
		// migration_address), as it does for Nova. An address of ferry's
		// choosing there is refused when libvirtd listens elsewhere.
		s.MigrateURI, s.DisksURI = "", ""
	}
	return s, s.Validate()
}

// jobDest is the destination as the job addresses it: at the migration
// address its preparation gave.
func jobDest(m Migration) hostnet.Dest {
	d := m.Dest
	if m.Prep != nil {
		d.Migration = m.Prep.MigrationAddr
	}
	return d
}

// resumeSpec is the spec of a post-copy resume: the same job, RAM only (the
// disks were mirrored before the switch to post-copy).
func resumeSpec(m Migration) (virt.MigrateSpec, error) {
	s, err := JobSpec(m)
	s.Copy, s.Disks, s.DisksURI = virt.CopyNone, nil, ""
	s.PostcopyResume = true
	return s, err
}
