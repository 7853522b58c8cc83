package stack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/integration/rabbit"
	"opendev.org/x/ferry/internal/testpki"
)

// Options configure Start. The zero value is the stack the tests use.
type Options struct {
	Logf func(string, ...any) // progress lines; default stderr
	// ComputeExtra is merged into every nova-compute's nova.conf (the
	// bench's post-copy/auto-converge row), e.g. {"libvirt":
	// {"live_migration_permit_post_copy": "true"}}.
	ComputeExtra map[string]map[string]string
}

// Info is what a running stack publishes (state.json) for the processes
// that attach to it.
type Info struct {
	Owner      int        `json:"owner"`
	OwnerStart uint64     `json:"owner_start"`
	Addr       string     `json:"addr"`        // the services' address (lab.RootMgmtAddr)
	AuthURL    string     `json:"auth_url"`    // Keystone v3
	CloudsYAML string     `json:"clouds_yaml"` // export OS_CLIENT_CONFIG_FILE=… OS_CLOUD=Cloud
	Transport  string     `json:"transport"`   // the oslo transport_url every service uses (has a password)
	Firewall   string     `json:"firewall"`    // the agents' firewall_driver and why
	Hosts      []HostInfo `json:"hosts"`
	Network    string     `json:"network"` // the tenant (VXLAN) network's id
	Flavors    Flavors    `json:"flavors"`
	Images     Images     `json:"images"`
	Logs       string     `json:"logs"`    // directory of every service's log
	Timings    []Timing   `json:"timings"` // how long each start step took
}

// HostInfo is one lab host as the stack uses it.
type HostInfo struct {
	Name       string `json:"name"`        // lab name: a
	Hostname   string `json:"hostname"`    // Nova's host and hypervisor name: lab-a
	Netns      string `json:"netns"`       // its network namespace
	Mgmt       string `json:"mgmt"`        // management address
	Mig        string `json:"mig"`         // migration address
	URI        string `json:"uri"`         // its libvirtd from the root namespaces
	Instances  string `json:"instances"`   // its instances_path as seen from the root namespaces
	NSPID      int    `json:"nspid"`       // its libvirtd: /proc/NSPID/ns/* are the host's namespaces
	ComputeLog string `json:"compute_log"` // nova-compute's log
}

// Flavors the stack defines (root_gb 0: the root disk is the image's size).
type Flavors struct {
	Small string `json:"small"` // 1 vCPU, 256 MiB
	Bench string `json:"bench"` // 1 vCPU, 384 MiB (the bench's guest)
}

// Images are the lab guest in Glance: its kernel and initramfs as aki/ari
// images, and one small root image per workload whose os_command_line
// carries the agent's parameters.
type Images struct {
	Kernel  string            `json:"kernel"`
	Ramdisk string            `json:"ramdisk"`
	Root    map[string]string `json:"root"` // workload name → image id
}

// Timing is one start step.
type Timing struct {
	Step    string  `json:"step"`
	Seconds float64 `json:"seconds"`
}

// Stack is a running stack: owned (this process started it and tears it
// down) or attached (another process owns it).
type Stack struct {
	Info
	Lab *lab.Lab // the owner's lab; nil when attached

	owned   bool
	o       Options
	logf    func(string, ...any)
	lock    *os.File
	env     env
	db      *mariadb
	relay   *relay
	broker  rabbit.Broker
	mu      sync.Mutex
	procs   []*proc // in start order; stopped in reverse
	compute map[string]*proc
	sig     chan os.Signal
	closed  chan struct{}
	once    sync.Once
	down    sync.Once
	api     *API
	started time.Time
	pkiOnce sync.Once // the status CA (statusTLS)
	pki     *testpki.CA
	pkiErr  error
}

// Workloads are the guest images the stack uploads: the agent's working
// set (MiB) and dirty rate (MiB/s) for each.
var Workloads = map[string][2]int{
	"idle":  {0, 0},
	"dirty": {64, 32},
	// the bench's guest: 256 MiB working set at ½, 1 and 2 × a 50 MiB/s cap
	"bench-25":  {256, 25},
	"bench-50":  {256, 50},
	"bench-100": {256, 100},
}

// CmdLine is the guest kernel command line of a workload.
func CmdLine(ws, rate int) string {
	return fmt.Sprintf("console=ttyS0 panic=-1 loglevel=4 lab.ws=%d lab.rate=%d lab.hb=100", ws, rate)
}

// Acquire attaches to the machine's running stack when there is one and it
// is ready, and starts (and owns) one otherwise. While another process is
// starting one, it waits for it.
func Acquire(ctx context.Context, o Options) (*Stack, error) {
	if o.Logf == nil {
		o.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	}
	if s, err := Attach(); err == nil {
		o.Logf("stack: attached to the running stack of pid %d", s.Owner)
		return s, nil
	}
	return start(ctx, o, true)
}

// Start starts a stack this process owns, waiting for the machine's stack
// lock (another run's stack) within ctx.
func Start(ctx context.Context, o Options) (*Stack, error) {
	if o.Logf == nil {
		o.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	}
	return start(ctx, o, false)
}

// Attach reads the running stack's state; it fails when no ready stack
// runs.
func Attach() (*Stack, error) {
	b, err := os.ReadFile(stateFile())
	if err != nil {
		return nil, err
	}
	s := &Stack{logf: func(string, ...any) {}, closed: make(chan struct{})}
	if err := json.Unmarshal(b, &s.Info); err != nil {
		return nil, fmt.Errorf("stack: %s: %w", stateFile(), err)
	}
	if !alive(s.Owner, s.OwnerStart) {
		return nil, fmt.Errorf("stack: the owner (pid %d) of %s is gone", s.Owner, stateFile())
	}
	// What the configurations are rendered from (RestartComputes writes
	// nova-compute's nova.conf again): without it an attached process
	// would write one with no transport_url and no Keystone address.
	s.env = env{Addr: s.Addr, Transport: s.Transport, Firewall: firewallDriver(s.Firewall)}
	return s, nil
}

// firewallDriver is the driver Info.Firewall names first ("noop (probe
// failed: …)", "iptables (…)").
func firewallDriver(info string) string {
	if f := strings.Fields(info); len(f) > 0 {
		return f[0]
	}
	return ""
}

func start(ctx context.Context, o Options, attachWhileWaiting bool) (s *Stack, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("stack: must run as root")
	}
	if err := checkBinaries(exec.LookPath, binaries()); err != nil {
		return nil, err
	}
	s = &Stack{o: o, logf: o.Logf, owned: true, closed: make(chan struct{}), started: time.Now(), compute: map[string]*proc{}}
	var attached *Stack
	attach := func() bool {
		if !attachWhileWaiting {
			return false
		}
		a, err := Attach()
		if err == nil {
			attached = a
		}
		return err == nil
	}
	if s.lock, err = lab.WaitLock(ctx, lockFile, "stack", s.logf, attach); err != nil {
		return nil, err
	}
	if attached != nil {
		s.logf("stack: attached to the stack pid %d started meanwhile", attached.Owner)
		return attached, nil
	}
	self := s // "return nil, err" clears s before the deferred cleanup runs
	defer func() {
		if err != nil {
			self.Close()
		}
	}()
	// Signals: tear down once and exit, whichever of the stack's and the
	// lab's handlers sees it first (both end in the same sync.Once).
	s.sig = make(chan os.Signal, 1)
	signal.Notify(s.sig, syscall.SIGINT, syscall.SIGTERM)
	go s.onSignal() // owner: s (Close closes s.closed)

	if s.broker, err = rabbit.FromEnv(); err != nil {
		return nil, err
	}
	s.step("reap earlier runs", func() error { return reapRecord(s.logf, s.dropBroker) })
	if err := os.RemoveAll(logDir); err != nil { // the last run's logs stay until the next start
		return nil, err
	}
	st, _ := startTime(os.Getpid())
	s.Owner, s.OwnerStart = os.Getpid(), st
	if err := updateRecord(func(r *record) { *r = record{Owner: s.Owner} }); err != nil {
		return nil, err
	}
	s.Addr = lab.RootMgmtAddr.String()
	s.AuthURL = fmt.Sprintf("http://%s:%d/v3", s.Addr, PortKeystone)
	s.Logs = logDir
	s.env = env{Addr: s.Addr}
	s.db = newMariaDB()
	if err := checkPorts(s.rootServices(true)); err != nil {
		return nil, err
	}
	if err := s.up(ctx); err != nil {
		return nil, err
	}
	b, _ := json.MarshalIndent(s.Info, "", "  ")
	if err := os.WriteFile(stateFile(), b, 0o600); err != nil {
		return nil, err
	}
	s.logf("stack: up in %.1fs; %s", time.Since(s.started).Seconds(), s.Usage())
	return s, nil
}

func (s *Stack) step(name string, f func() error) {
	if err := s.timed(name, f); err != nil {
		s.logf("stack: %s: %v (continuing)", name, err)
	}
}

func (s *Stack) timed(name string, f func() error) error {
	t := time.Now()
	err := f()
	d := time.Since(t)
	s.mu.Lock()
	s.Timings = append(s.Timings, Timing{Step: name, Seconds: d.Round(100 * time.Millisecond).Seconds()})
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.logf("stack: %s done in %.1fs", name, d.Seconds())
	return nil
}

// parallel runs the named steps concurrently and joins their errors.
func (s *Stack) parallel(steps map[string]func() error) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(steps))
	for name, f := range steps {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- s.timed(name, f) }() // owner: parallel (waits)
	}
	wg.Wait()
	close(errs)
	var all []error
	for e := range errs {
		if e != nil {
			all = append(all, e)
		}
	}
	return errors.Join(all...)
}

// up brings everything up, in as few sequential stages as the
// dependencies allow (2 cores: at most a few Python starts at once).
func (s *Stack) up(ctx context.Context) error {
	for _, d := range []string{workDir("etc"), logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	groups := s.dbGroups()
	if err := s.writeConfigs(); err != nil { // with a placeholder transport_url, for the database tools
		return err
	}
	var restored map[string]bool
	// Stage 1: the lab, the broker's vhost and user, the databases.
	err := s.parallel(map[string]func() error{
		"lab": func() error {
			l, err := lab.Start(ctx, lab.Options{Logf: s.logf, RootMgmt: true, Mounts: s.hostMounts, BeforeTeardown: s.teardown})
			s.Lab = l
			return err
		},
		"rabbitmq vhost and user": func() error { return s.newBrokerUser(ctx) },
		"databases": func() error {
			if err := s.timed("mariadb", func() error { return s.db.start(ctx) }); err != nil {
				return err
			}
			s.addProc(s.db.proc)
			var err error
			restored, err = s.db.prepare(ctx, groups, s.recipe(), s.logf)
			return err
		},
	})
	if err != nil {
		return err
	}
	if err := s.writeConfigs(); err != nil {
		return err
	}
	if err := checkPorts(s.rootServices(false)); err != nil {
		return err
	}
	if s.relay, err = startRelay(fmt.Sprintf("%s:%d", s.Addr, PortRabbit), s.broker.Host); err != nil {
		return fmt.Errorf("stack: rabbitmq relay on %s:%d: %w", s.Addr, PortRabbit, err)
	}
	// Stage 2: Keystone, and its catalog when its database was new.
	if err := s.timed("keystone", func() error { return s.startNamed(ctx, "keystone") }); err != nil {
		return err
	}
	if !restored["keystone"] {
		a, err := dialIdentity(ctx, s.AuthURL, "admin", AdminPassword, "admin")
		if err != nil {
			return err
		}
		if err := s.timed("keystone catalog", func() error { return s.env.setupIdentity(ctx, a) }); err != nil {
			return err
		}
		if err := s.db.dump(ctx, []string{"keystone"}, s.group(groups, "keystone").dumpPath(s.recipe())); err != nil {
			return err
		}
	}
	// Stage 3: the APIs; then conductor and scheduler (their readiness is
	// their Service record, read through nova-api).
	if err := s.parallel(map[string]func() error{
		"placement": func() error { return s.startNamed(ctx, "placement") },
		"glance":    func() error { return s.startNamed(ctx, "glance") },
		"nova-api":  func() error { return s.startNamed(ctx, "nova-api") },
		"neutron":   func() error { return s.startNamed(ctx, "neutron-server") },
	}); err != nil {
		return err
	}
	// gophercloud discovers each service's versions at its endpoint: only
	// now can it find them all.
	if s.api, err = Dial(ctx, s.AuthURL, "admin", AdminPassword, "admin"); err != nil {
		return err
	}
	if err := s.parallel(map[string]func() error{
		"nova-conductor": func() error { return s.startNamed(ctx, "nova-conductor") },
		"nova-scheduler": func() error { return s.startNamed(ctx, "nova-scheduler") },
		"firewall probe": func() error { s.Firewall = s.probeFirewall(ctx); return nil },
	}); err != nil {
		return err
	}
	// Stage 4: each lab host's agent and nova-compute; the cloud's flavors,
	// network and images meanwhile.
	hostSteps := map[string]func() error{
		"flavors, network, images": func() error { return s.populate(ctx) },
	}
	for _, h := range s.Lab.Hosts {
		hostSteps["host "+h.Name] = func() error { return s.startHost(ctx, h) }
	}
	if err := s.parallel(hostSteps); err != nil {
		return err
	}
	return s.writeClouds()
}

func (s *Stack) group(gs []*dbGroup, name string) *dbGroup {
	for _, g := range gs {
		if g.name == name {
			return g
		}
	}
	return nil
}

// recipe is what the cached databases depend on besides the packages.
func (s *Stack) recipe() string {
	return strings.Join([]string{s.env.Addr, AdminPassword, ServicePass, dbPassword, Region,
		strings.Join(ServiceUsers, ","), fmt.Sprint(catalog)}, "|")
}

// hostMounts are the bind mounts each lab host gets: the real QEMU at a
// private path, the shim over its public one, and a QEMU capabilities
// cache of the stack's own. QEMU 7.2 finds its modules and firmware
// relative to its own directory (../lib/<triplet>/qemu, ../share/qemu), so
// the private path is a bin/ beside lib and share links to /usr's; with a
// bare path QEMU fails with "could not load module for type
// 'tcg-accel-ops'". libvirt keys its capabilities cache on the emulator's
// ctime, so the shim is rewritten only when it changes, in CacheDir, and
// each host's cache survives the run (Nova's start probes
// /usr/bin/qemu-system-x86_64, ~20 s per host, ~50 s under load).
func (s *Stack) hostMounts(h *lab.Host) []lab.Mount {
	dir := filepath.Join(CacheDir, "qemu")
	real, shim := filepath.Join(dir, "bin", "qemu-system-x86_64"), filepath.Join(dir, "qemu-shim")
	caps := filepath.Join(CacheDir, "qemu-caps", h.Name)
	_ = os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	_ = os.MkdirAll(caps, 0o755)
	if _, err := os.Stat(real); err != nil {
		_ = os.WriteFile(real, nil, 0o755) // the mount target
	}
	_ = os.Symlink("/usr/lib", filepath.Join(dir, "lib"))
	_ = os.Symlink("/usr/share", filepath.Join(dir, "share"))
	want := qemuShim(filepath.Join(lab.CacheDir, "qemu-tcg-wrap"), real)
	if b, err := os.ReadFile(shim); err != nil || string(b) != want {
		_ = os.WriteFile(shim, []byte(want), 0o755)
	}
	return []lab.Mount{
		{Source: "/usr/bin/qemu-system-x86_64", Target: real},
		{Source: shim, Target: "/usr/bin/qemu-system-x86_64"},
		{Source: caps, Target: "/var/cache/libvirt/qemu/capabilities"},
	}
}

func (s *Stack) newBrokerUser(ctx context.Context) error {
	if err := rabbit.EnsureRunning(ctx); err != nil {
		return err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := fmt.Sprintf("ferry-stack-%d", os.Getpid())
	pass := hex.EncodeToString(b[:])
	if err := updateRecord(func(r *record) { r.VHost, r.User = name, name }); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"add_vhost", name},
		{"add_user", name, pass},
		{"set_permissions", "-p", name, name, ".*", ".*", ".*"},
	} {
		if _, err := rabbit.Ctl(ctx, append([]string{"-q"}, args...)...); err != nil {
			return err
		}
	}
	s.Transport = fmt.Sprintf("rabbit://%s:%s@%s:%d/%s", name, pass, s.Addr, PortRabbit, name)
	s.env.Transport = s.Transport
	return nil
}

func (s *Stack) dropBroker(vhost, user string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if vhost != "" {
		_, _ = rabbit.Ctl(ctx, "-q", "delete_vhost", vhost)
	}
	if user != "" {
		_, _ = rabbit.Ctl(ctx, "-q", "delete_user", user)
	}
}

func (s *Stack) addProc(p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs = append(s.procs, p)
}

// startNamed starts one of the root namespaces' services.
func (s *Stack) startNamed(ctx context.Context, name string) error {
	for _, svc := range s.rootServices(false) {
		if svc.Name == name {
			p, err := startService(ctx, svc)
			if err != nil {
				return err
			}
			s.addProc(p)
			return nil
		}
	}
	return fmt.Errorf("stack: no service %s", name)
}

func (s *Stack) onSignal() {
	select {
	case sig := <-s.sig:
		s.logf("stack: %v: tearing down", sig)
		s.Close()
		os.Exit(130)
	case <-s.closed:
	}
}

// Close tears an owned stack down (an attached one only forgets it).
func (s *Stack) Close() {
	s.once.Do(func() {
		close(s.closed)
		if !s.owned {
			return
		}
		if s.sig != nil {
			signal.Stop(s.sig)
		}
		s.teardown()
		if s.Lab != nil {
			s.Lab.Close()
		}
		if s.lock != nil {
			s.lock.Close()
		}
	})
}

// teardown stops the stack's own parts once: the services, the relay, then whatever the record still lists (a process an attached
// test started, the broker's vhost and user), and the work tree.
func (s *Stack) teardown() {
	s.down.Do(func() {
		t := time.Now()
		// Every service at once (SIGTERM, then SIGKILL after 10 s): one by
		// one, the oslo services' graceful stops add up to half a minute.
		s.mu.Lock()
		var groups []int
		for _, p := range s.procs {
			if p.running() {
				groups = append(groups, p.cmd.Process.Pid)
			}
		}
		s.mu.Unlock()
		killGroups(groups, 10*time.Second)
		_ = s.relay.close()
		if err := reapRecord(s.logf, s.dropBroker); err != nil {
			s.logf("stack: teardown: %v", err)
		}
		s.logf("stack: teardown done in %.1fs", time.Since(t).Seconds())
	})
}

// Usage tells a person how to use the stack.
func (s *Stack) Usage() string {
	return fmt.Sprintf("export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=%s; logs in %s", s.CloudsYAML, Cloud, s.Logs)
}

// API returns the admin's API client.
func (s *Stack) API(ctx context.Context) (*API, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.api != nil {
		return s.api, nil
	}
	a, err := Dial(ctx, s.AuthURL, "admin", AdminPassword, "admin")
	if err == nil {
		s.api = a
	}
	return a, err
}

// Host returns the named lab host ("a" or "lab-a").
func (s *Stack) Host(name string) *HostInfo {
	for i := range s.Hosts {
		if s.Hosts[i].Name == name || s.Hosts[i].Hostname == name {
			return &s.Hosts[i]
		}
	}
	return nil
}

func (s *Stack) writeClouds() error {
	s.CloudsYAML = workDir("clouds.yaml")
	return os.WriteFile(s.CloudsYAML, []byte(s.env.cloudsYAML()), 0o600)
}

// httpReady is a readiness probe: the server answers HTTP at url.
func httpReady(url string) func(context.Context) error {
	c := &http.Client{Timeout: 5 * time.Second}
	return func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

func hostPort(addr string, port int) string { return net.JoinHostPort(addr, fmt.Sprint(port)) }

// Starting returns the pid of the process that owns a stack still starting
// (its record names it and it runs), or 0.
func Starting() int {
	r, err := readRecord()
	if err != nil || r.Owner == 0 || r.Owner == os.Getpid() || syscall.Kill(r.Owner, 0) != nil {
		return 0
	}
	return r.Owner
}

// Reap undoes what a stack whose owner is gone left behind (its record):
// processes, the broker's vhost and user, the work tree. It fails while a
// live owner holds the stack's lock. (The lab's own leftovers — its
// namespaces and libvirtds — go at the next lab start.)
func Reap() error {
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("stack: a live stack holds %s: %w", lockFile, err)
	}
	s := &Stack{}
	return reapRecord(func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }, s.dropBroker)
}
