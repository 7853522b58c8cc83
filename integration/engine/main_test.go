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
	from, to, err := theLab.Where(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	return from, to
}
