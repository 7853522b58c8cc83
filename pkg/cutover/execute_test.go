package cutover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// fake is a broker, policy store, runner and option editor that records
// every call in one list, so the order across them is checked.
type fake struct {
	calls     []string
	queues    map[string]*QueueInfo // missing: not found
	bindings  map[string]bool       // "queue exchange key"
	policies  map[string]Policy
	options   map[string]string
	failOn    string // a call prefix that fails
	onStop    func()
	dupsOnMov int
}

func newFake() *fake {
	return &fake{queues: map[string]*QueueInfo{}, bindings: map[string]bool{}, policies: map[string]Policy{}, options: map[string]string{}}
}

func (f *fake) rec(format string, a ...any) error {
	c := fmt.Sprintf(format, a...)
	f.calls = append(f.calls, c)
	if f.failOn != "" && strings.HasPrefix(c, f.failOn) {
		return fmt.Errorf("%s: %w", c, errdefs.ErrUnavailable)
	}
	return nil
}

var notFound = fmt.Errorf("404: %w", errdefs.ErrNotFound)

func (f *fake) Declare(_ context.Context, q, ex, key string) error {
	if err := f.rec("declare %s %s %s", q, ex, key); err != nil {
		return err
	}
	if f.queues[q] == nil {
		f.queues[q] = &QueueInfo{}
	}
	f.bindings[q+" "+ex+" "+key] = true
	return nil
}

func (f *fake) Unbind(_ context.Context, q, ex, key string) error {
	if err := f.rec("unbind %s %s %s", q, ex, key); err != nil {
		return err
	}
	if f.queues[q] == nil {
		return notFound
	}
	delete(f.bindings, q+" "+ex+" "+key)
	return nil
}

func (f *fake) Inspect(_ context.Context, q string) (QueueInfo, error) {
	if err := f.rec("inspect %s", q); err != nil {
		return QueueInfo{}, err
	}
	if f.queues[q] == nil {
		return QueueInfo{}, notFound
	}
	return *f.queues[q], nil
}

func (f *fake) Move(_ context.Context, from, to string) (Moved, error) {
	if err := f.rec("move %s %s", from, to); err != nil {
		return Moved{}, err
	}
	if f.queues[from] == nil {
		return Moved{}, notFound
	}
	n := f.queues[from].Messages
	f.queues[to].Messages += n - f.dupsOnMov
	f.queues[from].Messages = 0
	return Moved{Messages: n - f.dupsOnMov, Duplicates: f.dupsOnMov}, nil
}

func (f *fake) DeleteQueueIfEmpty(_ context.Context, q string) error {
	if err := f.rec("delete %s", q); err != nil {
		return err
	}
	if qi := f.queues[q]; qi != nil && qi.Messages == 0 && qi.Consumers == 0 {
		delete(f.queues, q)
	}
	return nil
}

func (f *fake) SetPolicy(_ context.Context, p Policy) error {
	if err := f.rec("set-policy %s %s %s", p.Name, p.Pattern, p.DefinitionJSON()); err != nil {
		return err
	}
	f.policies[p.Name] = p
	return nil
}

func (f *fake) ClearPolicy(_ context.Context, vh, name string) error {
	if err := f.rec("clear-policy %s %s", vh, name); err != nil {
		return err
	}
	delete(f.policies, name)
	return nil
}

func (f *fake) Run(_ context.Context, argv []string) ([]byte, error) {
	if err := f.rec("run %s", strings.Join(argv, " ")); err != nil {
		return nil, err
	}
	if argv[0] == "stop" && f.onStop != nil {
		f.onStop()
	}
	return nil, nil
}

func (f *fake) Set(path, section, option, value string) error {
	if err := f.rec("set %s", option); err != nil {
		return err
	}
	f.options[option] = value
	return nil
}

func (f *fake) Unset(path, section, option string) error {
	if err := f.rec("unset %s", option); err != nil {
		return err
	}
	delete(f.options, option)
	return nil
}

func (f *fake) executor() *Executor {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return &Executor{Broker: f, Policies: f, Run: f, Options: f, Log: logrus.NewEntry(l)}
}

var small = Facts{Host: "h1", Exchange: "nova", NovaComputeExchange: "ferry-h1", FerrydQueue: "ferry.compute.h1", VHost: "vh",
	PolicyPriority: 100, NovaComputeConfig: "/nova.conf", Stop: []string{"stop"}, Start: []string{"start"}}

// The stock host (nova-compute consuming compute.h1 with two messages
// waiting) goes to companion mode and back; the calls come in the plan's
// order, and each direction's end state is the shape it promises.
func TestExecuteBothWays(t *testing.T) {
	f := newFake()
	f.queues["compute.h1"] = &QueueInfo{Messages: 2, Consumers: 1}
	f.bindings["compute.h1 nova compute.h1"] = true
	f.onStop = func() { f.queues["compute.h1"].Consumers = 0 }
	if err := f.executor().Execute(context.Background(), Plan(ToCompanion, small)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"run stop", "inspect compute.h1", "declare ferry.compute.h1 nova compute.h1", "unbind compute.h1 nova compute.h1",
		"inspect compute.h1", "move compute.h1 ferry.compute.h1", `set-policy ferry-h1 ^ferry-h1$ {"alternate-exchange":"nova"}`,
		"set control_exchange", "run start",
	}
	if diff := cmp.Diff(want, f.calls); diff != "" {
		t.Errorf("to-companion calls (-want +got):\n%s", diff)
	}
	if f.bindings["compute.h1 nova compute.h1"] || !f.bindings["ferry.compute.h1 nova compute.h1"] {
		t.Errorf("bindings after to-companion: %v", f.bindings)
	}
	if f.queues["ferry.compute.h1"].Messages != 2 || f.options["control_exchange"] != "ferry-h1" || len(f.policies) != 1 {
		t.Errorf("after to-companion: queues %v, options %v, policies %v", f.queues, f.options, f.policies)
	}

	f.calls = nil
	if err := f.executor().Execute(context.Background(), Plan(ToStock, small)); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"inspect ferry.compute.h1", "run stop", "inspect compute.h1", "declare compute.h1 nova compute.h1",
		"unbind ferry.compute.h1 nova compute.h1", "inspect ferry.compute.h1", "move ferry.compute.h1 compute.h1",
		"delete ferry.compute.h1", "clear-policy vh ferry-h1", "unset control_exchange", "run start",
	}
	if diff := cmp.Diff(want, f.calls); diff != "" {
		t.Errorf("to-stock calls (-want +got):\n%s", diff)
	}
	if _, ok := f.queues["ferry.compute.h1"]; ok || f.queues["compute.h1"].Messages != 2 || len(f.options) != 0 || len(f.policies) != 0 {
		t.Errorf("after to-stock: queues %v, options %v, policies %v", f.queues, f.options, f.policies)
	}
}

// A cut-over that crashed after any step converges when it is run again
// from the start: every step accepts the state a later step left.
func TestExecuteConvergesAfterCrash(t *testing.T) {
	for _, d := range []Direction{ToCompanion, ToStock} {
		n := len(Plan(d, small))
		for crash := 1; crash <= n; crash++ {
			f := newFake()
			f.queues["compute.h1"] = &QueueInfo{Messages: 3}
			if d == ToStock {
				f.queues["ferry.compute.h1"] = &QueueInfo{Messages: 3}
				f.bindings["ferry.compute.h1 nova compute.h1"] = true
			} else {
				f.bindings["compute.h1 nova compute.h1"] = true
			}
			e := f.executor()
			if err := e.Execute(context.Background(), Plan(d, small)[:crash]); err != nil {
				t.Fatalf("%s, first run to step %d: %v", d, crash, err)
			}
			if err := e.Execute(context.Background(), Plan(d, small)); err != nil {
				t.Errorf("%s, run again after a crash after step %d: %v", d, crash, err)
			}
		}
	}
	// A host that never had ferryd's queue goes to stock all the same.
	f := newFake()
	f.queues["compute.h1"] = &QueueInfo{}
	if err := f.executor().Execute(context.Background(), Plan(ToStock, small)); err != nil {
		t.Errorf("to-stock without ferryd's queue: %v", err)
	}
}

// A consumer left on the queue whose backlog would move stops the
// cut-over before anything changed, naming the step and what to stop.
func TestExecuteRefusesConsumers(t *testing.T) {
	f := newFake()
	f.queues["compute.h1"] = &QueueInfo{Consumers: 1} // the stop command did not stop nova-compute
	err := f.executor().Execute(context.Background(), Plan(ToCompanion, small))
	se, ok := errors.AsType[*StepError](err)
	if !ok || se.N != 2 || !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "nova-compute still consumes compute.h1") {
		t.Fatalf("to-companion with nova-compute running = %v", err)
	}
	if diff := cmp.Diff([]string{"run stop", "inspect compute.h1"}, f.calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}

	f = newFake()
	f.queues["ferry.compute.h1"] = &QueueInfo{Consumers: 1}
	err = f.executor().Execute(context.Background(), Plan(ToStock, small))
	if se, ok := errors.AsType[*StepError](err); !ok || se.N != 1 || !strings.Contains(err.Error(), "stop ferryd first") {
		t.Fatalf("to-stock with ferryd running = %v", err)
	}
	if len(f.calls) != 1 {
		t.Errorf("to-stock went on after refusing: %v", f.calls)
	}
}

// A failing step stops the cut-over there; the error names it.
func TestExecuteStopsAtFailure(t *testing.T) {
	f := newFake()
	f.queues["compute.h1"] = &QueueInfo{}
	f.failOn = "set-policy"
	err := f.executor().Execute(context.Background(), Plan(ToCompanion, small))
	if se, ok := errors.AsType[*StepError](err); !ok || se.N != 6 || se.Step.Kind != SetPolicy ||
		!strings.Contains(err.Error(), `step 6/8 "set the alternate-exchange policy" failed`) {
		t.Fatalf("Execute = %v", err)
	}
	if last := f.calls[len(f.calls)-1]; !strings.HasPrefix(last, "set-policy") {
		t.Errorf("went on after the failure: %v", f.calls)
	}
}

// Rabbitmqctl runs set_policy with the definition as JSON, and clears a
// policy only when the vhost lists it.
func TestRabbitmqctl(t *testing.T) {
	var ran [][]string
	listed := "[]"
	r := Rabbitmqctl{Argv: []string{"ssh", "rabbit1", "rabbitmqctl"}, Run: RunnerFunc(func(_ context.Context, argv []string) ([]byte, error) {
		ran = append(ran, argv)
		if argv[4] == "list_policies" {
			return []byte(listed), nil
		}
		return nil, nil
	})}
	p := Plan(ToCompanion, facts)[5].Policy
	if err := r.SetPolicy(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if err := r.ClearPolicy(context.Background(), "/", p.Name); err != nil {
		t.Fatal(err)
	}
	listed = `[{"vhost":"/","name":"ferry-cmp-1.example.org","pattern":"^ferry-cmp-1\\.example\\.org$"}]`
	if err := r.ClearPolicy(context.Background(), "/", p.Name); err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"ssh", "rabbit1", "rabbitmqctl", "-q", "set_policy", "-p", "/", "--apply-to", "exchanges", "--priority", "100",
			"ferry-cmp-1.example.org", `^ferry-cmp-1\.example\.org$`, `{"alternate-exchange":"nova"}`},
		{"ssh", "rabbit1", "rabbitmqctl", "-q", "list_policies", "-p", "/", "--formatter", "json"},
		{"ssh", "rabbit1", "rabbitmqctl", "-q", "list_policies", "-p", "/", "--formatter", "json"},
		{"ssh", "rabbit1", "rabbitmqctl", "-q", "clear_policy", "-p", "/", "ferry-cmp-1.example.org"},
	}
	if diff := cmp.Diff(want, ran); diff != "" {
		t.Errorf("rabbitmqctl runs (-want +got):\n%s", diff)
	}
}
