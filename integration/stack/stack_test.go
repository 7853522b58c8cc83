package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCheckBinaries(t *testing.T) {
	have := map[string]bool{"uwsgi": true}
	look := func(b string) (string, error) {
		if have[b] {
			return "/usr/bin/" + b, nil
		}
		return "", errors.New("not found")
	}
	if err := checkBinaries(look, []string{"uwsgi"}); err != nil {
		t.Errorf("all there: %v", err)
	}
	err := checkBinaries(look, []string{"uwsgi", "nova-compute", "neutron-server"})
	if err == nil {
		t.Fatal("missing binaries: no error")
	}
	for _, want := range []string{"nova-compute (package nova-compute)", "neutron-server (package neutron-server)", "deps.sh"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "uwsgi") {
		t.Errorf("error %q names a binary that is there", err)
	}
}

func TestCheckPortsNamesServiceAndAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = checkPorts([]service{{Name: "keystone", Ports: []string{ln.Addr().String()}}})
	if err == nil || !strings.Contains(err.Error(), "keystone") || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("port in use: %v, want an error naming keystone and %s", err, ln.Addr())
	}
	ln.Close()
	if err := checkPorts([]service{{Name: "keystone", Ports: []string{ln.Addr().String()}}}); err != nil {
		t.Errorf("free port: %v", err)
	}
}

func TestTailLastLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	var b strings.Builder
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	got := strings.Split(tail(p, 20), "\n")
	if len(got) != 20 || got[0] != "line 11" || got[19] != "line 30" {
		t.Errorf("tail = %q..%q (%d lines), want line 11..line 30", got[0], got[len(got)-1], len(got))
	}
	if got := tail(filepath.Join(t.TempDir(), "none"), 20); !strings.Contains(got, "no log") {
		t.Errorf("tail of a missing file = %q", got)
	}
}

// TestServiceExitingAtStart: a service that dies while the stack waits for
// it is one error naming it, with its log's last lines; nothing of it runs.
func TestServiceExitingAtStart(t *testing.T) {
	privateDirs(t)
	s := service{Name: "failing-test-service", Args: []string{"sh", "-c", "for i in $(seq 1 25); do echo out $i; done; exit 3"},
		Ready: func(context.Context) error { return errors.New("not yet") }}
	p, err := startService(context.Background(), s)
	if err == nil {
		p.stop()
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{"failing-test-service", "exited during start", "exit status 3", "out 25", "out 6"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "out 5\n") {
		t.Errorf("error %q has more than the last 20 lines", msg)
	}
}

func TestConfigs(t *testing.T) {
	e := env{Addr: "198.18.0.1", Transport: "rabbit://u:p@198.18.0.1:5672/v", Firewall: "iptables"}
	c := e.computeConf(Compute{Host: "lab-a", MyIP: "198.18.0.11", State: "/s", Inst: "/i", Config: "/c/nova.conf",
		Extra: ini{"libvirt": {"live_migration_permit_post_copy": "true"}}})
	for _, want := range []string{
		"[DEFAULT]\n", "host = lab-a\n", "my_ip = 198.18.0.11\n", "instances_path = /i\n", "state_path = /s\n",
		"virt_type = qemu\n", "connection_uri = qemu:///system\n", "lock_path = /s/lock\n",
		"live_migration_permit_post_copy = true\n",
		"helper_command = privsep-helper --config-file /c/nova.conf\n",
		"auth_url = http://198.18.0.1:5000/v3\n", "auth_type = password\n",
	} {
		if !strings.Contains(c.String(), want) {
			t.Errorf("nova-compute's nova.conf lacks %q:\n%s", want, c)
		}
	}
	if strings.Contains(c.String(), "live_migration_inbound_addr") {
		t.Errorf("nova-compute's nova.conf sets live_migration_inbound_addr (Zed would use it for the control connection too)")
	}
	if !strings.HasPrefix(c.String(), "[DEFAULT]\n") {
		t.Errorf("DEFAULT is not first:\n%s", c)
	}
	n := e.neutronConf().String()
	for _, want := range []string{"notify_nova_on_port_status_changes = true", "[nova]\n", "linuxbridge = true", "auth_strategy = keystone"} {
		if !strings.Contains(n, want) {
			t.Errorf("neutron.conf lacks %q", want)
		}
	}
	ag := e.agentConf("lab-a", "198.18.0.11", "/st", "/c/agent.ini").String()
	for _, want := range []string{"root_helper = \n", "local_ip = 198.18.0.11", "firewall_driver = iptables", "[privsep_link]\nhelper_command = privsep-helper --config-file /c/agent.ini"} {
		if !strings.Contains(ag, want) {
			t.Errorf("agent ini lacks %q:\n%s", want, ag)
		}
	}
}

// TestQemuShim runs the shim with the lab's wrapper in place: the real
// binary it names is run (with the TCG memory fix), never the shim itself.
func TestQemuShim(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.WriteFile(real, []byte("#!/bin/sh\necho REAL \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	wrapper, err := filepath.Abs("../lab/qemu-tcg-wrap.sh")
	if err != nil {
		t.Fatal(err)
	}
	shim := filepath.Join(dir, "qemu-system-x86_64")
	if err := os.WriteFile(shim, []byte(qemuShim(wrapper, real)), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(shim, "-accel", "tcg", "-m", "256").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), "REAL -accel tcg -m 262152k"; got != want {
		t.Errorf("shim ran %q, want %q", got, want)
	}
	if strings.Contains(qemuShim(wrapper, real), shim) {
		t.Errorf("the shim names its own path")
	}
}

func TestDumpPathKeyedByVersionAndRecipe(t *testing.T) {
	g := &dbGroup{name: "nova", dbs: []string{"nova_api"}, version: "2:26.2.2-1~deb12u5"}
	a := g.dumpPath("r1")
	g2 := *g
	g2.version = "2:26.2.3-1"
	if a == g.dumpPath("r2") || a == g2.dumpPath("r1") || a != g.dumpPath("r1") {
		t.Errorf("dump paths do not follow version and recipe: %s %s %s", a, g.dumpPath("r2"), g2.dumpPath("r1"))
	}
	if strings.ContainsAny(filepath.Base(a), ":~") {
		t.Errorf("dump path %s has characters of the version", a)
	}
}

// TestReapRecord: a recorded process group (a killed run's service and
// the child it forked) is stopped by the next run's reap; a recorded PID
// that was reused by another process is left alone.
func TestReapRecord(t *testing.T) {
	privateDirs(t)
	start := func() *exec.Cmd {
		c := exec.Command("sh", "-c", "sleep 300 & wait")
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	dead, reused := start(), start()
	defer reused.Process.Kill()
	st, _ := startTime(dead.Process.Pid)
	if err := updateRecord(func(r *record) {
		r.Procs = append(r.Procs, procRec{Name: "svc", PGID: dead.Process.Pid, Start: st},
			procRec{Name: "reused", PGID: reused.Process.Pid, Start: 1}) // not its start time
	}); err != nil {
		t.Fatal(err)
	}
	if err := reapRecord(t.Logf, nil); err != nil {
		t.Fatal(err)
	}
	_ = dead.Wait()
	if n := groupMembers(dead.Process.Pid); len(n) != 0 {
		t.Errorf("recorded group still has %v", n)
	}
	if n := groupMembers(reused.Process.Pid); len(n) == 0 {
		t.Errorf("the group of a reused PID was killed")
	}
	if _, err := os.Stat(recFile()); err == nil {
		t.Errorf("the record survived the reap")
	}
}

// privateDirs points the record, the logs and the work tree at a test's
// own directories.
func privateDirs(t *testing.T) {
	d := t.TempDir()
	oldRec, oldLog, oldWork := recDir, logDir, workBase
	recDir, logDir, workBase = filepath.Join(d, "run"), filepath.Join(d, "log"), filepath.Join(d, "work")
	t.Cleanup(func() { recDir, logDir, workBase = oldRec, oldLog, oldWork })
}
