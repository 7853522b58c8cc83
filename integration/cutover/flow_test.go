//go:build integration

package cutover_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/testlog"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
)

// A host goes from the stock shape to companion mode and back under a
// steady stream of casts to compute.<host> (a Python oslo client, 50 a
// second): `ferryd cutover to-companion` stops the stand-in nova-compute,
// gives ferryd's queue the traffic, moves the backlog, sets the policy,
// edits control_exchange and starts nova-compute on ferry-<host>; ferryd's
// companion-mode server (rpc/oslo, as the ferryd user) passes the start
// checks and forwards; then ferryd stops and `ferryd cutover to-stock`
// undoes it all. Every cast reaches nova-compute exactly once, in both
// shapes, and what nova-compute casts to the conductor through its private
// exchange reaches a queue bound on Nova's exchange (the policy).
func TestCutOverBothWays(t *testing.T) {
	e := newEnv(t, "cut-1.lab")
	ctx := context.Background()
	novaAdmin := admin(t, e.url(t, e.nova), "nova")
	if err := novaAdmin.Declare(ctx, "ferry-test-conductor", "ferry-test-conductor"); err != nil {
		t.Fatal(err)
	}
	e.startNova(t)
	client := exec.Command("/usr/bin/python3", novaPy(), "client", e.nova.URL(e.vhost), e.host, e.dir)
	client.Stderr = testlog.Writer(t)
	var out strings.Builder
	client.Stdout = &out
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	stopClient := func() int {
		_ = os.WriteFile(filepath.Join(e.dir, "stop-client"), nil, 0o644)
		if err := client.Wait(); err != nil {
			t.Fatalf("client: %v", err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(out.String()))
		if err != nil {
			t.Fatalf("client said %q", out.String())
		}
		return n
	}
	t.Cleanup(func() {
		if client.ProcessState == nil {
			stopClient()
		}
	})
	time.Sleep(time.Second)

	e.cutover(t, "to-companion")
	if b, _ := os.ReadFile(e.novaConf); !strings.Contains(string(b), "control_exchange = ferry-cut-1.lab\n") ||
		!strings.Contains(string(b), "# kept\n") {
		t.Errorf("nova.conf after to-companion:\n%s", b)
	}
	check := oslo.CompanionCheck{URL: e.url(t, e.ferryd), NovaComputeExchange: "ferry-" + e.host, NovaComputeQueue: "compute." + e.host}
	if err := oslo.CheckCompanion(ctx, check); err != nil {
		t.Fatalf("companion checks after to-companion: %v", err)
	}
	srv, err := oslo.NewServer(oslo.ServerOptions{URL: e.url(t, e.ferryd), Server: e.host, Queue: "ferry.compute." + e.host,
		Forward: &oslo.Forward{To: "compute." + e.host}, Log: testLog(t)}, &oslo.Dispatcher{})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-served:
		t.Fatalf("companion server: %v", err)
	}
	q0, err := novaAdmin.Inspect(ctx, "ferry-test-conductor")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	q1, err := novaAdmin.Inspect(ctx, "ferry-test-conductor")
	if err != nil {
		t.Fatal(err)
	}
	if q1.Messages <= q0.Messages {
		t.Errorf("nova-compute's casts to the conductor through ferry-%s: %d then %d on Nova's exchange, want more (alternate-exchange)",
			e.host, q0.Messages, q1.Messages)
	}
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, oslo.ErrServerClosed) {
		t.Fatalf("companion server: %v", err)
	}

	e.cutover(t, "to-stock")
	time.Sleep(time.Second)
	sent := stopClient()
	var rs []record
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if rs = e.records(t); len(rs) >= sent || time.Now().After(deadline) {
			break
		}
	}
	time.Sleep(time.Second) // any duplicate after the last
	rs = e.records(t)
	seen := make([]int, sent)
	byExchange := map[string]int{}
	for _, r := range rs {
		if r.Seq < 0 || r.Seq >= sent {
			t.Fatalf("record of a cast never sent: %+v", r)
		}
		seen[r.Seq]++
		byExchange[r.Exchange]++
	}
	var lost, twice []int
	for i, n := range seen {
		switch {
		case n == 0:
			lost = append(lost, i)
		case n > 1:
			twice = append(twice, i)
		}
	}
	if len(lost) > 0 || len(twice) > 0 {
		t.Errorf("%d casts sent: lost %v, served more than once %v", sent, lost, twice)
	}
	if byExchange["nova"] == 0 || byExchange["ferry-"+e.host] == 0 {
		t.Errorf("casts served by control exchange %v, want some in each shape", byExchange)
	}
	t.Logf("%d casts sent, each served once: %v", sent, byExchange)

	if b, _ := os.ReadFile(e.novaConf); strings.Contains(string(b), "control_exchange") || !strings.Contains(string(b), "# kept\n") {
		t.Errorf("nova.conf after to-stock:\n%s", b)
	}
	if fi, _ := os.Stat(e.novaConf); fi.Mode().Perm() != 0o640 {
		t.Errorf("nova.conf mode %v, want 0640 kept", fi.Mode().Perm())
	}
	out2, _ := exec.Command("rabbitmqctl", "-q", "list_policies", "-p", e.vhost).CombinedOutput()
	if strings.Contains(string(out2), "ferry-"+e.host) {
		t.Errorf("policy left after to-stock:\n%s", out2)
	}
	if _, err := novaAdmin.Inspect(ctx, "ferry.compute."+e.host); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("ferryd's queue after to-stock: %v, want it deleted", err)
	}
	// Run again: converges, and changes nothing.
	e.cutover(t, "to-stock")
}

// ferryd refuses to serve a host that was not cut over, naming what is
// missing: first nova-compute's private exchange (nova-compute not started
// on it), then, with the exchange there, the alternate-exchange policy;
// with the policy set (a host name with dots: the pattern escapes them)
// the checks pass. They run as the least-privilege ferryd user.
func TestCutOverStartCheckRefuses(t *testing.T) {
	e := newEnv(t, "cut-2.lab")
	ctx := context.Background()
	if err := admin(t, e.url(t, e.nova), "nova").Declare(ctx, "unrelated", "unrelated"); err != nil { // Nova's exchange exists
		t.Fatal(err)
	}
	check := oslo.CompanionCheck{URL: e.url(t, e.ferryd), NovaComputeExchange: "ferry-" + e.host, NovaComputeQueue: "compute." + e.host}
	err := oslo.CheckCompanion(ctx, check)
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "nova-compute has not started on its private exchange") {
		t.Errorf("checks without ferry-%s = %v, want not found, naming nova-compute", e.host, err)
	}
	t.Logf("without the exchange: %v", err)
	// nova-compute's own declaration of its queue on its private exchange.
	if err := admin(t, e.url(t, e.nova), "ferry-"+e.host).Declare(ctx, "compute."+e.host, "compute."+e.host); err != nil {
		t.Fatal(err)
	}
	err = oslo.CheckCompanion(ctx, check)
	if !errors.Is(err, oslo.ErrNoAlternate) || !strings.Contains(err.Error(), "run `ferryd cutover to-companion`") {
		t.Errorf("checks without the policy = %v, want ErrNoAlternate saying what to run", err)
	}
	t.Logf("without the policy: %v", err)
	ctl(t, "set_policy", "-p", e.vhost, "--apply-to", "exchanges", "--priority", "100", "ferry-"+e.host, `^ferry-cut-2\.lab$`,
		`{"alternate-exchange":"nova"}`)
	if err := oslo.CheckCompanion(ctx, check); err != nil {
		t.Errorf("checks with the policy: %v", err)
	}
}
