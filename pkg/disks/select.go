// Package disks decides which disks of a domain a live migration copies.
//
// The rule that matters most: libvirt copies every writable disk when a
// block migration is started with an empty migrate_disks list, Cinder
// volumes included, which corrupts them. So the copy set is always explicit,
// and an empty copy set means "no disk copy at all" (no non-shared-disk flag).
//
// How the copy set is copied (plan.go): incrementally, the top layer of
// each overlay only, when the destination pre-created each overlay on its
// own copy of the base; otherwise whole, onto flat images of the same format
// and virtual size. The source offers the incremental form; the destination
// accepts it or refuses, naming the missing bases, and the source then asks
// for the flat form. Read-only local disks, which libvirt never copies,
// are carried over by the destination before the migration (carry.go).
package disks

import (
	"fmt"
	"sort"

	"opendev.org/x/ferry/pkg/virt"
)

// Volume is a volume attachment as Nova knows it (a BDM): its volume id,
// which is the libvirt <serial>, and its device name.
type Volume struct {
	ID  string // volume id = <serial>
	Dev string // target dev, e.g. vdb (from the BDM's mount device)
}

// Skipped is a disk left out of the copy set, with the reason.
type Skipped struct {
	Target string
	Reason string
}

// Selection is the outcome of Select.
type Selection struct {
	Copy []string  // target devs for migrate_disks, sorted
	Skip []Skipped // everything else, with a reason
}

// Select returns the copy set: writable, non-shareable disks whose source is
// a local file or block device, that are no volume (matched by serial or by
// target dev) and not on a path both hosts share (shared reports that).
func Select(all []virt.Disk, volumes []Volume, shared func(path string) bool) Selection {
	byID, byDev := map[string]string{}, map[string]string{}
	for _, v := range volumes {
		if v.ID != "" {
			byID[v.ID] = v.ID
		}
		if v.Dev != "" {
			byDev[v.Dev] = v.ID
		}
	}
	var s Selection
	for _, d := range all {
		reason := ""
		switch {
		case d.Device != "disk":
			reason = d.Device + " device"
		case d.ReadOnly:
			reason = "read-only"
		case d.Shareable:
			reason = "shareable"
		case byID[d.Serial] != "" && d.Serial != "":
			reason = "volume " + d.Serial
		case byDev[d.Target] != "":
			reason = "volume " + byDev[d.Target]
		case d.Type != "file" && d.Type != "block":
			reason = fmt.Sprintf("%s disk (not local storage)", d.Type)
		case shared != nil && shared(d.Source):
			reason = "on shared storage"
		}
		if reason != "" {
			s.Skip = append(s.Skip, Skipped{Target: d.Target, Reason: reason})
			continue
		}
		s.Copy = append(s.Copy, d.Target)
	}
	sort.Strings(s.Copy)
	return s
}
