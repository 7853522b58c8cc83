//go:build integration

// Package engine proves pkg/migration on real QEMU guests in the two-host
// lab: one lab and one guest for the package, migrated back and forth.
package engine

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/pkg/virt"
)

var (
	theLab    *lab.Lab
	guestOnce sync.Once
	theGuest  *lab.Guest
	guestErr  error
)

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	l, err := lab.Start(ctx, lab.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	theLab = l
	code := m.Run()
	l.Close()
	os.Exit(code)
}

// guest returns the package's guest, booting it on host a the first time.
func guest(t *testing.T) *lab.Guest {
	t.Helper()
	guestOnce.Do(func() {
		theGuest, guestErr = theLab.StartGuest(context.Background(), theLab.Host("a"), lab.GuestSpec{Name: "engine", MemMiB: 384})
	})
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return theGuest
}

// where returns the host the guest runs on and the other one.
func where(t *testing.T, g *lab.Guest) (from, to *lab.Host) {
	t.Helper()
	var running []*lab.Host
	for _, h := range theLab.Hosts {
		c, err := h.Dial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		st, err := c.DomainState(context.Background(), g.Spec.Name)
		c.Close()
		if err == nil && st.State == virt.StateRunning {
			running = append(running, h)
		}
	}
	if len(running) != 1 {
		t.Fatalf("guest runs on %d hosts", len(running))
	}
	if running[0] == theLab.Host("a") {
		return theLab.Host("a"), theLab.Host("b")
	}
	return theLab.Host("b"), theLab.Host("a")
}
