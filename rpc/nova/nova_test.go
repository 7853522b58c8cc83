package nova

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
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
	if o.Str("status") != "accepted" || o.Int("id") != 12 || o.Has("memory_total") == false || o.Get("memory_total", new(int)) {
		t.Errorf("decoded %+v", o)
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
	if len(o.Changes) != 0 || o.Str("updated_at") != "2026-11-26T04:04:19Z" {
		t.Errorf("after Apply: changes %v updated_at %q", o.Changes, o.Str("updated_at"))
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
	if len(o.Changes) != 0 || o.Str("updated_at") == "" {
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
	e := Context{"roles": json.RawMessage(`["member"]`), "is_admin": json.RawMessage("false")}.Elevated()
	if string(e["is_admin"]) != "true" || string(e["roles"]) != `["member","admin"]` {
		t.Errorf("elevated %v", e)
	}
}

func TestInboundLimit(t *testing.T) {
	in := &inbound{max: 2, hold: time.Minute, slots: map[string]slot{}}
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
	in.release("a")
	if _, ok := in.reserve("c"); !ok {
		t.Error("after a release")
	}
	in.slots["c"] = slot{expires: time.Now().Add(-time.Second)}
	if _, ok := in.reserve("d"); !ok {
		t.Error("a lapsed reservation still counts")
	}
}
