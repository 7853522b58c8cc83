//go:build integration

package ferryd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/ferrylab"
	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/rpc/oslo"
)

// rpcClient is an oslo client of the test's own on the environment's vhost,
// for messages python3-nova would never send.
func rpcClient(t *testing.T) *oslo.Client {
	t.Helper()
	u, err := oslo.ParseTransportURL(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := oslo.NewClient(ctx, oslo.ClientOptions{URL: u})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// instance is an Instance primitive with the given data.
func instance(data map[string]any) map[string]any {
	return map[string]any{"nova_object.name": "Instance", "nova_object.namespace": "nova",
		"nova_object.version": "2.7", "nova_object.data": data}
}

// Hostile messages sent straight to a ferryd over the real broker, as a
// security reviewer would: none of them may delete or create a file, calls
// get a failure reply, casts a log line with the reason.
func TestHostileMessages(t *testing.T) {
	ctx := context.Background()
	_, to := where(t, vm)
	client := rpcClient(t)

	// Sentinels: another instance's files in the destination's instances
	// path (its domain is not defined there, as on storage shared with
	// another host), and a directory beside the instances path.
	other := "c0ffee00-0000-4000-8000-00000000a11e"
	sentinels := []string{
		to.Path(filepath.Join(lab.InstancesPath, other, "disk")),
		filepath.Join(filepath.Dir(lab.InstancesPath), "victim", "keep"),
	}
	for _, p := range sentinels {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("keep me"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	defer os.RemoveAll(filepath.Join(filepath.Dir(lab.InstancesPath), "victim"))
	defer os.RemoveAll(to.Path(filepath.Join(lab.InstancesPath, other)))
	escaped := filepath.Join(filepath.Dir(lab.InstancesPath), "escaped")
	defer os.RemoveAll(escaped)

	target := oslo.Target{Topic: "compute", Server: to.Hostname, Version: "6.0"}
	opts := oslo.CallOptions{Timeout: 30 * time.Second, Context: json.RawMessage(`{"request_id": "req-hostile", "is_admin": true}`)}
	notShared := map[string]any{"nova_object.name": "LibvirtLiveMigrateData", "nova_object.namespace": "nova",
		"nova_object.version": "1.10", "nova_object.data": map[string]any{"is_shared_instance_path": false}}
	casts := []struct {
		name   string
		args   map[string]any
		reason string // in the log line that answers the cast
	}{
		{"empty instance", map[string]any{"instance": instance(map[string]any{}), "destroy_disks": true, "migrate_data": notShared},
			"uuid"},
		{"uuid 42", map[string]any{"instance": instance(map[string]any{"uuid": 42}), "destroy_disks": true, "migrate_data": notShared},
			"uuid"},
		{"uuid ../victim", map[string]any{"instance": instance(map[string]any{"uuid": "../victim"}), "destroy_disks": true,
			"migrate_data": notShared}, "uuid"},
		{"no migrate_data", map[string]any{"instance": instance(map[string]any{"uuid": other}), "destroy_disks": true},
			other},
		{"not prepared here", map[string]any{"instance": instance(map[string]any{"uuid": other}), "destroy_disks": true,
			"migrate_data": notShared}, other},
	}
	logOff := ferrylab.FileSize(env.Ferryd[to.Name].Log)
	for _, c := range casts {
		if err := client.Cast(ctx, target, "rollback_live_migration_at_destination", c.args, opts); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	_, err := client.Call(ctx, target, "pre_live_migration", map[string]any{
		"instance": instance(map[string]any{"uuid": "../escaped/x", "host": "lab-a"}), "migrate_data": notShared, "disk": nil,
		"block_migration": true}, opts)
	var f *oslo.Failure
	if !errors.As(err, &f) || f.Module != "nova.exception" {
		t.Errorf("pre_live_migration with uuid ../escaped/x: got %v, want a nova.exception failure", err)
	} else {
		t.Logf("pre_live_migration ../escaped/x: %s: %s", f.Class, f.Message)
	}
	// Each cast is answered by one log line naming what was refused.
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range casts {
		for {
			lines := refusals(env.Ferryd[to.Name].Log, logOff)
			if strings.Contains(lines, c.reason) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: no log line with the reason (%q) within 30s; refusals logged:\n%s", c.name, c.reason, lines)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for _, p := range sentinels {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("hostile messages removed %s: %v", p, err)
		}
	}
	if _, err := os.Stat(to.Path(lab.InstancesPath)); err != nil {
		t.Errorf("the instances path itself: %v", err)
	}
	if _, err := os.Stat(escaped); !os.IsNotExist(err) {
		t.Errorf("pre_live_migration created %s (%v)", escaped, err)
	}
}

// refusals returns the log lines, from off on, of the rollback handler's
// refusals (warnings and errors of the compute component).
func refusals(path string, off int64) string {
	var out []string
	for _, l := range strings.Split(ferrylab.Tail(path, off), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		if lvl := fmt.Sprint(m["level"]); lvl == "warning" || lvl == "error" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A live_migration cast that fails before the engine has journalled
// anything still reaches Nova: the migration ends in error or failed, the
// task state is cleared, and the reason is in the action event.
func TestEarlyFailureReported(t *testing.T) {
	from, to := where(t, vm)
	ghost := "0badc0de-0000-4000-8000-000000000951"
	send(t, map[string]any{"op": "cast", "uuid": ghost, "name": "ghost", "source": from.Hostname, "dest": to.Hostname,
		"migration_id": 951, "migration_uuid": migUUID(951)})
	if s := status(t, 951, 2*time.Minute, "error", "failed", "completed", "cancelled"); s != "error" && s != "failed" {
		t.Fatalf("migration of a guest the source does not have ended %s", s)
	}
	// Zed's order: the task state is cleared before the status is saved.
	cleared := events(func(e ferrylab.Event) bool {
		f, _ := e["fields"].(map[string]any)
		v, set := f["task_state"]
		return e.Str("object") == "Instance" && e.Str("method") == "save" && e.Str("instance") == ghost && set && v == nil
	})
	if len(cleared) != 1 {
		t.Errorf("task state cleared %d times before the status, want once", len(cleared))
	}
	// The event finishes after the status, as nova-compute's decorators
	// order them.
	fails := seenWithin(time.Minute, func(e ferrylab.Event) bool {
		kw, _ := e["kwargs"].(map[string]any)
		return e.Str("object") == "InstanceActionEvent" && e.Str("method") == "event_finish_with_failure" &&
			forInstance(e, ghost) && kw["exc_val"] != nil
	})
	if len(fails) == 0 {
		t.Errorf("no action event finished with the reason; events: %v", events(func(e ferrylab.Event) bool { return forInstance(e, ghost) }))
	} else {
		t.Logf("reason in the event: %v", fails[len(fails)-1]["kwargs"].(map[string]any)["exc_val"])
	}
}
