//go:build integration

package stack_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/stack"
)

// orderSample is one look at a live migration's records through the API.
// Each pair is read in the order in which a ferryd keeping Zed's order
// passes at any interleaving with its writes: the later read of a pair
// sees at least what the earlier one implied.
type orderSample struct {
	status1 string // then
	task1   *string

	task2  *string // then
	claim2 int     // allocations the migration's consumer holds

	claim3  int // then
	status3 string
}

// watchOrder samples the newest live migration of server (one started
// after the call) through the API until the returned function is called
// with the status the migration ended in; that function checks what was
// seen against Zed's order (issue 12, item 3):
//   - on every path, the migration's status is saved last: a final status
//     is seen only with the task state cleared;
//   - on a rollback, Placement gives the instance back its claim before the
//     task state is cleared: a cleared task state is seen only with the
//     migration's consumer holding nothing;
//   - on success, the status becomes completed before the claim is
//     released: a released claim is seen only with the status completed.
func watchOrder(ctx context.Context, t *testing.T, a *stack.API, server string) (check func(final string)) {
	t.Helper()
	before, err := a.Migrations(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var samples []orderSample
	var uuid string
	wg.Go(func() { // owner: check (cancels and waits)
		status := func() string {
			ms, err := a.Migrations(wctx, server)
			for _, m := range ms {
				if err == nil && m.UUID == uuid {
					return m.Status
				}
			}
			return ""
		}
		task := func() *string {
			sv, err := a.GetServer(wctx, server)
			if err != nil {
				return new(string) // unknown: neither cleared nor migrating
			}
			return sv.TaskState
		}
		claim := func() int {
			al, err := a.Allocations(wctx, uuid)
			if err != nil {
				return -1
			}
			return len(al)
		}
		for wctx.Err() == nil {
			if uuid == "" {
				if ms, err := a.Migrations(wctx, server); err == nil && len(ms) > len(before) {
					uuid = ms[0].UUID
				}
				time.Sleep(100 * time.Millisecond)
				continue
			}
			var s orderSample
			s.status1 = status()
			s.task1 = task()
			s.task2 = task()
			s.claim2 = claim()
			s.claim3 = claim()
			s.status3 = status()
			if wctx.Err() == nil {
				samples = append(samples, s)
			}
		}
	})
	return func(final string) {
		t.Helper()
		cancel()
		wg.Wait()
		if msg := orderViolation(samples, final); msg != "" {
			t.Errorf("migration %s (ended %s) broke Zed's order: %s", uuid, final, msg)
		}
		t.Logf("order: %d samples of migration %s, which ended %s", len(samples), uuid, final)
	}
}

// orderViolation is the first sample, if any, that Zed's order forbids.
func orderViolation(samples []orderSample, final string) string {
	// An error leaves the task state to whoever repairs the instance.
	terminal := map[string]bool{"completed": true, "failed": true, "cancelled": true}
	rollback := final == "failed" || final == "cancelled"
	migrating, held := false, false
	for i, s := range samples {
		cleared := func(ts *string) bool { return ts == nil }
		if terminal[s.status1] && !cleared(s.task1) {
			return fmt.Sprintf("sample %d: status %s while the task state was still %q", i, s.status1, *s.task1)
		}
		if s.task1 != nil && *s.task1 == "migrating" {
			migrating = true
		}
		if migrating && rollback && cleared(s.task2) && s.claim2 > 0 {
			return fmt.Sprintf("sample %d: the task state cleared while the migration still held %d claims", i, s.claim2)
		}
		if s.claim3 > 0 {
			held = true
		}
		if held && final == "completed" && s.claim3 == 0 && s.status3 != "completed" {
			return fmt.Sprintf("sample %d: the migration's claim released while its status was %s", i, s.status3)
		}
	}
	if !migrating || !held {
		return fmt.Sprintf("the samples never saw the migration run (migrating %v, claim held %v): the watch proves nothing", migrating, held)
	}
	return ""
}

func TestOrderViolation(t *testing.T) {
	migrating, cleared := new(string), (*string)(nil)
	*migrating = "migrating"
	run := orderSample{status1: "running", task1: migrating, task2: migrating, claim2: 1, claim3: 1, status3: "running"}
	tests := []struct {
		name    string
		final   string
		samples []orderSample
		bad     bool
	}{
		{"rollback in Zed's order", "cancelled", []orderSample{run,
			{status1: "running", task1: migrating, task2: migrating, claim2: 0, claim3: 0, status3: "running"},
			{status1: "running", task1: cleared, task2: cleared, claim2: 0, claim3: 0, status3: "cancelled"},
			{status1: "cancelled", task1: cleared, task2: cleared, claim2: 0, claim3: 0, status3: "cancelled"}}, false},
		{"task state cleared while the claim is held", "cancelled", []orderSample{run,
			{status1: "running", task1: cleared, task2: cleared, claim2: 1, claim3: 1, status3: "running"}}, true},
		{"status final before the task state", "failed", []orderSample{run,
			{status1: "failed", task1: migrating, task2: cleared, claim2: 0, claim3: 0, status3: "failed"}}, true},
		{"success in Zed's order", "completed", []orderSample{run,
			{status1: "running", task1: cleared, task2: cleared, claim2: 1, claim3: 1, status3: "completed"},
			{status1: "completed", task1: cleared, task2: cleared, claim2: 0, claim3: 0, status3: "completed"}}, false},
		{"claim released before completed", "completed", []orderSample{run,
			{status1: "running", task1: cleared, task2: cleared, claim2: 0, claim3: 0, status3: "running"}}, true},
		{"never saw it run", "completed", []orderSample{
			{status1: "completed", task1: cleared, task2: cleared, claim2: 0, claim3: 0, status3: "completed"}}, true},
	}
	for _, tt := range tests {
		if got := orderViolation(tt.samples, tt.final); (got != "") != tt.bad {
			t.Errorf("%s: %q", tt.name, got)
		}
	}
}
