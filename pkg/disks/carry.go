package disks

import (
	"fmt"
	"path/filepath"
	"strings"

	"opendev.org/x/ferry/pkg/virt"
)

// MaxCarry bounds a carried-over disk: config drives are a few MiB (Nova
// builds them at 64 MiB at most).
const MaxCarry = 64 << 20

// CarryOver picks the read-only local disks a block migration leaves behind
// (libvirt copies writable disks only): config drives and other cdroms or
// read-only files of the instance. The destination copies them before the
// migration. A read-only local disk that cannot be carried — outside the
// instance's directory, or not raw — is named in refuse with the reason,
// for the pre-check to refuse the migration: without it the guest could
// not start on the destination.
func CarryOver(all []virt.Disk, instanceDir string) (carry []virt.Disk, refuse []string) {
	for _, d := range all {
		if !(d.ReadOnly || d.Device == "cdrom") || d.Serial != "" || d.Type != "file" || d.Source == "" {
			continue
		}
		switch {
		case ChildOf(instanceDir, d.Source) != nil || strings.HasPrefix(filepath.Base(d.Source), "."):
			refuse = append(refuse, fmt.Sprintf("%s (%s) is not a file of the instance directory %s", d.Target, d.Source, instanceDir))
		case d.Format != "" && d.Format != "raw":
			refuse = append(refuse, fmt.Sprintf("%s (%s) is %s; only raw read-only disks are carried over", d.Target, d.Source, d.Format))
		default:
			carry = append(carry, d)
		}
	}
	return carry, refuse
}
