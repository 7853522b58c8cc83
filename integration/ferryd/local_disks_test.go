//go:build integration

package ferryd

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
)

// A guest whose disk is an overlay on an image-cache base, with a config
// drive: while the destination has the base, only the top layer moves
// (non-shared-incremental) onto an overlay the destination pre-created on
// its own base; once it has not, the source describes the disk flat and the
// whole disk is copied onto a flat image. Either way the guest's disk reads
// the base's bytes afterwards, and the config drive, which libvirt does not
// copy, arrives byte for byte before the migration.
func TestLocalDisks(t *testing.T) {
	ctx := context.Background()
	const baseMiB, diskMiB = 32, 64
	a, b := theLab.Host("a"), theLab.Host("b")
	g, err := theLab.StartGuest(ctx, a, lab.GuestSpec{Name: "based-vm", MemMiB: 256, BaseMiB: baseMiB, LocalDiskMiB: diskMiB, ConfigDrive: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopGuest(t, g) })
	topOff, topN := g.TopMark()
	reads := func(h *lab.Host) error {
		if err := theLab.ReadsPattern(ctx, h, g, lab.BasePattern, 1, baseMiB-1); err != nil {
			return err
		}
		return theLab.ReadsPattern(ctx, h, g, lab.TopPattern, topOff, topN)
	}
	if err := reads(a); err != nil {
		t.Fatalf("before any migration: %v", err)
	}
	cfgSum, err := g.ConfigDriveSum(a)
	if err != nil {
		t.Fatal(err)
	}
	hop := func(id int, from, to *lab.Host, wantCopy virt.DiskCopy, wantNote string) shown {
		t.Helper()
		dstOff := g.LogOffset(to)
		send(t, migrate(g, from, to, id))
		if e := precheck(t); e.Str("event") != "precheck_ok" {
			t.Fatalf("pre-check refused: %v", e)
		}
		if s := status(t, id, 5*time.Minute, "completed", "failed", "cancelled", "error"); s != "completed" {
			t.Fatalf("migration %d ended %s", id, s)
		}
		continuous(t, g, from, to, dstOff)
		out, err := env.Ferryd[from.Name].CLI("journal", "show", migUUID(id), "--json")
		if err != nil {
			t.Fatalf("ferry journal show: %v: %s", err, out)
		}
		var m shown
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("ferry journal show --json: %v: %.300s", err, out)
		}
		t.Logf("migration %d %s→%s: copy %v %q, disk %d KiB moved, %d MiB of memory, total %v",
			id, from.Name, to.Name, m.Spec.Copy, m.CopyNote, m.Record.DiskBytes>>10, m.Record.MemBytes>>20, m.Record.Total)
		if m.Spec.Copy != wantCopy || !strings.HasPrefix(m.CopyNote, wantNote) {
			t.Errorf("disk copy %v %q, want %v %q…", m.Spec.Copy, m.CopyNote, wantCopy, wantNote)
		}
		if err := reads(to); err != nil {
			t.Error(err)
		}
		if sum, err := g.ConfigDriveSum(to); err != nil || sum != cfgSum {
			t.Errorf("config drive on %s: sha256 %s (%v), want %s", to.Name, sum, err, cfgSum)
		}
		return m
	}

	// The destination's image cache holds the base: incremental.
	if err := theLab.PutBase(a, b, g); err != nil {
		t.Fatal(err)
	}
	m := hop(701, a, b, virt.CopyIncremental, "incremental")
	if backing, err := g.ImageBacking(ctx, b); err != nil || backing != g.Base() {
		t.Errorf("the destination's disk is backed by %q (%v), want the overlay on %s", backing, err, g.Base())
	}
	// The top layer holds the mark and what the guest wrote (a cluster or
	// two of tick counters), not the base.
	if lo, hi := uint64(topN)<<20, uint64(topN+2)<<20; m.Record.DiskBytes < lo || m.Record.DiskBytes > hi {
		t.Errorf("incremental copy moved %d KiB of disk; want the top layer only, %d–%d MiB (the base is %d MiB, the disk %d MiB)",
			m.Record.DiskBytes>>10, topN, topN+2, baseMiB, diskMiB)
	}

	// The way back finds no base there any more: the source's offer is
	// refused and the disk is copied whole onto a flat image.
	if err := theLab.RemoveBase(a, g); err != nil {
		t.Fatal(err)
	}
	m = hop(702, b, a, virt.CopyFull, "full: the destination refused the overlays")
	if !strings.Contains(m.CopyNote, g.Spec.Name+"-base") {
		t.Errorf("the fallback's note does not name the missing base: %q", m.CopyNote)
	}
	if backing, err := g.ImageBacking(ctx, a); err != nil || backing != "" {
		t.Errorf("after a full copy the destination's disk is backed by %q (%v), want a flat image", backing, err)
	}
	if m.Record.DiskBytes < diskMiB<<20 {
		t.Errorf("full copy moved %d KiB of disk, want at least the virtual size %d MiB", m.Record.DiskBytes>>10, diskMiB)
	}
}

// stopGuest destroys and undefines a guest wherever it runs.
func stopGuest(t *testing.T, g *lab.Guest) {
	ctx := context.Background()
	for _, h := range theLab.Hosts {
		c, err := h.Dial(ctx)
		if err != nil {
			continue
		}
		if _, err := c.DomainState(ctx, g.UUID); err != nil {
			c.Close()
			continue
		}
		if err := c.Destroy(ctx, g.UUID); err != nil {
			t.Logf("destroy %s on %s: %v", g.Spec.Name, h.Name, err)
		}
		_ = c.Undefine(ctx, g.UUID)
		c.Close()
	}
}

// shown is the part of `ferry journal show --json` these tests read.
type shown struct {
	Spec     virt.MigrateSpec `json:"spec"`
	CopyNote string           `json:"copy_note"`
	Record   migration.Record `json:"record"`
}
