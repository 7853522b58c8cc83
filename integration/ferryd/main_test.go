//go:build integration

// Package ferryd proves the whole live-migration RPC flow: a Zed
// conductor's calls and casts, played by python3-nova's own ComputeAPI and
// a conductor stand-in that uses Nova's serializer, carried out by ferryd on
// both lab hosts against real libvirt/QEMU.
package ferryd

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/ferrylab"
	"opendev.org/x/ferry/integration/lab"
)

var (
	theLab *lab.Lab
	env    *ferrylab.Env
	vm     *lab.Guest
)

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cancel() // the lab may have waited for another run: the rest gets its own time
	ctx, cancel = context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	theLab = l
	code := 1
	defer func() { l.Close(); os.Exit(code) }()
	if env, err = ferrylab.Start(ctx, l, ferrylab.Options{Migration: "  live_migration_downtime: 2000\n  live_migration_bandwidth: 50"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer env.Close()
	if vm, err = l.StartGuest(ctx, l.Host("a"), lab.GuestSpec{Name: "nova-vm", MemMiB: 384}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	code = m.Run()
	// Every log line, journal entry and CLI output of the run, checked for
	// the planted password and token.
	if leaks := env.CheckSecrets(); len(leaks) > 0 {
		fmt.Fprintln(os.Stderr, "secrets leaked:")
		for _, l := range leaks {
			fmt.Fprintln(os.Stderr, "  "+l)
		}
		code = 1
	} else {
		fmt.Fprintln(os.Stderr, "secrets: neither the broker password nor the request token appears in any log or journal")
	}
}
