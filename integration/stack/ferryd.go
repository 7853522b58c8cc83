package stack

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"opendev.org/x/ferry/internal/testpki"
)

// Ferryd is a native-mode ferryd that took over a lab host from its stock
// nova-compute (HandToFerryd).
type Ferryd struct {
	Host      *HostInfo
	Config    string // its ferryd.yaml
	StateDir  string // its journals
	Log       string
	Companion bool // beside the host's nova-compute (ToCompanion), not in its place
	bin       string
	proc      *proc
	starts    int // how many times it started (its log is appended to)
}

// FerrydOptions tune the hand-over.
type FerrydOptions struct {
	Bin       string // a built ferryd; default: built from ./cmd/ferryd
	Migration string // extra lines under "migration:" (indented two spaces)
}

// HandToFerryd hands a lab host to a native-mode ferryd, as an operator
// replaces a compute service: the stock nova-compute has registered the
// host (Service, ComputeNode, resource provider — checked here), it is
// stopped, and ferryd takes its compute.<host> queue, reaching Placement
// through Keystone as the "ferry" service user. ferryd runs inside the
// host's network, mount and UTS namespaces, as nova-compute did.
func (s *Stack) HandToFerryd(ctx context.Context, host string, o FerrydOptions) (*Ferryd, error) {
	h := s.Host(host)
	if h == nil {
		return nil, fmt.Errorf("stack: no host %q", host)
	}
	a, err := s.API(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.registered(ctx, a, h); err != nil {
		return nil, err
	}
	if err := s.StopCompute(ctx, h.Hostname); err != nil {
		return nil, err
	}
	if o.Bin == "" {
		if o.Bin, err = buildFerryd(ctx); err != nil {
			return nil, err
		}
	}
	f := &Ferryd{Host: h, StateDir: workDir("hosts", h.Name, "ferryd"), Config: workDir("hosts", h.Name, "ferryd.yaml"),
		Log: logPath("ferryd@" + h.Name), bin: o.Bin}
	if err := os.MkdirAll(f.StateDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(f.Config, []byte(s.ferrydConfig(h, f.StateDir, o.Migration)), 0o600); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(f.Log); err == nil {
		f.starts = strings.Count(string(b), `"msg":"serving: every queue consumed"`)
	}
	if err := f.Start(ctx); err != nil {
		return nil, err
	}
	s.addProc(f.proc)
	return f, nil
}

// Stop ends the ferryd (SIGTERM).
func (f *Ferryd) Stop() { f.proc.stop() }

// registered checks what the stock nova-compute registers for a host.
func (s *Stack) registered(ctx context.Context, a *API, h *HostInfo) error {
	if err := s.serviceUp(ctx, "nova-compute", h.Hostname); err != nil {
		return fmt.Errorf("stack: hand %s to ferryd: %w", h.Hostname, err)
	}
	if err := s.hypervisorMapped(ctx, h.Hostname); err != nil {
		return fmt.Errorf("stack: hand %s to ferryd: %w", h.Hostname, err)
	}
	var rps struct {
		ResourceProviders []struct{ UUID string } `json:"resource_providers"`
	}
	if err := Do(ctx, a.Placement, "GET", "resource_providers?name="+h.Hostname, nil, &rps); err != nil {
		return err
	}
	if len(rps.ResourceProviders) != 1 {
		return fmt.Errorf("stack: hand %s to ferryd: %d resource providers named so", h.Hostname, len(rps.ResourceProviders))
	}
	return nil
}

// StopCompute stops a host's nova-compute (its Service record stays and
// goes "down" after service_down_time, as it does when an operator stops
// the service).
func (s *Stack) StopCompute(ctx context.Context, host string) error {
	h := s.Host(host)
	if h == nil {
		return fmt.Errorf("stack: no host %q", host)
	}
	r, err := readRecord()
	if err != nil {
		return err
	}
	name := "nova-compute@" + h.Name
	var groups []int
	for _, p := range r.Procs {
		if p.Name == name {
			if st, ok := startTime(p.PGID); !ok || st == p.Start {
				groups = append(groups, p.PGID)
			}
		}
	}
	killGroups(groups, 30*time.Second)
	return nil
}

// StartCompute starts a host's stock nova-compute again (after a ferryd
// was stopped) and waits until its Service is up.
func (s *Stack) StartCompute(ctx context.Context, host string) error {
	h := s.Host(host)
	if h == nil {
		return fmt.Errorf("stack: no host %q", host)
	}
	if _, err := s.API(ctx); err != nil {
		return err
	}
	p, err := startService(ctx, s.computeService(h.Name, h.Hostname, h.NSPID, workDir("hosts", h.Name, "nova.conf")))
	if err != nil {
		return err
	}
	s.addProc(p)
	return nil
}

func (s *Stack) ferrydConfig(h *HostInfo, state, migration string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\nhost: %s\ntransport_url: %q\nlibvirt_uri: qemu:///system\n", h.Hostname, s.Transport)
	fmt.Fprintf(&b, "live_migration_inbound_addr: %s\ninstances_path: %s\nstate_dir: %s\n", h.Mig, "/var/lib/ferry/instances", state)
	b.WriteString("peers:\n")
	for _, p := range s.Hosts {
		if p.Name != h.Name {
			fmt.Fprintf(&b, "  %s:\n    management: %s\n    libvirt_uri: %q\n", p.Hostname, p.Mgmt, p.URI)
		}
	}
	b.WriteString("oslo_messaging_rabbit:\n  rpc_response_timeout: 60s\n  long_rpc_timeout: 600s\n")
	b.WriteString("migration:\n" + migration + "\n")
	fmt.Fprintf(&b, "placement:\n  auth_type: password\n  auth_url: %s\n  username: ferry\n  password: %s\n  project_name: service\n"+
		"  user_domain_name: Default\n  project_domain_name: Default\n  region_name: %s\n  valid_interfaces: internal\n",
		s.AuthURL, ServicePass, Region)
	if st, err := s.statusTLS(h); err == nil {
		// The status API on the management network, as an operator runs
		// it for the CLI: TLS, and Keystone tokens with the admin role.
		fmt.Fprintf(&b, "status:\n  listen: %s\n  tls_cert_file: %s\n  tls_key_file: %s\n  keystone:\n    auth_type: password\n"+
			"    auth_url: %s\n    username: ferry\n    password: %s\n    project_name: service\n    user_domain_name: Default\n"+
			"    project_domain_name: Default\n    region_name: %s\n    valid_interfaces: internal\n",
			net.JoinHostPort(h.Mgmt, strconv.Itoa(StatusPort)), st.Cert, st.Key, s.AuthURL, ServicePass, Region)
	} else {
		s.logf("stack: %s's ferryd serves its status API on its loopback only: %v", h.Hostname, err)
	}
	b.WriteString("log:\n  level: debug\n  format: json\n")
	return b.String()
}

// StatusPort is where each lab host's ferryd serves its status API, on
// the host's management address.
const StatusPort = 9779

// statusTLS issues h's ferryd a server certificate for its management
// address from the process's status CA, made on first use; the CLI's
// ferry.yaml (CLIConfig) trusts that CA.
func (s *Stack) statusTLS(h *HostInfo) (testpki.Pair, error) {
	s.pkiOnce.Do(func() {
		dir := workDir("pki")
		if s.pkiErr = os.MkdirAll(dir, 0o755); s.pkiErr != nil {
			return
		}
		if s.pki, s.pkiErr = testpki.NewCA(dir, "status-ca"); s.pkiErr != nil {
			return
		}
		s.pkiErr = s.writeCLIConfig(s.pki.File)
	})
	if s.pkiErr != nil {
		return testpki.Pair{}, s.pkiErr
	}
	return s.pki.Server("status-"+h.Name, h.Mgmt)
}

// CLIConfig is the ferry.yaml with which `ferry` (FERRY_CONFIG) finds
// each host's ferryd; it exists once a ferryd was configured.
func CLIConfig() string { return workDir("ferry.yaml") }

func (s *Stack) writeCLIConfig(ca string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "ferryd:\n  ca_file: %s\n  timeout: 5s\n  hosts:\n", ca)
	for _, h := range s.Hosts {
		fmt.Fprintf(&b, "    %s: https://%s\n", h.Hostname, net.JoinHostPort(h.Mgmt, strconv.Itoa(StatusPort)))
	}
	return os.WriteFile(CLIConfig(), []byte(b.String()), 0o644)
}

// buildFerryd builds ./cmd/ferryd into the stack's work tree.
func buildFerryd(ctx context.Context) (string, error) {
	return Build(ctx, workDir("bin"), "./cmd/ferryd")
}

// Build builds one of the module's commands (pkg, relative to the module's
// root) into dir and returns the binary's path, named after pkg's last
// element.
func Build(ctx context.Context, dir, pkg string) (string, error) {
	_, self, _, _ := runtime.Caller(0)
	out := filepath.Join(dir, filepath.Base(pkg))
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, pkg)
	cmd.Dir = filepath.Join(filepath.Dir(self), "..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w: %s", pkg, err, b)
	}
	return out, nil
}

// RestartComputes restarts every host's nova-compute with extra merged
// into its nova.conf (the bench's post-copy and auto-converge row; nil
// goes back to the defaults).
func (s *Stack) RestartComputes(ctx context.Context, extra map[string]map[string]string) error {
	s.o.ComputeExtra = extra
	for i := range s.Hosts {
		h := &s.Hosts[i]
		if err := s.StopCompute(ctx, h.Hostname); err != nil {
			return err
		}
		cp := Compute{Host: h.Hostname, MyIP: h.Mgmt, State: workDir("hosts", h.Name, "nova"), Inst: "/var/lib/ferry/instances",
			Config: workDir("hosts", h.Name, "nova.conf"), Extra: extra}
		if err := os.WriteFile(cp.Config, []byte(s.env.computeConf(cp).String()), 0o600); err != nil {
			return err
		}
		if err := s.StartCompute(ctx, h.Hostname); err != nil {
			return err
		}
	}
	return nil
}

// CapMigration caps every host's migration interface (mig0) at mibps
// MiB/s egress with tc (0 removes the cap): the same link for every system
// a bench compares, since Nova's default bandwidth is unlimited.
func (s *Stack) CapMigration(ctx context.Context, mibps int) error {
	for i := range s.Hosts {
		args := []string{"tc", "qdisc", "del", "dev", "mig0", "root"}
		if mibps > 0 {
			args = []string{"tc", "qdisc", "replace", "dev", "mig0", "root", "tbf", "rate", fmt.Sprintf("%dmibps", mibps),
				"burst", "4mb", "latency", "200ms"}
		}
		if out, err := s.Hosts[i].Run(ctx, args...); err != nil && mibps > 0 {
			return fmt.Errorf("stack: %s on %s: %w: %s", strings.Join(args, " "), s.Hosts[i].Hostname, err, out)
		}
	}
	return nil
}
