package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
)

// A captured Migration primitive (reference/wire-protocol.md §2.5), with a
// field ferry does not model and one a newer Nova added.
const capturedMigration = `{"nova_object.name": "Migration", "nova_object.namespace": "nova", "nova_object.version": "1.7",
 "nova_object.data": {"id": 12, "uuid": "5f3c2a10-7e4b-4d8e-a1c2-33445566aabb", "source_compute": "src1",
  "dest_compute": "dest1", "status": "accepted", "memory_total": null, "cross_cell_move": false,
  "created_at": "2024-05-01T12:00:00Z", "dest_compute_id": 99}}`

func TestObjectRoundTrip(t *testing.T) {
	o := &Object{}
	if err := json.Unmarshal([]byte(capturedMigration), o); err != nil {
		t.Fatal(err)
	}
	if st, err := Need[string](o, "status"); err != nil || st != "accepted" {
		t.Errorf("status %q %v", st, err)
	}
	if id, err := Need[int64](o, "id"); err != nil || id != 12 {
		t.Errorf("id %d %v", id, err)
	}
	if _, ok, err := Opt[int64](o, "memory_total"); ok || err != nil {
		t.Errorf("a null field read as set: %v %v", ok, err)
	}
	if _, err := Need[int64](o, "memory_total"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Need of a null field = %v", err)
	}
	if _, err := Need[string](o, "id"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("a number read as a string: %v", err)
	}
	if _, err := UUID(o, "source_compute"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("UUID of a host name = %v", err)
	}
	if u, err := UUID(o, "uuid"); err != nil || u != "5f3c2a10-7e4b-4d8e-a1c2-33445566aabb" {
		t.Errorf("UUID = %q %v", u, err)
	}
	if err := o.Set("status", "queued"); err != nil {
		t.Fatal(err)
	}
	o.Set("status", "preparing")
	b, _ := json.Marshal(o)
	var back map[string]any
	json.Unmarshal(b, &back)
	want := map[string]any{"nova_object.name": "Migration", "nova_object.namespace": "nova", "nova_object.version": "1.7",
		"nova_object.changes": []any{"status"},
		"nova_object.data": map[string]any{"id": float64(12), "uuid": "5f3c2a10-7e4b-4d8e-a1c2-33445566aabb",
			"source_compute": "src1", "dest_compute": "dest1", "status": "preparing", "memory_total": nil,
			"cross_cell_move": false, "created_at": "2024-05-01T12:00:00Z", "dest_compute_id": float64(99)}}
	if diff := cmp.Diff(want, back); diff != "" {
		t.Errorf("re-encoded (-want +got):\n%s", diff)
	}
	o.Apply(map[string]json.RawMessage{"updated_at": json.RawMessage(`"2026-11-26T04:04:19Z"`), "obj_what_changed": json.RawMessage(`[]`)})
	if at, _ := Need[string](o, "updated_at"); len(o.Changes) != 0 || at != "2026-11-26T04:04:19Z" {
		t.Errorf("after Apply: changes %v updated_at %q", o.Changes, at)
	}
	for _, bad := range []string{`{"a":1}`, `[1]`, `{"nova_object.name":"X","nova_object.namespace":"other","nova_object.version":"1.0","nova_object.data":{}}`} {
		if err := json.Unmarshal([]byte(bad), &Object{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Unmarshal(%s) = %v", bad, err)
		}
	}
}

func TestFailureMapping(t *testing.T) {
	tests := []struct {
		err   error
		class string
	}{
		{PreCheck("2/2 inbound"), "MigrationPreCheckError"},
		{InvalidCPU("no"), "InvalidCPUInfo"},
		{fmt.Errorf("x: %w", errdefs.ErrFailedPrecondition), "MigrationPreCheckError"},
		{fmt.Errorf("x: %w", errdefs.ErrUnavailable), "HypervisorUnavailable"},
		{errors.New("plain"), "NovaException"},
		{oslo.NoSuchMethod("x"), "NoSuchMethod"},
	}
	for _, tc := range tests {
		f := Failure(tc.err)
		if f.Class != tc.class {
			t.Errorf("Failure(%v) = %s, want %s", tc.err, f.Class, tc.class)
		}
		if tc.class != "NoSuchMethod" && f.Module != "nova.exception" {
			t.Errorf("Failure(%v) module %s", tc.err, f.Module)
		}
	}
	if f := Failure(PreCheck("2/2 inbound")); f.Message != "Migration pre-check error: 2/2 inbound" || f.Kwargs["reason"] != "2/2 inbound" {
		t.Errorf("precheck failure %+v", f)
	}
}

type fakeCaller struct {
	method string
	args   map[string]any
	reply  string
}

func (f *fakeCaller) Call(_ context.Context, t oslo.Target, method string, args any, o oslo.CallOptions) (json.RawMessage, error) {
	f.method = method
	b, _ := json.Marshal(args)
	json.Unmarshal(b, &f.args)
	if t.Topic != "conductor" || t.Version != "3.0" {
		return nil, fmt.Errorf("target %+v", t)
	}
	return json.RawMessage(f.reply), nil
}
func (f *fakeCaller) Cast(context.Context, oslo.Target, string, any, oslo.CallOptions) error {
	return nil
}

func TestConductorSave(t *testing.T) {
	fc := &fakeCaller{reply: `[{"updated_at": "2026-11-26T04:04:19Z", "obj_what_changed": []}, null]`}
	c := NewConductor(fc)
	o := &Object{}
	json.Unmarshal([]byte(capturedMigration), o)
	o.Set("status", "queued")
	if err := c.Save(context.Background(), AdminContext(), o, nil); err != nil {
		t.Fatal(err)
	}
	inst := fc.args["objinst"].(map[string]any)
	if fc.method != "object_action" || fc.args["objmethod"] != "save" || fmt.Sprint(inst["nova_object.changes"]) != "[status]" {
		t.Errorf("sent %s %v", fc.method, fc.args)
	}
	if at, _ := Need[string](o, "updated_at"); len(o.Changes) != 0 || at == "" {
		t.Errorf("updates not applied: %+v", o)
	}
	fc.reply = `{"not": "a pair"}`
	if err := c.Save(context.Background(), AdminContext(), o, nil); err == nil {
		t.Error("a malformed conductor reply was accepted")
	}
}

func TestAdminContextTimestamp(t *testing.T) {
	ts := AdminContext().Str("timestamp")
	if _, err := time.Parse(TimestampFormat, ts); err != nil || len(ts) != len("2024-05-01T12:00:00.000000") {
		t.Errorf("timestamp %q: %v", ts, err)
	}
}

// The request context is kept and sent back without credentials.
func TestContextSanitized(t *testing.T) {
	c := Context{"auth_token": json.RawMessage(`"gAAAA-secret"`), "request_id": json.RawMessage(`"req-1"`),
		"user_password": json.RawMessage(`"p"`), "roles": json.RawMessage(`["admin"]`)}
	s := c.Sanitized()
	if string(s["auth_token"]) != "null" || string(s["user_password"]) != "null" || s.Str("request_id") != "req-1" ||
		string(s["roles"]) != `["admin"]` {
		t.Errorf("sanitized %v", s)
	}
	if string(c["auth_token"]) != `"gAAAA-secret"` {
		t.Error("Sanitized changed the original")
	}
}

func TestInboundLimit(t *testing.T) {
	now := time.Unix(1000, 0)
	dir := t.TempDir()
	in, err := newInbound(dir, 2, time.Minute, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	in.now = func() time.Time { return now }
	if _, ok := in.reserve("a"); !ok {
		t.Fatal("first")
	}
	if _, ok := in.take("b"); !ok {
		t.Fatal("second")
	}
	if n, ok := in.reserve("c"); ok || n != 2 {
		t.Errorf("third = %d %v, want refused at 2", n, ok)
	}
	if _, ok := in.reserve("a"); !ok {
		t.Error("re-checking the same instance must not count twice")
	}
	// A restarted ferryd still counts them.
	again, err := newInbound(dir, 2, time.Minute, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	again.now = in.now
	if _, ok := again.reserve("c"); ok {
		t.Error("slots forgotten across a restart")
	}
	in.release("a")
	if _, ok := in.reserve("c"); !ok {
		t.Error("after a release")
	}
	// Reservations lapse after a minute, taken slots after an hour.
	now = now.Add(2 * time.Minute)
	if n, ok := in.reserve("d"); !ok || n != 2 {
		t.Errorf("a lapsed reservation still counts: %d %v", n, ok)
	}
	now = now.Add(2 * time.Hour)
	if n, ok := in.reserve("e"); !ok || n != 1 {
		t.Errorf("an expired taken slot still counts: %d %v", n, ok)
	}
	os.WriteFile(filepath.Join(dir, "inbound.json"), []byte("{torn"), 0o600)
	if torn, err := newInbound(dir, 2, time.Minute, time.Hour); err == nil || torn == nil {
		t.Errorf("a torn slots file: %v %v", torn, err)
	}
}

// In native mode ferryd keeps its Service record alive as nova-compute does:
// report_count one higher every report_interval, through the conductor.
func TestHeartbeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNova()
		log, out := testLog(t)
		h := &Heartbeat{Host: "src", Cond: NewConductor(n), Interval: 10 * time.Second, Log: log}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { h.Run(ctx); close(done) }()
		time.Sleep(16 * time.Second) // not registered yet: it says so, and keeps trying
		if !strings.Contains(out.String(), "service heartbeat failed") {
			t.Errorf("no warning while the Service is missing:\n%s", out.String())
		}
		n.mu.Lock()
		n.service = map[string]any{"id": 3, "host": "src", "binary": "nova-compute", "report_count": 41}
		n.mu.Unlock()
		time.Sleep(21 * time.Second)
		n.mu.Lock()
		rc := n.service["report_count"]
		n.mu.Unlock()
		if rc != float64(43) {
			t.Errorf("report_count = %v after two intervals, want 43", rc)
		}
		if saves := n.entries("Service.save"); len(saves) != 2 || saves[0] != "Service.save report_count=42" {
			t.Errorf("saves %v", saves)
		}
		cancel()
		<-done
	})
}
