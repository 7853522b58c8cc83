//go:build integration

package stack_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"opendev.org/x/ferry/integration/stack"
	"opendev.org/x/ferry/pkg/migration"
)

// ferryCLI runs the built `ferry` as an admin would: clouds.yaml for the
// cloud, the stack's ferry.yaml for the hosts' ferryds, stdout and stderr
// kept apart (stderr is a file, not a terminal).
type ferryCLI struct {
	bin, config string
}

func buildCLI(t *testing.T) ferryCLI {
	t.Helper()
	bin, err := stack.Build(context.Background(), t.TempDir(), "./cmd/ferry")
	if err != nil {
		t.Fatal(err)
	}
	return ferryCLI{bin: bin, config: stack.CLIConfig()}
}

type cliResult struct {
	code           int
	stdout, stderr string
}

func (c ferryCLI) command(ctx context.Context, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = append(os.Environ(), "OS_CLIENT_CONFIG_FILE="+st.CloudsYAML, "OS_CLOUD="+stack.Cloud, "FERRY_CONFIG="+c.config)
	var out, errw bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errw
	return cmd, &out, &errw
}

func (c ferryCLI) run(ctx context.Context, t *testing.T, args ...string) cliResult {
	t.Helper()
	cmd, out, errw := c.command(ctx, args...)
	err := cmd.Run()
	r := cliResult{code: cmd.ProcessState.ExitCode(), stdout: out.String(), stderr: errw.String()}
	if err != nil && r.code < 0 {
		t.Fatalf("ferry %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("$ ferry %s → exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// start runs a command in the background; wait returns its result.
func (c ferryCLI) start(ctx context.Context, t *testing.T, args ...string) (wait func() cliResult) {
	t.Helper()
	cmd, out, errw := c.command(ctx, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan cliResult, 1)
	go func() { // owner: wait (and the test's cleanup)
		_ = cmd.Wait()
		done <- cliResult{code: cmd.ProcessState.ExitCode(), stdout: out.String(), stderr: errw.String()}
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	var r *cliResult
	return func() cliResult {
		if r == nil {
			got := <-done
			r = &got
			t.Logf("$ ferry %s → exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
			done <- got // for the cleanup
		}
		return *r
	}
}

// view is the part of the CLI's migration JSON the test reads.
type view struct {
	ID        int64  `json:"id" yaml:"id"`
	UUID      string `json:"uuid" yaml:"uuid"`
	Status    string `json:"status" yaml:"status"`
	Source    string `json:"source_compute" yaml:"source_compute"`
	Dest      string `json:"dest_compute" yaml:"dest_compute"`
	FerryNote string `json:"ferry_note" yaml:"ferry_note"`
	Ferry     *struct {
		Phase  string `json:"phase" yaml:"phase"`
		Reason string `json:"reason" yaml:"reason"`
		Record struct {
			DowntimeSeconds float64 `json:"downtime_seconds" yaml:"downtime_seconds"`
			MemoryBytes     uint64  `json:"memory_bytes" yaml:"memory_bytes"`
		} `json:"record" yaml:"record"`
		Actions []struct {
			Action string `json:"action" yaml:"action"`
			Reason string `json:"reason" yaml:"reason"`
		} `json:"actions" yaml:"actions"`
		Job *struct {
			Disks        []string `json:"disks" yaml:"disks"`
			Copy         string   `json:"copy" yaml:"copy"`
			MigrationURI string   `json:"migration_uri" yaml:"migration_uri"`
			TLS          bool     `json:"tls" yaml:"tls"`
		} `json:"job" yaml:"job"`
	} `json:"ferry" yaml:"ferry"`
}

// running waits until the server's newest live migration runs and ferry's
// record of it says so, through `ferry migration list -f json`.
func (c ferryCLI) running(ctx context.Context, t *testing.T, server string, wait func() cliResult) view {
	t.Helper()
	for end := time.Now().Add(3 * time.Minute); time.Now().Before(end); time.Sleep(time.Second) {
		r := c.run(ctx, t, "migration", "list", "--server", server, "--status", "running", "-f", "json")
		if r.code != 0 {
			t.Fatalf("migration list: exit %d", r.code)
		}
		var vs []view
		if err := json.Unmarshal([]byte(r.stdout), &vs); err != nil {
			t.Fatalf("migration list -f json: %v\n%s", err, r.stdout)
		}
		if len(vs) > 0 && vs[0].Ferry != nil && vs[0].Ferry.Phase == string(migration.PhaseRunning) {
			return vs[0]
		}
	}
	res := wait()
	t.Fatalf("no running migration with ferry's record within 3 minutes; live-migrate: exit %d\n%s", res.code, res.stderr)
	return view{}
}

// TestFerryCLI: an admin's session with `ferry` on the real cloud, ferryd
// in companion mode on both hosts and its status API on the management
// network (TLS, Keystone tokens): live-migrate --wait (a non-terminal:
// plain progress lines) of a dirtying guest under an 8 MiB/s cap, the
// migration found running in `migration list -f json` with ferry's record
// beside Nova's, aborted with `migration abort` (the wait exits 1, Nova
// says cancelled); again, force-completed with `migration force-complete`
// (the wait exits 0, Nova says completed); `migration show` (-f json, -f
// yaml, table) carries ferry's record: phase, copy set and mode, the
// migration network, TLS, downtime, the force-complete action, and draws
// its picture (--svg); `drain lab-b` takes it and an idle guest back to
// lab-a (drained); and with the ferryds unreachable the CLI shows Nova's
// view alone, saying why.
func TestFerryCLI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	fs := companions(t, ctx)
	cli := buildCLI(t)
	a, sv := bootDirty(t, ctx, "ferry-cli")
	if err := st.CapMigration(ctx, 8); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.CapMigration(context.Background(), 0) })

	// Abort.
	wait := cli.start(ctx, t, "live-migrate", sv.Name, "--host", "lab-b", "--wait", "-f", "json")
	run := cli.running(ctx, t, sv.ID, wait)
	if run.Source != "lab-a" || run.Dest != "lab-b" || run.FerryNote != "" {
		t.Errorf("the running migration: %+v", run)
	}
	if r := cli.run(ctx, t, "migration", "abort", sv.ID, strconv.FormatInt(run.ID, 10)); r.code != 0 {
		t.Fatalf("migration abort: exit %d", r.code)
	}
	res := wait()
	var ended view
	if err := json.Unmarshal([]byte(res.stdout), &ended); err != nil {
		t.Fatalf("live-migrate -f json: %v\n%s", err, res.stdout)
	}
	if res.code != 1 || ended.ID != run.ID || ended.Status != "cancelled" {
		t.Errorf("the aborted wait: exit %d, %+v", res.code, ended)
	}
	// (The abort came as soon as the list saw the job: the wait's polls
	// may have seen no progress of it, only its end.)
	if want := fmt.Sprintf("migration %d of %s ended cancelled: aborted by the operator", run.ID, sv.ID); !strings.Contains(res.stderr, want) {
		t.Errorf("live-migrate --wait's last line lacks %q", want)
	}
	if j := ferryRan(t, fs["lab-a"], run.UUID); j.Phase != migration.PhaseCancelled {
		t.Errorf("ferry's journal: %s (%s)", j.Phase, j.Reason)
	}
	checkAfterRollback(ctx, t, a, sv.ID, "lab-a", run.UUID)

	// Force-complete.
	wait = cli.start(ctx, t, "live-migrate", sv.ID, "--host", "lab-b", "--block-migration", "auto", "--wait")
	run = cli.running(ctx, t, sv.ID, wait)
	time.Sleep(2 * time.Second) // a few iterations in
	if r := cli.run(ctx, t, "migration", "force-complete", sv.Name, run.UUID); r.code != 0 {
		t.Fatalf("migration force-complete: exit %d", r.code)
	}
	if res = wait(); res.code != 0 || !strings.Contains(res.stdout, "completed") {
		t.Fatalf("the force-completed wait: exit %d: %s", res.code, res.stdout)
	}
	// It ran for seconds after the force-complete (the guest paused, the
	// rest of its memory still to move at 8 MiB/s): the wait's polls saw it.
	for _, want := range []string{fmt.Sprintf("migration %d lab-a→lab-b: running · ferry running · memory ", run.ID), " MiB/s · ~",
		"last: pause (force-complete requested by the operator)"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("live-migrate --wait's progress lacks %q", want)
		}
	}
	if strings.Contains(res.stderr, "\r") {
		t.Error("live-migrate --wait redrew a line on a non-terminal")
	}
	if got, err := a.GetServer(ctx, sv.ID); err != nil || got.Host != "lab-b" || got.Status != "ACTIVE" {
		t.Errorf("server after the force-complete: %+v %v", got, err)
	}

	// show, in three formats.
	r := cli.run(ctx, t, "migration", "show", sv.ID, strconv.FormatInt(run.ID, 10), "-f", "json")
	var shown view
	if err := json.Unmarshal([]byte(r.stdout), &shown); r.code != 0 || err != nil {
		t.Fatalf("migration show -f json: exit %d, %v", r.code, err)
	}
	f := shown.Ferry
	if shown.Status != "completed" || f == nil || f.Phase != string(migration.PhaseCompleted) || f.Job == nil {
		t.Fatalf("show: %+v", shown)
	}
	if !strings.Contains(strings.Join(f.Job.Disks, ","), "vda") || f.Job.Copy == "none" || f.Record.DowntimeSeconds <= 0 || f.Record.MemoryBytes == 0 {
		t.Errorf("ferry's record: job %+v record %+v", f.Job, f.Record)
	}
	if mig := st.Host("lab-b").Mig; f.Job.MigrationURI != "" && !strings.Contains(f.Job.MigrationURI, mig) {
		t.Errorf("memory streamed to %s, not lab-b's migration address %s", f.Job.MigrationURI, mig)
	}
	forced := false
	for _, act := range f.Actions {
		forced = forced || strings.Contains(act.Reason, "force-complete")
	}
	if !forced {
		t.Errorf("ferry's actions show no force-complete: %+v", f.Actions)
	}
	// The picture, kept with the stack's logs beside the record it draws.
	pic := filepath.Join(stack.LogDir, fmt.Sprintf("ferry-cli-%d.svg", run.ID))
	r = cli.run(ctx, t, "migration", "show", sv.ID, run.UUID, "-f", "json", "--svg", pic)
	if b, err := os.ReadFile(pic); r.code != 0 || err != nil || !strings.HasPrefix(string(b), "<svg") || !strings.Contains(string(b), "<polyline") {
		t.Errorf("migration show --svg: exit %d, %v, %.80q", r.code, err, b)
	}
	_ = os.WriteFile(strings.TrimSuffix(pic, ".svg")+".json", []byte(r.stdout), 0o644)
	r = cli.run(ctx, t, "migration", "show", sv.ID, run.UUID, "-f", "yaml")
	var y view
	if err := yaml.Unmarshal([]byte(r.stdout), &y); r.code != 0 || err != nil || y.ID != run.ID || y.Ferry == nil || y.Ferry.Phase != f.Phase {
		t.Errorf("migration show -f yaml: exit %d, %v, %+v", r.code, err, y)
	}
	if r = cli.run(ctx, t, "migration", "show", sv.ID, run.UUID); r.code != 0 || !strings.Contains(r.stdout, "ferry phase") ||
		!strings.Contains(r.stdout, "copy set") {
		t.Errorf("migration show: exit %d", r.code)
	}

	// list: both, newest first; --json is -f json.
	r = cli.run(ctx, t, "migration", "list", "--server", sv.ID, "--json")
	var vs []view
	if err := json.Unmarshal([]byte(r.stdout), &vs); r.code != 0 || err != nil || len(vs) != 2 || vs[0].ID != run.ID ||
		vs[0].Ferry == nil || vs[1].Ferry == nil || vs[1].Ferry.Phase != string(migration.PhaseCancelled) {
		t.Errorf("migration list --json: exit %d, %v, %+v", r.code, err, vs)
	}

	// drain: the server (now on lab-b) and an idle one booted there go back
	// to lab-a, two at once, the link uncapped.
	if err := st.CapMigration(ctx, 0); err != nil {
		t.Fatal(err)
	}
	_, idle := bootGuestOn(t, ctx, "ferry-cli-idle", "idle", "lab-b")
	drained(ctx, t, cli, fs["lab-b"], a, "lab-b", "lab-a", sv.ID, idle.ID)

	// The ferryds out of reach: Nova's view, and why.
	cfg := filepath.Join(t.TempDir(), "ferry.yaml")
	if err := os.WriteFile(cfg, []byte("ferryd:\n  url: https://127.0.0.1:1\n  timeout: 2s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = ferryCLI{bin: cli.bin, config: cfg}.run(ctx, t, "migration", "list", "--server", sv.ID, "-f", "json")
	vs = nil
	if err := json.Unmarshal([]byte(r.stdout), &vs); r.code != 0 || err != nil || len(vs) != 3 || vs[0].Ferry != nil ||
		!strings.Contains(vs[0].FerryNote, "ferryd not reachable") || !strings.Contains(r.stderr, "showing Nova's view only") {
		t.Errorf("with the ferryds unreachable: exit %d, %v, %+v", r.code, err, vs)
	}
	// An admin's token is never printed.
	for _, s := range []string{r.stdout, r.stderr, res.stdout, res.stderr} {
		if strings.Contains(s, "gAAAA") {
			t.Error("a Keystone token in the CLI's output")
		}
	}
}

// planView is the part of `ferry plan -f json` the test reads.
type planView struct {
	Dest            string `json:"dest"`
	BandwidthSource string `json:"bandwidth_source"`
	Memory          struct {
		DirtyBps uint64 `json:"dirty_bps"`
	} `json:"memory"`
	Verdict struct {
		Known        bool    `json:"known"`
		Converges    bool    `json:"converges"`
		Verdict      string  `json:"verdict"`
		TotalSeconds float64 `json:"total_seconds"`
		Reason       string  `json:"reason"`
	} `json:"verdict"`
}

// migratedView is the part of `ferry live-migrate --wait -f json` the test
// reads: Nova's status and ferry's record.
type migratedView struct {
	Status string `json:"status"`
	Ferry  *struct {
		Record struct {
			TotalSeconds float64 `json:"total_seconds"`
			BandwidthBps float64 `json:"bandwidth_bps"`
		} `json:"record"`
		Actions []struct {
			Action string `json:"action"`
		} `json:"actions"`
	} `json:"ferry"`
}

// TestFerryPlan: `ferry plan S --host lab-b --bandwidth 58 -f json` on an
// idle guest and a dirtying one (companion ferryds, the link capped at 64
// MiB/s and the admin giving its bandwidth, so the plan does not depend on
// what the ferryd measured before), each then live-migrated with ferry; the
// plan's verdict matches what happened (converged: completed without
// post-copy, pause or abort) and its predicted total is within ±50 % of
// ferry's recorded total. The dirtying guest's migration is followed with
// `ferry migration watch` (the idle one's with live-migrate --wait).
func TestFerryPlan(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	companions(t, ctx)
	cli := buildCLI(t)
	_, idle := bootGuest(t, ctx, "ferry-plan-idle", "idle")
	_, dirty := bootDirty(t, ctx, "ferry-plan-dirty")
	// The link as the admin knows it: capped at 64 MiB/s, of which TCP
	// over tc carries about nine tenths (7.1 of 8 measured).
	if err := st.CapMigration(ctx, 64); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.CapMigration(context.Background(), 0) })

	// The plans and migrations themselves: two minutes.
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer pcancel()
	for _, name := range []string{idle.ID, dirty.ID} {
		r := cli.run(pctx, t, "plan", name, "--host", "lab-b", "--sample", "3s", "--bandwidth", "58", "-f", "json")
		var p planView
		if err := json.Unmarshal([]byte(r.stdout), &p); r.code != 0 || err != nil {
			t.Fatalf("plan %s: exit %d, %v", name, r.code, err)
		}
		if p.Dest != "lab-b" {
			t.Errorf("plan %s: dest %q", name, p.Dest)
		}
		if !p.Verdict.Known || p.BandwidthSource != "given" {
			t.Errorf("plan %s with the link's bandwidth given: bandwidth %s: %s", name, p.BandwidthSource, p.Verdict.Reason)
		}
		if name == dirty.ID {
			// The table an admin reads (logged), and the migration followed
			// by `migration watch` rather than by the request's --wait.
			if r := cli.run(pctx, t, "plan", name, "--host", "lab-b", "--sample", "3s", "--bandwidth", "58"); r.code != 0 ||
				!strings.Contains(r.stdout, "verdict") {
				t.Errorf("plan %s (table): exit %d", name, r.code)
			}
			if r = cli.run(pctx, t, "live-migrate", name, "--host", "lab-b"); r.code != 0 {
				t.Fatalf("live-migrate %s: exit %d", name, r.code)
			}
			r = cli.run(pctx, t, "migration", "watch", name, "-f", "json")
		} else {
			r = cli.run(pctx, t, "live-migrate", name, "--host", "lab-b", "--wait", "-f", "json")
		}
		var m migratedView
		if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || m.Ferry == nil {
			t.Fatalf("live-migrate %s -f json: exit %d, %v, %+v", name, r.code, err, m)
		}
		escalated := false
		for _, a := range m.Ferry.Actions {
			escalated = escalated || a.Action == "post-copy" || a.Action == "pause" || a.Action == "abort"
		}
		converged := r.code == 0 && m.Status == "completed" && !escalated
		if !p.Verdict.Known {
			t.Logf("plan %s: no verdict (%s); migration converged=%v in %.1fs at %.1f MiB/s", name, p.Verdict.Reason, converged,
				m.Ferry.Record.TotalSeconds, m.Ferry.Record.BandwidthBps/(1<<20))
			continue
		}
		if p.Verdict.Converges != converged {
			t.Errorf("plan %s: converges=%v (%s: %s), the migration converged=%v (exit %d, %s, actions %+v)", name, p.Verdict.Converges,
				p.Verdict.Verdict, p.Verdict.Reason, converged, r.code, m.Status, m.Ferry.Actions)
		}
		got, want := m.Ferry.Record.TotalSeconds, p.Verdict.TotalSeconds
		if got < want*0.5 || got > want*1.5 {
			t.Errorf("plan %s: predicted total %.1fs, recorded %.1fs: not within ±50 %% (dirty rate %d B/s, bandwidth %s)", name, want, got,
				p.Memory.DirtyBps, p.BandwidthSource)
		}
	}
}
