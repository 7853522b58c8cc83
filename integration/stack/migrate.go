package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/pkg/virt"
)

// LiveMigration is what one of Nova's live migrations did, as the API,
// libvirt, the consoles and the interfaces' counters tell it.
type LiveMigration struct {
	Server    string
	From, To  string
	Wall      time.Duration // the command until the server is ACTIVE on the destination and the migration completed
	Migration Migration     // the migration's final record (os-migrations)
	Job       virt.JobStats // the destination's completed job (libvirt; no disk figures: the source mirrors)
	// SrcDisk is the most disk the source's running job reported (total,
	// processed): not zero only when the migration mirrored disks, i.e. a
	// block migration.
	SrcDisk  [2]uint64
	TX       map[string]uint64 // bytes the source sent per interface (mgmt0, mig0) during the migration
	Src, Dst []lab.Beat        // heartbeats on the source (until it stopped) and on the destination
	// Continuity is nil when the destination's heartbeats continue the
	// source's with the same boot id.
	Continuity error
}

func (m LiveMigration) String() string {
	hb := "continuous"
	if m.Continuity != nil {
		hb = "broken: " + m.Continuity.Error()
	}
	return fmt.Sprintf("%s→%s status=%s wall=%.1fs libvirt_total=%.1fs downtime=%dms setup=%dms memory=%dMiB disk_mirrored=%dKiB/%dKiB "+
		"mig0_tx=%dMiB mgmt0_tx=%dKiB heartbeat=%s", m.From, m.To, m.Migration.Status, m.Wall.Seconds(), m.Job.Elapsed.Seconds(),
		m.Job.Downtime.Milliseconds(), m.Job.SetupTime.Milliseconds(), m.Job.MemProcessed>>20, m.SrcDisk[1]>>10, m.SrcDisk[0]>>10,
		m.TX["mig0"]>>20, m.TX["mgmt0"]>>10, hb)
}

// cliMicroversion is the newest compute microversion python3-novaclient
// 18.1 (which the openstack client uses) knows.
const cliMicroversion = "2.92"

// OpenStack runs the openstack client as the admin and returns its output.
func (s *Stack) OpenStack(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "openstack", args...)
	cmd.Env = append(os.Environ(), "OS_CLIENT_CONFIG_FILE="+s.CloudsYAML, "OS_CLOUD="+Cloud)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("openstack %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MigrateOptions tune LiveMigrate.
type MigrateOptions struct {
	// Cutoff, when not 0, aborts the migration through the API
	// (`openstack server migration abort`) once it has run this long;
	// LiveMigrate then returns the ended migration without an error.
	Cutoff time.Duration
	// Sample, when not nil, receives the source's job statistics about
	// every 500 ms while the job runs (an observer, e.g. ferry's estimator).
	Sample func(at time.Duration, js virt.JobStats)
}

// LiveMigrate runs `openstack server migrate --live-migration --host to`
// (block migration "auto", which is a block migration here: the instances
// directories are not shared) and waits until the server runs on to and
// the migration completed, or the migration ended otherwise.
func (s *Stack) LiveMigrate(ctx context.Context, server, to string, timeout time.Duration) (LiveMigration, error) {
	return s.LiveMigrateWith(ctx, server, to, timeout, MigrateOptions{})
}

// LiveMigrateWith is LiveMigrate with options.
func (s *Stack) LiveMigrateWith(ctx context.Context, server, to string, timeout time.Duration, o MigrateOptions) (LiveMigration, error) {
	a, err := s.API(ctx)
	if err != nil {
		return LiveMigration{}, err
	}
	sv, err := a.GetServer(ctx, server)
	if err != nil {
		return LiveMigration{}, err
	}
	m := LiveMigration{Server: server, From: sv.Host, To: to}
	src, dst := s.Host(sv.Host), s.Host(to)
	if src == nil || dst == nil {
		return m, fmt.Errorf("stack: migrate %s from %q to %q: unknown host", server, sv.Host, to)
	}
	con, err := OpenConsole(ctx, src.ConsoleLog(server), 10*time.Second)
	if err != nil {
		return m, err
	}
	defer con.Close()
	if _, err := con.Beats(); err != nil {
		return m, err
	}
	before, err := src.Counters(ctx)
	if err != nil {
		return m, err
	}
	before0, _ := a.Migrations(ctx, server)
	stopSampler, err := s.sampleSource(ctx, src, sv.InstanceName, &m, o.Sample)
	if err != nil {
		return m, err
	}
	defer stopSampler()
	aborted := false
	t := time.Now()
	if _, err := s.OpenStack(ctx, "--os-compute-api-version", cliMicroversion, "server", "migrate", "--live-migration",
		"--host", to, server); err != nil {
		return m, err
	}
	// The migration's record: the newest of the server's, which the
	// command just made.
	deadline := time.Now().Add(timeout)
	var inProgress Migration // the byte counts, which only the in-progress view shows
	for {
		ms, err := a.Migrations(ctx, server)
		if err == nil && len(ms) > len(before0) {
			m.Migration = ms[0]
			if st := m.Migration.Status; st == "completed" || st == "error" || st == "failed" || st == "cancelled" {
				if m.Migration.MemoryTotal == nil {
					m.Migration.MemoryTotal, m.Migration.MemoryProcessed = inProgress.MemoryTotal, inProgress.MemoryProcessed
					m.Migration.DiskTotal, m.Migration.DiskProcessed = inProgress.DiskTotal, inProgress.DiskProcessed
				}
				break
			}
			if m.Migration.Status == "running" {
				if ip, err := a.InProgress(ctx, server, m.Migration.ID); err == nil && ip.MemoryTotal != nil {
					inProgress = ip
				}
			}
		}
		if _, err := con.Beats(); err != nil {
			return m, err
		}
		abortable := m.Migration.Status == "queued" || m.Migration.Status == "preparing" || m.Migration.Status == "running"
		if o.Cutoff > 0 && !aborted && time.Since(t) > o.Cutoff && m.Migration.ID != 0 && abortable { // Nova refuses an abort while "accepted"
			aborted = true
			if err := Do(ctx, a.Compute, "DELETE", fmt.Sprintf("servers/%s/migrations/%d", server, m.Migration.ID), nil, nil, 202); err != nil {
				return m, fmt.Errorf("stack: abort migration %d after %s: %w", m.Migration.ID, o.Cutoff, err)
			}
		}
		if time.Now().After(deadline) {
			return m, fmt.Errorf("stack: migration of %s to %s not ended after %s (last %+v)", server, to, timeout, m.Migration)
		}
		select {
		case <-ctx.Done():
			return m, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if m.Migration.Status != "completed" {
		m.Wall = time.Since(t)
		if aborted {
			_, err := a.WaitServer(ctx, server, 2*time.Minute, func(v Server) bool { return v.Status == "ACTIVE" && v.TaskState == nil })
			return m, err
		}
		return m, fmt.Errorf("stack: migration of %s to %s ended %s; see %s", server, to, m.Migration.Status, src.ComputeLog)
	}
	if _, err := a.WaitServer(ctx, server, time.Minute, func(v Server) bool {
		return v.Host == to && v.Status == "ACTIVE" && v.TaskState == nil
	}); err != nil {
		return m, err
	}
	m.Wall = time.Since(t)
	stopSampler()
	after, err := src.Counters(ctx)
	if err != nil {
		return m, err
	}
	m.TX = map[string]uint64{}
	for k, v := range after {
		m.TX[k] = v - before[k]
	}
	if m.Src, err = con.Beats(); err != nil {
		return m, err
	}
	c, err := dst.Dial(ctx)
	if err != nil {
		return m, err
	}
	defer c.Close()
	// The destination keeps the completed job's statistics, except after
	// a post-copy switch (then they are empty: Type None).
	if m.Job, err = c.JobStats(ctx, sv.InstanceName, true); err != nil {
		return m, fmt.Errorf("stack: completed job of %s on %s: %w", sv.InstanceName, to, err)
	}
	dc, err := OpenConsole(ctx, dst.ConsoleLog(server), 10*time.Second)
	if err != nil {
		return m, err
	}
	defer dc.Close()
	if m.Dst, err = dc.Wait(ctx, 10, time.Minute); err != nil {
		return m, err
	}
	m.Continuity = lab.Continuity(m.Src, m.Dst)
	return m, nil
}

// sampleSource polls the source's job every 100 ms until the returned stop
// is called (stop waits for the poller; calling it twice is fine),
// recording the most disk the job reported and handing samples to sample.
func (s *Stack) sampleSource(ctx context.Context, src *HostInfo, dom string, m *LiveMigration, sample func(time.Duration, virt.JobStats)) (stop func(), err error) {
	c, err := src.Dial(ctx)
	if err != nil {
		return nil, err
	}
	done, quit := make(chan struct{}), make(chan struct{})
	t0 := time.Now()
	go func() { // owner: the stop function (waits for done)
		defer close(done)
		defer c.Close()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			js, err := c.JobStats(ctx, dom, false)
			if err != nil || js.Type != virt.JobUnbounded {
				continue
			}
			m.SrcDisk[0], m.SrcDisk[1] = max(m.SrcDisk[0], js.DiskTotal), max(m.SrcDisk[1], js.DiskProcessed)
			if sample != nil {
				sample(time.Since(t0), js)
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(quit); <-done }) }, nil
}

// MigrationList is `openstack server migration list --server id`.
func (s *Stack) MigrationList(ctx context.Context, server string) ([]map[string]any, error) {
	out, err := s.OpenStack(ctx, "--os-compute-api-version", cliMicroversion, "server", "migration", "list",
		"--server", server, "-f", "json")
	if err != nil {
		return nil, err
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		return nil, fmt.Errorf("server migration list: %w: %s", err, out)
	}
	return rows, nil
}
