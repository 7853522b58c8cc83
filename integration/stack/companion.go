package stack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// ToCompanion moves a lab host into companion mode as an operator would:
// ferry's cut-over command (`ferryd cutover to-companion`) stops the
// host's stock nova-compute, gives ferryd's queue the host's compute
// traffic, sets the alternate-exchange policy, and starts nova-compute
// again on its private exchange; then ferryd starts beside it, in the
// host's network, mount and UTS namespaces, owning live migration.
func (s *Stack) ToCompanion(ctx context.Context, host string, o FerrydOptions) (*Ferryd, error) {
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
	if o.Bin == "" {
		if o.Bin, err = buildFerryd(ctx); err != nil {
			return nil, err
		}
	}
	tool, err := buildStackTool(ctx)
	if err != nil {
		return nil, err
	}
	f := &Ferryd{Host: h, StateDir: workDir("hosts", h.Name, "ferryd"), Config: workDir("hosts", h.Name, "ferryd.yaml"),
		Log: logPath("ferryd@" + h.Name), Companion: true, bin: o.Bin}
	if err := os.MkdirAll(f.StateDir, 0o755); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(f.Log); err == nil { // an earlier ferryd's lines
		f.starts = strings.Count(string(b), `"msg":"serving: every queue consumed"`)
	}
	cfg := s.ferrydConfig(h, f.StateDir, o.Migration) + s.companionConfig(h, tool)
	if err := os.WriteFile(f.Config, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	if out, err := f.CutOver(ctx, "to-companion"); err != nil {
		return nil, fmt.Errorf("stack: cut %s over to companion mode: %w\n%s", h.Hostname, err, out)
	}
	if err := f.Start(ctx); err != nil {
		return nil, err
	}
	s.addProc(f.proc)
	return f, nil
}

// ToStock gives a companion host back to its stock nova-compute alone:
// ferryd stops, and the cut-over command moves the host's traffic back.
func (s *Stack) ToStock(ctx context.Context, f *Ferryd) error {
	f.Stop()
	if out, err := f.CutOver(ctx, "to-stock"); err != nil {
		return fmt.Errorf("stack: cut %s back to the stock shape: %w\n%s", f.Host.Hostname, err, out)
	}
	return nil
}

// CutOver runs ferry's cut-over command for the host, from the root
// namespaces (it talks to the broker, runs rabbitmqctl, and stops and
// starts nova-compute through `ferry-stack compute`).
func (f *Ferryd) CutOver(ctx context.Context, direction string) (string, error) {
	cmd := exec.CommandContext(ctx, f.bin, "cutover", "--config", f.Config, direction)
	out, err := cmd.CombinedOutput()
	if lf, lerr := os.OpenFile(logPath("cutover@"+f.Host.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); lerr == nil {
		fmt.Fprintf(lf, "%s cutover %s\n%s\n", time.Now().Format(time.RFC3339), direction, out)
		lf.Close()
	}
	return string(out), err
}

// Start starts the ferryd (again) and waits until it consumes its queue.
func (f *Ferryd) Start(ctx context.Context) error {
	p, err := startService(ctx, service{Name: "ferryd@" + f.Host.Name, NSPID: f.Host.NSPID, Args: []string{f.bin, "--config", f.Config},
		Ready: func(context.Context) error {
			if b, _ := os.ReadFile(f.Log); strings.Count(string(b), `"msg":"serving: every queue consumed"`) > f.starts {
				return nil
			}
			return fmt.Errorf("not consuming yet")
		}, Timeout: time.Minute})
	if err != nil {
		return err
	}
	f.proc = p
	f.starts++
	return nil
}

// Running reports whether the ferryd's process runs.
func (f *Ferryd) Running() bool { return f.proc != nil && f.proc.running() }

// Kill ends the ferryd with SIGKILL, as a crash would.
func (f *Ferryd) Kill() { f.proc.kill() }

// companionConfig is the part of a companion ferryd's configuration the
// native one lacks: the mode, Neutron (the port bindings), and what the
// cut-over needs.
func (s *Stack) companionConfig(h *HostInfo, tool string) string {
	var b strings.Builder
	b.WriteString("mode: companion\n")
	fmt.Fprintf(&b, "neutron:\n  auth_type: password\n  auth_url: %s\n  username: ferry\n  password: %s\n  project_name: service\n"+
		"  user_domain_name: Default\n  project_domain_name: Default\n  region_name: %s\n  valid_interfaces: internal\n",
		s.AuthURL, ServicePass, Region)
	fmt.Fprintf(&b, "companion:\n  cutover:\n    nova_compute_config: %s\n    stop: [%s, compute, stop, %s]\n    start: [%s, compute, start, %s]\n",
		workDir("hosts", h.Name, "nova.conf"), tool, h.Hostname, tool, h.Hostname)
	return b.String()
}

// buildStackTool builds ferry-stack (its compute stop|start is what the
// cut-over runs in place of systemctl).
func buildStackTool(ctx context.Context) (string, error) {
	return Build(ctx, workDir("bin"), "./integration/stack/cmd/ferry-stack")
}
