package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type mount struct{ source, target string }

// mounts are the bind mounts that give a host its private libvirt trees;
// targets are paths inside the host, sources paths in the root namespaces.
func (h *Host) mounts() []mount {
	return []mount{
		{filepath.Join(h.dir, "etc"), "/etc/libvirt"},
		{h.run, "/run/libvirt"},
		{filepath.Join(h.dir, "lib"), "/var/lib/libvirt"},
		{filepath.Join(h.dir, "log"), "/var/log/libvirt"},
		{filepath.Join(h.dir, "cache"), "/var/cache/libvirt"},
		{filepath.Join(h.dir, "hosts"), "/etc/hosts"},
		{filepath.Join(h.dir, "instances"), InstancesPath},
	}
}

// allMounts are the lab's mounts and then the user's (Options.Mounts).
func (h *Host) allMounts() []mount {
	ms := h.mounts()
	for _, m := range h.extra {
		ms = append(ms, mount{m.Source, m.Target})
	}
	return ms
}

// LogDir is the host's /var/log/libvirt as seen from the root namespaces.
func (h *Host) LogDir() string { return h.Path("/var/log/libvirt") }

func (l *Lab) startDaemons(ctx context.Context) error {
	if err := l.ensureMountpoints(); err != nil {
		return err
	}
	for _, h := range l.Hosts {
		if err := l.prepareHost(h); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	// The first host probes QEMU (once per emulator; ~17 s cold, instant with
	// a valid cache); the others start from its cache.
	for i, h := range l.Hosts {
		if i > 0 {
			if err := copyDir(filepath.Join(CacheDir, "qemu-caps"), filepath.Join(h.dir, "cache", "qemu", "capabilities")); err != nil {
				return err
			}
		}
		if err := l.startDaemon(ctx, h); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
		if i == 0 {
			t := time.Now()
			if err := primeCaps(ctx, h); err != nil {
				return fmt.Errorf("host %s: probe QEMU: %w", h.Name, err)
			}
			l.logf("lab: QEMU capabilities ready in %.1fs", time.Since(t).Seconds())
			if err := copyDir(filepath.Join(h.dir, "cache", "qemu", "capabilities"), filepath.Join(CacheDir, "qemu-caps")); err != nil {
				return err
			}
		}
	}
	return nil
}

// ensureMountpoints creates, and records, the mount targets that a machine
// whose libvirt never ran lacks.
func (l *Lab) ensureMountpoints() error {
	for _, m := range (&Host{}).mounts() {
		if m.target == "/etc/hosts" {
			continue
		}
		if _, err := os.Stat(m.target); err == nil {
			continue
		}
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := l.rec.add(func(r *record) { r.Mountpoints = append(r.Mountpoints, m.target) }); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) prepareHost(h *Host) error {
	for _, m := range h.mounts() {
		if m.target == "/etc/hosts" {
			continue
		}
		if err := os.MkdirAll(m.source, 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"log/qemu", "lib/qemu", "cache/qemu/capabilities"} {
		if err := os.MkdirAll(filepath.Join(h.dir, d), 0o755); err != nil {
			return err
		}
	}
	// A private copy of /etc/libvirt without autostarted networks: no
	// default network, no dnsmasq, no iptables in any namespace.
	if err := copyDir("/etc/libvirt", filepath.Join(h.dir, "etc")); err != nil {
		return err
	}
	_ = os.RemoveAll(filepath.Join(h.dir, "etc", "qemu", "networks", "autostart"))
	hosts := "127.0.0.1 localhost\n"
	for _, o := range l.Hosts {
		hosts += fmt.Sprintf("%s %s\n", o.Mgmt, o.Hostname)
	}
	files := map[string]string{
		"hosts": hosts,
		"etc/libvirtd.conf": fmt.Sprintf(`# ferry lab host %s
listen_tls = 0
listen_tcp = 1
listen_addr = "%s"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_group = "root"
host_uuid = "%s"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
max_client_requests = 5
`, h.Name, h.Mgmt, h.UUID),
		"etc/qemu.conf": fmt.Sprintf(`# ferry lab host %s
security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
migration_address = "%s"
migration_host = "%s"
`, h.Name, h.Mig, h.Mig),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(h.dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) startDaemon(ctx context.Context, h *Host) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "set -e\nhostname %s\n", h.Hostname)
	for _, m := range h.allMounts() {
		fmt.Fprintf(&sb, "mount --bind %s %s\n", m.source, m.target)
	}
	sb.WriteString("exec libvirtd --listen --pid-file /run/libvirt/libvirtd.pid\n")
	logf, err := os.Create(filepath.Join(h.dir, "libvirtd.out"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", h.Netns,
		"unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", "-c", sb.String())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	h.pid = cmd.Process.Pid
	l.procs.Add(1)
	go func() { defer l.procs.Done(); _ = cmd.Wait() }()
	if err := l.rec.add(func(r *record) { r.Procs = append(r.Procs, procRec{PID: h.pid, Comm: "libvirtd"}) }); err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := h.Dial(ctx)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(h.dir, "libvirtd.out"))
			return fmt.Errorf("libvirtd did not answer on %s within 60s: %w; output: %s", h.SocketPath(), err, out)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// primeCaps makes libvirtd probe the emulator the guests use.
func primeCaps(ctx context.Context, h *Host) error {
	c, err := h.Dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err = c.DomainCapabilities(ctx, emulatorPath(), "qemu"); err != nil {
		return err
	}
	// The hypervisor version libvirt reports (and ferry reads before every
	// migration) comes from the default emulator's capabilities, a binary
	// of its own: probe it now, not inside the first migration.
	_, err = c.Versions(ctx)
	return err
}

// copyDir copies a directory tree (regular files, dirs and symlinks).
func copyDir(src, dst string) error {
	if _, err := os.Stat(src); os.IsNotExist(err) {
		return nil
	}
	return filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(to, fi.Mode().Perm()|0o700)
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			_ = os.Remove(to)
			return os.Symlink(target, to)
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(to, b, fi.Mode().Perm())
		}
		return nil
	})
}

// RestartLibvirtd stops a host's libvirtd as `systemctl restart libvirtd`
// does (SIGTERM: the guests' QEMUs go on) and starts it again; the new
// daemon reconnects to the QEMUs it finds.
func (l *Lab) RestartLibvirtd(ctx context.Context, h *Host) error {
	if err := h.stopLibvirtd(syscall.SIGTERM); err != nil {
		return err
	}
	return l.startDaemon(ctx, h)
}

// LoseHost makes a host vanish as a power cut would: its links go down
// first (nothing it sends reaches anyone after), then its libvirtd and
// every QEMU in its network namespace are killed. RestoreHost brings it
// back, empty of guests.
func (l *Lab) LoseHost(ctx context.Context, h *Host) error {
	for _, iface := range []string{"mgmt0", "mig0"} {
		if err := h.SetLink(ctx, iface, false); err != nil {
			return err
		}
	}
	out, err := run(ctx, "ip", "netns", "pids", h.Netns)
	if err != nil {
		return err
	}
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.Contains(filepath.Base(exe), "qemu-system") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return h.stopLibvirtd(syscall.SIGKILL)
}

// RestoreHost undoes LoseHost: links up, libvirtd started.
func (l *Lab) RestoreHost(ctx context.Context, h *Host) error {
	for _, iface := range []string{"mgmt0", "mig0"} {
		if err := h.SetLink(ctx, iface, true); err != nil {
			return err
		}
	}
	return l.startDaemon(ctx, h)
}

// stopLibvirtd signals the host's libvirtd and waits until it is gone.
func (h *Host) stopLibvirtd(sig syscall.Signal) error {
	if err := syscall.Kill(h.pid, sig); err != nil {
		return fmt.Errorf("host %s: stop libvirtd: %w", h.Name, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(h.pid, 0) == nil { // the start's reaper waits for it
		if time.Now().After(deadline) {
			return fmt.Errorf("host %s: libvirtd (pid %d) still running 30s after %v", h.Name, h.pid, sig)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
