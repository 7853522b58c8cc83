package nova

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

// fakeNova plays the conductor (object_action, object_class_action_versions
// against an in-memory database, answering as conductor.py and the real
// conductor do) and records what goes to other computes; computes answers
// those.
type fakeNova struct {
	mu         sync.Mutex
	migrations map[int64]map[string]any
	instances  map[string]map[string]any
	service    map[string]any // this host's nova-compute Service, once registered
	log        []string       // every conductor action and compute call, in order
	computes   func(host, method string, args map[string]any) (json.RawMessage, error)
	fail       func(method string) error // makes conductor calls fail
}

func newFakeNova() *fakeNova {
	return &fakeNova{migrations: map[int64]map[string]any{}, instances: map[string]map[string]any{}}
}

func roundTrip(v any) map[string]any {
	b, _ := json.Marshal(v)
	var m map[string]any
	json.Unmarshal(b, &m)
	return m
}

func (n *fakeNova) add(s string) { n.mu.Lock(); n.log = append(n.log, s); n.mu.Unlock() }

func (n *fakeNova) entries(prefix string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, e := range n.log {
		if strings.HasPrefix(e, prefix) {
			out = append(out, e)
		}
	}
	return out
}

func (n *fakeNova) Call(ctx context.Context, t oslo.Target, method string, args any, o oslo.CallOptions) (json.RawMessage, error) {
	if bytes.Contains(o.Context, []byte("gAAAA")) {
		return nil, fmt.Errorf("a token was sent in the context: %s", o.Context)
	}
	a := roundTrip(args)
	if t.Topic != "conductor" {
		n.add(fmt.Sprintf("call %s %s", t.Server, method))
		if n.computes == nil {
			return json.RawMessage("null"), nil
		}
		return n.computes(t.Server, method, a)
	}
	n.mu.Lock()
	fail := n.fail
	n.mu.Unlock()
	if fail != nil {
		if err := fail(method); err != nil {
			return nil, err
		}
	}
	switch method {
	case "object_action":
		return n.objectAction(a)
	case "object_class_action_versions":
		return n.classAction(a)
	}
	return nil, oslo.NoSuchMethod(method)
}

func (n *fakeNova) Cast(ctx context.Context, t oslo.Target, method string, args any, o oslo.CallOptions) error {
	a := roundTrip(args)
	dd, _ := json.Marshal(a["destroy_disks"])
	n.add(fmt.Sprintf("cast %s %s destroy_disks=%s", t.Server, method, dd))
	return nil
}

func (n *fakeNova) objectAction(a map[string]any) (json.RawMessage, error) {
	obj := a["objinst"].(map[string]any)
	name, _ := obj["nova_object.name"].(string)
	data, _ := obj["nova_object.data"].(map[string]any)
	changes, _ := obj["nova_object.changes"].([]any)
	method := a["objmethod"].(string)
	kwargs, _ := a["kwargs"].(map[string]any)
	var fields []string
	for _, c := range changes {
		fields = append(fields, fmt.Sprintf("%s=%v", c, data[c.(string)]))
	}
	slices.Sort(fields)
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case name == "Migration" && method == "save":
		id := int64(data["id"].(float64))
		rec := n.migrations[id]
		for _, c := range changes {
			rec[c.(string)] = data[c.(string)]
		}
	case name == "Instance" && method == "save":
		uuid := data["uuid"].(string)
		rec := n.instances[uuid]
		if exp, ok := kwargs["expected_task_state"]; ok && exp != nil {
			want := fmt.Sprint(exp)
			if !strings.Contains(want, fmt.Sprint(rec["task_state"])) {
				n.log = append(n.log, "refused Instance.save "+strings.Join(fields, " "))
				return nil, &oslo.Failure{Class: "UnexpectedTaskStateError", Module: "nova.exception",
					Message: fmt.Sprintf("Unexpected task state: expecting %v but the actual state is %v", exp, rec["task_state"])}
			}
		}
		for _, c := range changes {
			rec[c.(string)] = data[c.(string)]
		}
	case name == "Service" && method == "save":
		n.service["report_count"] = data["report_count"]
	case name == "Instance" && method == "drop_migration_context", name == "InstanceFault" && method == "create":
	default:
		return nil, fmt.Errorf("fake conductor has no %s.%s", name, method)
	}
	n.log = append(n.log, fmt.Sprintf("%s.%s %s", name, method, strings.Join(fields, " ")))
	return json.RawMessage(`[{"obj_what_changed": []}, null]`), nil
}

func (n *fakeNova) classAction(a map[string]any) (json.RawMessage, error) {
	name, method := a["objname"].(string), a["objmethod"].(string)
	args, _ := a["args"].([]any)
	kwargs, _ := a["kwargs"].(map[string]any)
	n.mu.Lock()
	defer n.mu.Unlock()
	switch name + "." + method {
	case "Migration.get_by_id":
		n.log = append(n.log, "Migration.get_by_id")
		rec, ok := n.migrations[int64(args[0].(float64))]
		if !ok {
			return nil, &oslo.Failure{Class: "MigrationNotFound", Module: "nova.exception"}
		}
		return primitive("Migration", "1.7", rec), nil
	case "Instance.get_by_uuid":
		n.log = append(n.log, "Instance.get_by_uuid")
		rec, ok := n.instances[args[0].(string)]
		if !ok {
			return nil, &oslo.Failure{Class: "InstanceNotFound", Module: "nova.exception"}
		}
		return primitive("Instance", "2.7", rec), nil
	case "Service.get_by_host_and_binary":
		n.log = append(n.log, fmt.Sprintf("Service.get_by_host_and_binary %s %s", args[0], args[1]))
		if n.service == nil {
			return nil, &oslo.Failure{Class: "ServiceNotFound", Module: "nova.exception"}
		}
		return primitive("Service", "1.22", n.service), nil
	case "ComputeNode.get_first_node_by_host_for_old_compat":
		n.log = append(n.log, "ComputeNode.get_first_node_by_host_for_old_compat")
		return primitive("ComputeNode", "1.19", map[string]any{"host": args[0], "hypervisor_hostname": args[0].(string) + ".hv.example"}), nil
	case "InstanceActionEvent.event_start":
		n.log = append(n.log, fmt.Sprintf("event_start %s", args[1]))
		return json.RawMessage("null"), nil
	case "InstanceActionEvent.event_finish_with_failure":
		if kwargs["exc_val"] != nil {
			n.log = append(n.log, fmt.Sprintf("event_finish %s failed: %v", args[1], kwargs["exc_val"]))
		} else {
			n.log = append(n.log, fmt.Sprintf("event_finish %s", args[1]))
		}
		return json.RawMessage("null"), nil
	}
	return nil, fmt.Errorf("fake conductor has no %s.%s", name, method)
}

func primitive(name, version string, data map[string]any) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"nova_object.name": name, "nova_object.namespace": "nova",
		"nova_object.version": version, "nova_object.data": data})
	return b
}

// Test objects.
const (
	instUUID = "6a3e0000-0000-4000-8000-000000000001"
	migUUID  = "5f3c2a10-7e4b-4d8e-a1c2-000000000012"
	otherUID = "c0ffee00-0000-4000-8000-00000000a11e"
)

func (n *fakeNova) seed(host, dest string) (inst, mig *Object) {
	n.mu.Lock()
	n.instances[instUUID] = map[string]any{"uuid": instUUID, "host": host, "node": host, "task_state": "migrating",
		"vm_state": "active", "memory_mb": 3072, "flavor": roundTrip(mustObject("Flavor", "1.2", map[string]any{"memory_mb": 3072})),
		"info_cache": roundTrip(mustObject("InstanceInfoCache", "1.5", map[string]any{"network_info": "[]"}))}
	n.migrations[12] = map[string]any{"id": 12, "uuid": migUUID, "source_compute": host, "dest_compute": dest,
		"instance_uuid": instUUID, "status": "accepted"}
	n.mu.Unlock()
	return mustParse(primitive("Instance", "2.7", n.instances[instUUID])), mustParse(primitive("Migration", "1.7", n.migrations[12]))
}

func mustObject(name, version string, data map[string]any) *Object {
	return mustParse(primitive(name, version, data))
}

func mustParse(b json.RawMessage) *Object {
	o := &Object{}
	if err := json.Unmarshal(b, o); err != nil {
		panic(err)
	}
	return o
}

// fakeLibvirt is one host's libvirt: the domains defined there by uuid,
// each with its XML; err, when set, is every call's answer (unreachable).
type fakeLibvirt struct {
	mu      sync.Mutex
	domains map[string]string
	err     error
	cpu     virt.CPUFit
	files   map[string][]byte // ReadDisk by target
	dials   []string
}

func newFakeLibvirt() *fakeLibvirt {
	return &fakeLibvirt{domains: map[string]string{}, cpu: virt.CPUIdentical, files: map[string][]byte{}}
}

func (f *fakeLibvirt) open(ctx context.Context) (Libvirt, error) { return f.dial(ctx, "local") }

func (f *fakeLibvirt) dial(_ context.Context, uri string) (Libvirt, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dials = append(f.dials, uri)
	if f.err != nil {
		return nil, f.err
	}
	return f, nil
}

func (f *fakeLibvirt) DomainXML(_ context.Context, name string, _ bool) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", f.err
	}
	x, ok := f.domains[name]
	if !ok {
		return "", fmt.Errorf("lookup %s: %w", name, errdefs.ErrNotFound)
	}
	return x, nil
}

func (f *fakeLibvirt) MigratableXML(ctx context.Context, name string) (string, error) {
	return f.DomainXML(ctx, name, false)
}

func (f *fakeLibvirt) DomainState(ctx context.Context, name string) (virt.DomainState, error) {
	if _, err := f.DomainXML(ctx, name, false); err != nil {
		return virt.DomainState{}, err
	}
	return virt.DomainState{State: virt.StateRunning}, nil
}

func (f *fakeLibvirt) CompareCPU(context.Context, string, string) (virt.CPUFit, error) {
	return f.cpu, nil
}

func (f *fakeLibvirt) ReadDisk(_ context.Context, dom, target string, w io.Writer, max int64) (int64, error) {
	f.mu.Lock()
	b := f.files[target]
	f.mu.Unlock()
	n, err := w.Write(b)
	return int64(n), err
}

func (f *fakeLibvirt) Close() error { return nil }

func (f *fakeLibvirt) define(uuid, xml string) {
	f.mu.Lock()
	f.domains[uuid] = xml
	f.mu.Unlock()
}

// guestXML is a domain with a local disk, a config drive and a volume.
func guestXML(uuid, instances string) string {
	return fmt.Sprintf(`<domain type="qemu"><name>vm</name><uuid>%[1]s</uuid><cpu mode="custom"><model>qemu64</model></cpu><devices>
<disk type="file" device="disk"><driver name="qemu" type="qcow2"/><source file="%[2]s/%[1]s/disk"/><target dev="vda"/></disk>
<disk type="file" device="cdrom"><driver name="qemu" type="raw"/><source file="%[2]s/%[1]s/disk.config"/><target dev="hdd"/><readonly/></disk>
<disk type="block" device="disk"><source dev="/dev/null"/><target dev="vdb"/><serial>vol-1</serial></disk>
</devices></domain>`, uuid, instances)
}

// fakeEngine records what the source endpoints asked of the engine.
type fakeEngine struct {
	mu       sync.Mutex
	started  []migration.Request
	refused  map[string]string // id → reason
	commands []string
	list     []migration.Migration
	startErr error
}

func (e *fakeEngine) Start(_ context.Context, r migration.Request) (migration.Migration, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.startErr != nil {
		return migration.Migration{}, e.startErr
	}
	e.started = append(e.started, r)
	return migration.Migration{Request: r, Phase: migration.PhaseQueued}, nil
}

func (e *fakeEngine) Refuse(_ context.Context, r migration.Request, reason string) (migration.Migration, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.refused == nil {
		e.refused = map[string]string{}
	}
	e.refused[r.ID] = reason
	return migration.Migration{Request: r, Phase: migration.PhaseError, Reason: reason}, nil
}

func (e *fakeEngine) Abort(_ context.Context, id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.commands = append(e.commands, "abort "+id)
	return nil
}

func (e *fakeEngine) ForceComplete(_ context.Context, id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.commands = append(e.commands, "force-complete "+id)
	return nil
}

func (e *fakeEngine) List() []migration.Migration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]migration.Migration(nil), e.list...)
}

// fakePlacement records the settlements.
type fakePlacement struct {
	mu   sync.Mutex
	done []string
	err  error
}

func (p *fakePlacement) ReleaseMigration(_ context.Context, mig string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = append(p.done, "release "+mig)
	return p.err
}

func (p *fakePlacement) RevertMigration(_ context.Context, mig, inst string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = append(p.done, "revert "+mig+" to "+inst)
	return p.err
}

// logs captures a component's log lines.
type logs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logs) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func testLog(t *testing.T) (*logrus.Entry, *logs) {
	l := logrus.New()
	out := &logs{}
	l.SetOutput(io.MultiWriter(out, testWriter{t}))
	return logrus.NewEntry(l), out
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// request builds an incoming RPC the way rpc/oslo decodes one.
func request(t *testing.T, method string, args map[string]any) *oslo.Request {
	t.Helper()
	m := oslo.Message{Method: method, Version: "6.0", Args: map[string]json.RawMessage{},
		Context: map[string]json.RawMessage{"request_id": json.RawMessage(`"req-test"`), "auth_token": json.RawMessage(`"gAAAA-secret"`)}}
	for k, v := range args {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		m.Args[k] = b
	}
	return &oslo.Request{Message: m}
}

// tree lists every file under dir, for "nothing was removed" checks.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			out = append(out, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
