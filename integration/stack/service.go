package stack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// service is one daemon of the stack.
type service struct {
	Name  string   // "keystone", "nova-compute@a"
	Args  []string // the command
	Env   []string // added to the environment
	Ports []string // host:port it will listen on; checked free before it starts
	// NSPID, when not 0, runs it inside that process's network, mount and
	// UTS namespaces (a lab host's libvirtd).
	NSPID int
	// Ready returns nil once the service serves; it is polled until then.
	Ready   func(ctx context.Context) error
	Timeout time.Duration // for Ready; default 2 minutes
}

// proc is a started service.
type proc struct {
	svc     service
	log     string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	started time.Time
	ready   time.Duration
}

// logPath is where a service's output (and its own log_file) goes.
func logPath(name string) string { return filepath.Join(logDir, name+".log") }

// packages names the Debian package that ships each binary the stack runs,
// so that a missing one is reported by the name deps.sh installs.
var packages = map[string]string{
	"uwsgi":                     "uwsgi-plugin-python3",
	"mariadbd":                  "mariadb-server",
	"mariadb-install-db":        "mariadb-server",
	"mariadb-dump":              "mariadb-client",
	"mariadb":                   "mariadb-client",
	"keystone-manage":           "keystone",
	"keystone-wsgi-public":      "keystone",
	"glance-manage":             "glance-api",
	"glance-wsgi-api":           "glance-api",
	"placement-manage":          "placement-api",
	"placement-api":             "placement-api",
	"nova-manage":               "nova-api",
	"nova-api-wsgi":             "nova-api",
	"nova-conductor":            "nova-conductor",
	"nova-scheduler":            "nova-scheduler",
	"nova-compute":              "nova-compute",
	"neutron-server":            "neutron-server",
	"neutron-db-manage":         "neutron-server",
	"neutron-linuxbridge-agent": "neutron-linuxbridge-agent",
	"privsep-helper":            "python3-oslo.privsep",
	"openstack":                 "python3-openstackclient",
	"rabbitmqctl":               "rabbitmq-server",
	"nsenter":                   "util-linux",
	"qemu-img":                  "qemu-utils",
	"qemu-system-x86_64":        "qemu-system-x86",
}

// checkBinaries reports every binary of the list that is not installed,
// naming its package, as one error.
func checkBinaries(lookPath func(string) (string, error), bins []string) error {
	var missing []string
	for _, b := range bins {
		if _, err := lookPath(b); err != nil {
			pkg := packages[b]
			if pkg == "" {
				pkg = "?"
			}
			missing = append(missing, fmt.Sprintf("%s (package %s)", b, pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("stack: missing %s: run integration/deps.sh", strings.Join(missing, ", "))
	}
	return nil
}

// checkPorts fails, naming the service and the address, when something
// already listens where a service is to listen.
func checkPorts(svcs []service) error {
	var errs []error
	for _, s := range svcs {
		for _, a := range s.Ports {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				errs = append(errs, fmt.Errorf("stack: %s: %s is in use (%w)", s.Name, a, err))
				continue
			}
			ln.Close()
		}
	}
	return errors.Join(errs...)
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	if len(lines) == 0 {
		return "(empty log)"
	}
	return strings.Join(lines, "\n")
}

// failed is the one error a service that did not come up produces: its
// name, what happened, and the last 20 lines of its log.
func (p *proc) failed(what string) error {
	return fmt.Errorf("stack: %s %s; last 20 lines of %s:\n%s", p.svc.Name, what, p.log, tail(p.log, 20))
}

// startService records and starts one service, then waits until it is
// ready, it exits, or ctx ends.
func startService(ctx context.Context, s service) (*proc, error) {
	p := &proc{svc: s, log: logPath(s.Name), done: make(chan struct{})}
	if err := os.MkdirAll(filepath.Dir(p.log), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	args := s.Args
	if s.NSPID != 0 {
		args = append([]string{"nsenter", "--target", strconv.Itoa(s.NSPID), "--net", "--mount", "--uts", "--"}, args...)
	}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Env = append(os.Environ(), s.Env...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("stack: %s: %w", s.Name, err)
	}
	pid := p.cmd.Process.Pid
	st, _ := startTime(pid)
	if err := updateRecord(func(r *record) { r.Procs = append(r.Procs, procRec{Name: s.Name, PGID: pid, Start: st}) }); err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		return nil, err
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }() // owner: p (stop waits for done)
	if err := p.waitReady(ctx); err != nil {
		p.stop()
		return nil, err
	}
	p.ready = time.Since(p.started)
	return p, nil
}

func (p *proc) waitReady(ctx context.Context) error {
	timeout := p.svc.Timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		select {
		case <-p.done:
			return p.failed("exited during start (" + exitStatus(p.err) + ")")
		default:
		}
		if p.svc.Ready == nil {
			return nil
		}
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second) // a hung server must not outlast the deadline
		last = p.svc.Ready(rctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return p.failed("exited during start (" + exitStatus(p.err) + ")")
		case <-ctx.Done():
			return fmt.Errorf("stack: %s: %w", p.svc.Name, context.Cause(ctx))
		case <-deadline.C:
			return p.failed(fmt.Sprintf("not ready after %s (%v)", timeout, last))
		case <-tick.C:
		}
	}
}

// stop ends the service's process group: SIGTERM, then SIGKILL after 10 s.
// kill ends the process group with SIGKILL at once, as a crash would.
func (p *proc) kill() {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	killGroups([]int{p.cmd.Process.Pid}, time.Second)
}

func (p *proc) stop() {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
	default:
		killGroups([]int{p.cmd.Process.Pid}, 10*time.Second)
		<-p.done
	}
	// members of the group that outlived the leader (uwsgi workers)
	killGroups([]int{p.cmd.Process.Pid}, time.Second)
}

// running tells whether the service's leader still runs.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// run runs a setup command to its end, its output appended to the named
// log; a failure is one error with the log's last 20 lines.
func run(ctx context.Context, logName string, env []string, args ...string) error {
	lp := logPath(logName)
	if err := os.MkdirAll(filepath.Dir(lp), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(lp, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "+ %s\n", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("stack: %s: %s: %w; last 20 lines of %s:\n%s", logName, strings.Join(args, " "), err, lp, tail(lp, 20))
	}
	return nil
}

func execCommand(ctx context.Context, args []string) *exec.Cmd {
	return exec.CommandContext(ctx, args[0], args[1:]...)
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
