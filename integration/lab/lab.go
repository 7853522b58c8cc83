package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"opendev.org/x/ferry/pkg/virt"
)

// Fixed places. One lab runs on a machine at a time (a lock enforces it).
const (
	StateDir      = "/run/ferry-lab"           // the record of what this run made, sockets
	WorkDir       = "/var/lib/ferry-lab"       // per-host trees, disks, volumes (reaped)
	CacheDir      = "/var/cache/ferry-lab"     // kernel package, guest image, QEMU caps (kept)
	InstancesPath = "/var/lib/ferry/instances" // inside every host; not shared between hosts
	lockFile      = "/run/ferry-lab.lock"
	// LockWait bounds the wait for another lab run to end.
	LockWait    = time.Hour
	switchNetns = "flab-sw"
	storageAddr = "198.18.0.2" // qemu-nbd listens here, on the management bridge
)

// Options configure Start. The zero value means two hosts, "a" and "b".
type Options struct {
	Hosts []string             // host names; default a, b
	Logf  func(string, ...any) // progress lines; default prints to stderr
	// RootMgmt gives the root network namespace an address on the
	// management network (RootMgmtAddr, on interface RootMgmtIface), so
	// that services listening there are reached from every host.
	RootMgmt bool
	// Mounts returns extra bind mounts for a host's mount namespace, made
	// after the lab's own and before its libvirtd starts (in order; the
	// caller creates sources and targets).
	Mounts func(h *Host) []Mount
	// BeforeTeardown runs at the start of the lab's teardown (Close, or
	// the SIGINT/SIGTERM handler), before the lab's processes and
	// namespaces go: a user that built on the lab (the stack) stops its
	// own parts first. It must be safe to call more than once.
	BeforeTeardown func()
}

// Mount is a bind mount into a host's mount namespace: Source is a path in
// the root namespaces, Target the path inside the host.
type Mount struct{ Source, Target string }

// RootMgmtIface is the root namespaces' side of the management network (Options.RootMgmt).
const RootMgmtIface = "flabmgmt0"

// RootMgmtAddr is the root namespaces' management address (Options.RootMgmt).
var RootMgmtAddr = netip.AddrFrom4([4]byte{198, 18, 0, 1})

// Host is one lab compute host.
type Host struct {
	Name     string     // short name: "a"
	Hostname string     // UTS host name: "lab-a"
	Netns    string     // network namespace: "flab-a"
	Mgmt     netip.Addr // management address (libvirt control, p2p)
	Mig      netip.Addr // migration address (RAM and disk streams)
	UUID     string     // libvirtd host_uuid

	dir   string  // WorkDir/hosts/<name>
	run   string  // StateDir/hosts/<name> (bind-mounted on /run/libvirt)
	pid   int     // libvirtd
	extra []Mount // Options.Mounts
}

// SocketPath is the host's libvirtd unix socket as seen from the root namespaces.
func (h *Host) SocketPath() string { return filepath.Join(h.run, "libvirt-sock") }

// URI reaches the host's libvirtd from the root namespaces.
func (h *Host) URI() string { return "qemu+unix:///system?socket=" + h.SocketPath() }

// TCPURI is how another lab host's libvirtd reaches this one (peer to peer).
func (h *Host) TCPURI() string { return "qemu+tcp://" + h.Mgmt.String() + "/system" }

// Path maps a path inside the host's mount namespace to the root namespace,
// for the directories the lab gives each host.
func (h *Host) Path(inHost string) string {
	for _, m := range h.allMounts() {
		if inHost == m.target || strings.HasPrefix(inHost, m.target+"/") {
			return m.source + strings.TrimPrefix(inHost, m.target)
		}
	}
	return inHost
}

// PID is the host's libvirtd process; /proc/PID/ns/{mnt,uts} are the host's
// mount and UTS namespaces.
func (h *Host) PID() int { return h.pid }

// Lab is a running set of hosts. Close tears everything down.
type Lab struct {
	Hosts []*Host
	Image Image

	logf         func(string, ...any)
	opts         Options
	lock         *os.File
	rec          *record
	procs        sync.WaitGroup // owners of the daemons' Wait calls
	sig          chan os.Signal
	closed       chan struct{}
	once         sync.Once
	teardownOnce sync.Once
	started      time.Time
	guests       int
}

// Host returns the named host or nil.
func (l *Lab) Host(name string) *Host {
	for _, h := range l.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Start reaps whatever an earlier run left (after a crash or a SIGKILL), then
// builds the guest image, the networks and one libvirtd per host. A SIGINT or
// SIGTERM tears the lab down before the process exits.
func Start(ctx context.Context, o Options) (l *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: must run as root (network namespaces, loop devices, libvirtd)")
	}
	if len(o.Hosts) == 0 {
		o.Hosts = []string{"a", "b"}
	}
	if o.Logf == nil {
		o.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	}
	l = &Lab{logf: o.Logf, opts: o, closed: make(chan struct{}), started: time.Now()}
	// Waiting for another run is not this run's work: the caller's time
	// budget for the start counts from when this run holds the lock.
	var budget time.Duration
	if d, ok := ctx.Deadline(); ok {
		budget = time.Until(d)
	}
	lockCtx, cancelLock := context.WithTimeout(context.WithoutCancel(ctx), LockWait)
	l.lock, err = takeLock(lockCtx, l.logf)
	cancelLock()
	if budget > 0 && err == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), budget)
		defer cancel()
	}
	if err != nil {
		return nil, err
	}
	self := l // "return nil, err" clears l before the deferred cleanup runs
	defer func() {
		if err != nil {
			self.opts.BeforeTeardown = nil // the user's parts are the user's to stop after a failed Start
			self.Close()
		}
	}()
	l.step("reap earlier runs", func() error { return reap(l.logf) })
	l.rec = &record{Owner: os.Getpid()}
	if err := l.rec.save(); err != nil {
		return nil, err
	}
	l.sig = make(chan os.Signal, 1)
	signal.Notify(l.sig, syscall.SIGINT, syscall.SIGTERM)
	l.procs.Add(1)
	go l.onSignal()

	for i, name := range o.Hosts {
		l.Hosts = append(l.Hosts, &Host{
			Name:     name,
			Hostname: "lab-" + name,
			Netns:    "flab-" + name,
			Mgmt:     netip.AddrFrom4([4]byte{198, 18, 0, byte(11 + i)}),
			Mig:      netip.AddrFrom4([4]byte{198, 19, 0, byte(11 + i)}),
			UUID:     fmt.Sprintf("f3e1a000-0000-4000-8000-%012x", i+1),
			dir:      filepath.Join(WorkDir, "hosts", name),
			run:      filepath.Join(StateDir, "hosts", name),
		})
	}
	if o.Mounts != nil {
		for _, h := range l.Hosts {
			h.extra = o.Mounts(h)
		}
	}
	steps := []struct {
		name string
		f    func() error
	}{
		{"guest image", func() error { l.Image, err = buildImage(ctx, l.logf); return err }},
		{"networks", func() error { return l.setupNetworks(ctx) }},
		{"libvirtd per host", func() error { return l.startDaemons(ctx) }},
	}
	for _, s := range steps {
		if err := l.stepErr(s.name, s.f); err != nil {
			return nil, err
		}
	}
	l.logf("lab: up in %.1fs (%d hosts)", time.Since(l.started).Seconds(), len(l.Hosts))
	return l, nil
}

func (l *Lab) step(name string, f func() error) {
	if err := l.stepErr(name, f); err != nil {
		l.logf("lab: %s: %v (continuing)", name, err)
	}
}

func (l *Lab) stepErr(name string, f func() error) error {
	t := time.Now()
	l.logf("lab: %s ...", name)
	if err := f(); err != nil {
		return fmt.Errorf("lab: %s: %w", name, err)
	}
	l.logf("lab: %s done in %.1fs", name, time.Since(t).Seconds())
	return nil
}

func (l *Lab) onSignal() {
	defer l.procs.Done()
	select {
	case s := <-l.sig:
		l.logf("lab: %v: tearing down", s)
		l.teardown()
		os.Exit(130)
	case <-l.closed:
	}
}

// Close tears down everything this run made: processes, namespaces, loop
// devices, directories. It is safe to call more than once.
func (l *Lab) Close() {
	l.once.Do(func() {
		close(l.closed)
		if l.sig != nil {
			signal.Stop(l.sig)
		}
		l.teardown()
		l.procs.Wait()
		if l.lock != nil {
			l.lock.Close()
		}
	})
}

// teardown runs once: a signal's teardown and the Close of the test that
// the signal broke must not race over the same namespaces.
func (l *Lab) teardown() {
	l.teardownOnce.Do(func() {
		if l.opts.BeforeTeardown != nil {
			l.opts.BeforeTeardown()
		}
		t := time.Now()
		if err := reap(l.logf); err != nil {
			l.logf("lab: teardown: %v", err)
		}
		l.logf("lab: teardown done in %.1fs", time.Since(t).Seconds())
	})
}

// takeLock makes sure no other lab runs on this machine: it waits (within
// ctx) while another run holds the lock, so two test packages, or a person's
// lab and CI's, take turns instead of failing. A dead holder's lock is free
// again (flock), and its leftovers are reaped next.
func takeLock(ctx context.Context, logf func(string, ...any)) (*os.File, error) {
	return WaitLock(ctx, lockFile, "lab", logf, nil)
}

// WaitLock takes an exclusive flock on path, waiting within ctx while
// another process holds it, and writes this process's pid into it. what
// names the holder in messages ("lab", "stack"). While it waits, giveUp
// (when not nil) is asked every second whether to stop waiting: then
// WaitLock returns nil and no error.
func WaitLock(ctx context.Context, path, what string, logf func(string, ...any), giveUp func() bool) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: lock: %w", what, err)
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for waited := false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("%s: lock %s: %w", what, path, err)
		}
		if giveUp != nil && giveUp() {
			f.Close()
			return nil, nil
		}
		if !waited {
			b, _ := os.ReadFile(path)
			logf("%s: another %s run (pid %s) holds %s; waiting for it", what, what, strings.TrimSpace(string(b)), path)
			waited = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("%s: waiting for %s: %w", what, path, context.Cause(ctx))
		case <-t.C:
		}
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// record is what a run made, saved after every change so that a later run
// can undo it even if this one was killed.
type record struct {
	mu          sync.Mutex
	Owner       int       `json:"owner"`
	Netns       []string  `json:"netns"`
	Procs       []procRec `json:"procs"`
	Loops       []loopRec `json:"loops"`
	Mountpoints []string  `json:"mountpoints"` // directories created in the root fs as mount targets
}

type procRec struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"` // /proc/PID/comm at start, to never kill a reused PID
}

type loopRec struct {
	Dev     string `json:"dev"`
	Backing string `json:"backing"`
}

func (r *record) add(f func(r *record)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
	return r.saveLocked()
}

func (r *record) save() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.saveLocked()
}

func (r *record) saveLocked() error {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(StateDir, "record.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(StateDir, "record.json"))
}

func readRecord() (*record, error) {
	b, err := os.ReadFile(filepath.Join(StateDir, "record.json"))
	if errors.Is(err, os.ErrNotExist) {
		return &record{}, nil
	}
	if err != nil {
		return nil, err
	}
	r := &record{}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("record %s: %w", StateDir, err)
	}
	return r, nil
}

// reap undoes what the record says: it kills every process inside the
// recorded namespaces and the recorded PIDs whose command still matches,
// detaches the recorded loop devices whose backing file still matches,
// deletes the namespaces and the lab's directories.
func reap(logf func(string, ...any)) error {
	r, err := readRecord()
	if err != nil {
		return err
	}
	var pids []int
	for _, ns := range r.Netns {
		pids = append(pids, netnsPIDs(ns)...)
	}
	for _, p := range r.Procs {
		if comm(p.PID) == p.Comm {
			pids = append(pids, p.PID)
		}
	}
	if len(pids) > 0 {
		logf("lab: stopping %d processes", len(pids))
		killAll(pids)
	}
	var errs []error
	for _, lo := range r.Loops {
		b, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(lo.Dev), "loop", "backing_file"))
		if strings.TrimSpace(string(b)) != lo.Backing {
			continue
		}
		if _, err := run(context.Background(), "losetup", "-d", lo.Dev); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ns := range r.Netns {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			if _, err := run(context.Background(), "ip", "netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, d := range []string{WorkDir, StateDir} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range r.Mountpoints {
		_ = os.Remove(m) // only if still empty
	}
	return errors.Join(errs...)
}

// killAll sends SIGTERM, gives the processes 3 s, then SIGKILLs survivors.
func killAll(pids []int) {
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		alive := 0
		for _, p := range pids {
			if syscall.Kill(p, 0) == nil && !zombie(p) {
				alive++
			}
		}
		if alive == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	time.Sleep(200 * time.Millisecond)
}

func comm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// Dial opens a libvirt connection to the host from the root namespaces.
func (h *Host) Dial(ctx context.Context) (*virt.Conn, error) {
	return virt.Dial(ctx, h.URI(), virt.Timeouts{})
}

// Proc is a process the lab started in a host's mount and UTS namespaces
// (but the root network namespace), such as a ferryd.
type Proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartIn starts a command inside h's mount and UTS namespaces, its output
// appended to logPath. The lab records it, so a later run reaps it, and
// Close stops it.
func (l *Lab) StartIn(h *Host, logPath string, args ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("nsenter", h.nsenter(args)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{cmd: cmd, done: make(chan struct{})}
	name := filepath.Base(args[0])
	if len(name) > 15 {
		name = name[:15]
	}
	if err := l.rec.add(func(r *record) { r.Procs = append(r.Procs, procRec{PID: cmd.Process.Pid, Comm: name}) }); err != nil {
		return nil, err
	}
	l.procs.Add(1)
	go func() { defer l.procs.Done(); p.err = cmd.Wait(); close(p.done) }() // owner: the lab
	return p, nil
}

// Run runs a command to its end inside h's mount and UTS namespaces, where
// in-host paths resolve, and returns its combined output.
func (h *Host) Run(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "nsenter", h.nsenter(args)...).CombinedOutput()
	return string(out), err
}

// nsenter's arguments for running args in h's mount and UTS namespaces.
func (h *Host) nsenter(args []string) []string {
	return append([]string{"--target", strconv.Itoa(h.pid), "--mount", "--uts", "--"}, args...)
}

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Signal sends a signal.
func (p *Proc) Signal(s syscall.Signal) error { return p.cmd.Process.Signal(s) }

// Wait waits up to timeout for the process to end.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("pid %d still running after %s", p.PID(), timeout)
	}
}

// Done is closed when the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }
