//go:build integration

package stack_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"opendev.org/x/ferry/integration/stack"
	"opendev.org/x/ferry/pkg/migration"
)

// drainReport is the part of `ferry drain -f json` the test reads.
type drainReport struct {
	Host        string `json:"host"`
	Interrupted bool   `json:"interrupted"`
	Servers     []struct {
		Server        string `json:"server"`
		Outcome       string `json:"outcome"`
		MigrationID   int64  `json:"migration_id"`
		MigrationUUID string `json:"migration_uuid"`
		Status        string `json:"status"`
		Dest          string `json:"dest_compute"`
		Reason        string `json:"reason"`
	} `json:"servers"`
}

// drained runs `ferry drain from -f json` (ferryd in companion mode on
// both hosts) and checks that every one of servers live-migrated through
// Nova's API with the scheduler choosing (to, the only other host), that
// ferry ran each job (its journal on from holds them), that progress went
// to stderr as plain lines, that the report on stdout names each server's
// completed migration, and that the exit is 0; run again on the emptied
// host, the drain has nothing of ours to do and exits 0.
func drained(ctx context.Context, t *testing.T, cli ferryCLI, src *stack.Ferryd, a *stack.API, from, to string, servers ...string) {
	t.Helper()
	r := cli.run(ctx, t, "drain", from, "--max-parallel", "2", "-f", "json")
	var rep drainReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("drain -f json: exit %d, %v\n%s", r.code, err, r.stdout)
	}
	if r.code != 0 || rep.Host != from || rep.Interrupted {
		t.Errorf("drain: exit %d, %+v", r.code, rep)
	}
	for _, sv := range servers {
		found := false
		for _, s := range rep.Servers {
			if s.Server != sv {
				continue
			}
			found = true
			if s.Outcome != "migrated" || s.Status != "completed" || s.Dest != to || s.MigrationID == 0 {
				t.Errorf("server %s in the report: %+v", sv, s)
			}
			if j := ferryRan(t, src, s.MigrationUUID); j.Phase != migration.PhaseCompleted {
				t.Errorf("ferry's journal of %s: %s (%s)", s.MigrationUUID, j.Phase, j.Reason)
			}
		}
		if !found {
			t.Errorf("server %s is not in the report", sv)
		}
		if got, err := a.GetServer(ctx, sv); err != nil || got.Host != to || got.Status != "ACTIVE" {
			t.Errorf("server %s after the drain: %+v %v", sv, got, err)
		}
	}
	for _, want := range []string{"ferry: drain " + from + ": ", "to migrate, in this order: ", "0 failed, 0 waiting"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("drain's stderr lacks %q", want)
		}
	}
	if strings.Contains(r.stderr, "\r") {
		t.Error("drain redrew a line on a non-terminal")
	}

	// Nothing of ours left on the host: the same command has nothing to start.
	r = cli.run(ctx, t, "drain", from, "-f", "json")
	rep = drainReport{}
	if err := json.Unmarshal([]byte(r.stdout), &rep); r.code != 0 || err != nil {
		t.Fatalf("drain again: exit %d, %v", r.code, err)
	}
	for _, s := range rep.Servers {
		if slices.Contains(servers, s.Server) {
			t.Errorf("drained server %s on %s again: %+v", s.Server, from, s)
		}
	}
}
