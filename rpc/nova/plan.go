package nova

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/virt"
)

// PlannedDisk is one of a guest's disks as a live migration from this host
// would treat it.
type PlannedDisk struct {
	Target, Source string
	Copied         bool
	Reason         string // why it is skipped (a volume, shared, read-only …)
	Image          disks.Image
}

// DiskPlan is what a live migration from this host would copy, decided by
// the rules the live_migration cast applies (disks.Select, disks.Offer),
// with nothing changed and the destination not asked.
type DiskPlan struct {
	Guest virt.Guest
	Disks []PlannedDisk
	// Incremental: every copied overlay sits on a base in the image cache,
	// so the copy is incremental if the destination has those bases (only
	// it can say: the plan does not ask it); else the copy is full, and Why
	// says why.
	Incremental bool
	Why         string
}

// PlanDisks reads a guest's disks from this host's libvirt and plans
// their copy as if the instances path were not shared with the
// destination (the destination's test file decides that at migration
// time). ErrNotFound: no such domain here.
func (s *Source) PlanDisks(ctx context.Context, uuid string) (DiskPlan, error) {
	g, err := s.localGuest(ctx, uuid)
	if errors.Is(err, errNoGuest) {
		return DiskPlan{}, fmt.Errorf("instance %s on %s: %w: %w", uuid, s.o.Host, errdefs.ErrNotFound, err)
	}
	if err != nil {
		return DiskPlan{}, err
	}
	sel := disks.Select(g.Disks, volumesOf(g), s.sharedFn(false))
	imgs, err := images(ctx, g, sel.Copy)
	if err != nil {
		return DiskPlan{}, err
	}
	p := DiskPlan{Guest: g}
	if len(imgs) > 0 {
		_, p.Incremental, p.Why = disks.Offer(imgs, s.o.ImageCache)
	}
	skipped := map[string]string{}
	for _, sk := range sel.Skip {
		skipped[sk.Target] = sk.Reason
	}
	for _, d := range g.Disks {
		pd := PlannedDisk{Target: d.Target, Source: d.Source, Copied: slices.Contains(sel.Copy, d.Target), Reason: skipped[d.Target]}
		if i := slices.IndexFunc(imgs, func(im disks.Image) bool { return im.Path == d.Source }); pd.Copied && i >= 0 {
			pd.Image = imgs[i]
		}
		p.Disks = append(p.Disks, pd)
	}
	return p, nil
}
