//go:build integration

package oslo_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"opendev.org/x/ferry/rpc/oslo"
)

// novaObject is the nova_object primitive envelope.
type novaObject struct {
	Name      string          `json:"nova_object.name"`
	Namespace string          `json:"nova_object.namespace"`
	Version   string          `json:"nova_object.version"`
	Data      json.RawMessage `json:"nova_object.data"`
	Changes   []string        `json:"nova_object.changes"`
}

// TestNovaComputeAPI: python3-nova's ComputeAPI calls a Go server with real
// Nova objects; Go decodes them into structs and echoes the Instance back
// unchanged, and the Python side gets back the very object it sent.
func TestNovaComputeAPI(t *testing.T) {
	type instance struct {
		UUID   string     `json:"uuid"`
		Host   string     `json:"host"`
		Task   string     `json:"task_state"`
		Flavor novaObject `json:"flavor"`
	}
	got := make(chan instance, 1)
	casts := make(chan map[string]json.RawMessage, 1)
	mk := func(host string, methods map[string]oslo.Handler) {
		srv, err := oslo.NewServer(oslo.ServerOptions{URL: mustURL(t, vhost), Server: host, Log: testLog(t)},
			&oslo.Dispatcher{Endpoints: []oslo.Endpoint{{Version: "6.4", Methods: methods}}})
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(context.Background())
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
		})
		<-srv.Ready()
	}
	mk("dest1", map[string]oslo.Handler{"check_can_live_migrate_destination": oslo.HandlerFunc(
		func(_ context.Context, r *oslo.Request) (any, error) {
			var obj novaObject
			if _, err := r.Arg("instance", &obj); err != nil {
				return nil, err
			}
			var inst instance
			if err := json.Unmarshal(obj.Data, &inst); err != nil {
				return nil, err
			}
			if obj.Name != "Instance" || obj.Namespace != "nova" || obj.Version != "2.7" {
				t.Errorf("instance primitive header = %+v", obj)
			}
			got <- inst
			return r.Args["instance"], nil // echoed unchanged
		})})
	mk("src1", map[string]oslo.Handler{"live_migration": oslo.HandlerFunc(
		func(_ context.Context, r *oslo.Request) (any, error) {
			casts <- r.Args
			return nil, nil
		})})

	out, err := exec.Command("/usr/bin/python3", filepath.Join(pyDir(), "nova_api.py"), broker.URL(vhost), "dest1", "src1").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("nova_api.py: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var res struct {
		ReturnedClass string `json:"returned_class"`
		EchoEqual     bool   `json:"echo_equal"`
		EchoDiff      any    `json:"echo_diff"`
		EchoDataDiff  any    `json:"echo_data_diff"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("nova_api.py said %s", out)
	}
	if res.ReturnedClass != "Instance" || !res.EchoEqual {
		t.Errorf("the echoed Instance came back as %s, equal=%v; differences (sent, received): %v; in nova_object.data: %v",
			res.ReturnedClass, res.EchoEqual, res.EchoDiff, res.EchoDataDiff)
	}
	inst := <-got
	var flavor struct {
		MemoryMB int `json:"memory_mb"`
	}
	_ = json.Unmarshal(inst.Flavor.Data, &flavor)
	if inst.UUID != "f6a9e4d2-3b1c-4c55-9d1e-0c6f1a2b3c4d" || inst.Host != "src1" || inst.Task != "migrating" ||
		inst.Flavor.Name != "Flavor" || flavor.MemoryMB != 256 {
		t.Errorf("decoded instance = %+v (flavor %+v)", inst, flavor)
	}
	select {
	case a := <-casts:
		var mig, md novaObject
		_ = json.Unmarshal(a["migration"], &mig)
		_ = json.Unmarshal(a["migrate_data"], &md)
		var dest string
		_ = json.Unmarshal(a["dest"], &dest)
		if dest != "dest1" || mig.Name != "Migration" || mig.Version != "1.7" || md.Name != "LibvirtLiveMigrateData" || md.Version != "1.10" {
			t.Errorf("live_migration cast args: dest=%q migration=%s/%s migrate_data=%s/%s", dest, mig.Name, mig.Version, md.Name, md.Version)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("live_migration cast not received")
	}
}
