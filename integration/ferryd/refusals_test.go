//go:build integration

package ferryd

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/rpc/oslo"
)

// Each refusal reaches the Python caller as a nova.exception class with a
// clear message. The inbound slots it fills are released at the end, as the
// conductor's drop_move_claim_at_destination does.
func TestRefusals(t *testing.T) {
	ctx := context.Background()
	from, to := where(t, vm)
	check := func(cmd map[string]any, class, msg string) {
		t.Helper()
		cmd["op"] = "precheck"
		send(t, cmd)
		e := precheck(t)
		mro, _ := e["mro"].([]any)
		if e.Str("event") != "precheck_failed" || !slices.Contains(mro, any("nova.exception."+class)) || !strings.Contains(e.Str("message"), msg) {
			t.Errorf("want nova.exception.%s (%q), got %v", class, msg, e)
			return
		}
		t.Logf("%s: %s", e.Str("class"), e.Str("message"))
	}
	cpu, err := theLab.StartGuest(ctx, from, lab.GuestSpec{Name: "cpu-vm", DefineOnly: true, CPUModel: "Icelake-Server"})
	if err != nil {
		t.Fatal(err)
	}
	check(migrate(cpu, from, to, 601), "InvalidCPUInfo", "does not fit")
	lun, err := theLab.StartGuest(ctx, from, lab.GuestSpec{Name: "lun-vm", DefineOnly: true, MissingLUN: true})
	if err != nil {
		t.Fatal(err)
	}
	check(migrate(lun, from, to, 602), "MigrationPreCheckError", "is not present on "+to.Hostname)
	withPort := migrate(vm, from, to, 603)
	withPort["uuid"], withPort["ports"] = "0f0f0f0f-0000-4000-8000-000000000603", []string{"a1b2c3d4-0000-4000-8000-000000000001"}
	ported, err := theLab.StartGuest(ctx, from, lab.GuestSpec{Name: "port-vm", DefineOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	withPort["uuid"] = ported.UUID
	check(withPort, "MigrationPreCheckError", "Neutron ports")
	// Two pre-checks that pass hold both inbound slots of the destination.
	var fillers []*lab.Guest
	defer func() {
		client := rpcClient(t)
		for _, g := range fillers {
			// A call (as Nova's rpcapi makes it), so the slot is free when it returns.
			_, err := client.Call(ctx, oslo.Target{Topic: "compute", Server: to.Hostname, Version: "6.0"}, "drop_move_claim_at_destination",
				map[string]any{"instance": instance(map[string]any{"uuid": g.UUID})}, oslo.CallOptions{Timeout: 30 * time.Second})
			if err != nil {
				t.Error(err)
			}
		}
	}()
	for i, name := range []string{"fill-1", "fill-2"} {
		g, err := theLab.StartGuest(ctx, from, lab.GuestSpec{Name: name, DefineOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		fillers = append(fillers, g)
		c := migrate(g, from, to, 610+i)
		c["op"] = "precheck"
		send(t, c)
		if e := precheck(t); e.Str("event") != "precheck_ok" {
			t.Fatalf("filler pre-check: %v", e)
		}
	}
	check(migrate(vm, from, to, 612), "MigrationPreCheckError", "2/2 inbound")
}
