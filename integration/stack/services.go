package stack

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"opendev.org/x/ferry/integration/lab"
)

// binaries are what the stack runs; a missing one stops Start at once.
func binaries() []string {
	return []string{"uwsgi", "mariadbd", "mariadb-install-db", "mariadb-dump", "mariadb", "keystone-manage",
		"keystone-wsgi-public", "glance-manage", "glance-wsgi-api", "placement-manage", "placement-api",
		"nova-manage", "nova-api-wsgi", "nova-conductor", "nova-scheduler", "nova-compute", "neutron-server",
		"neutron-db-manage", "neutron-linuxbridge-agent", "privsep-helper", "openstack", "rabbitmqctl", "nsenter",
		"qemu-img", "qemu-system-x86_64"}
}

// placeholderTransport is in the configuration the database tools read
// while the run's broker user is still being made (nova-manage parses a
// transport URL but stores cell1's as a template).
const placeholderTransport = "rabbit://stack:placeholder@127.0.0.1:5672/stack"

// cell1Transport makes cell1's mapping follow each run's transport_url.
const cell1Transport = "{scheme}://{username}:{password}@{hostname}:{port}/{path}"

func conf(parts ...string) string { return workDir(append([]string{"etc"}, parts...)...) }

// uwsgi runs a WSGI application as Debian's packaging does, on loopback
// and the management address, with few processes and threads (2 cores).
func (s *Stack) uwsgi(name, wsgiFile string, port, procs, threads int, extra ...string) []string {
	args := []string{"uwsgi", "--plugins", "python3", "--master", "--die-on-term", "--lazy-apps", "--enable-threads",
		"--need-app", "--no-orphans", "--processes", fmt.Sprint(procs), "--threads", fmt.Sprint(threads), "--buffer-size", "65535",
		"--procname-prefix-spaced", "ferry-stack-" + name,
		"--http-socket", hostPort("127.0.0.1", port), "--http-socket", hostPort(s.Addr, port), "--wsgi-file", wsgiFile,
		// uwsgi's http-socket closes the connection after each response; a
		// client that reuses it is reset ("Connection reset by peer", the
		// openstack client on Keystone included). Debian's glance, placement
		// and neutron ini files add this header; keystone's drops
		// Content-Length instead; nova-api's does neither. Here every API says it.
		"--add-header", "Connection: close"}
	return append(args, extra...)
}

// debianUwsgi are the options of Debian's glance and placement uwsgi ini
// files that uwsgi's http-socket knows (the ini's http-* chunking keys
// belong to uwsgi's http router, which Debian's files do not load).
var debianUwsgi = []string{"--socket-timeout", "10"}

// rootServices are the shared services; early leaves out the management
// address (it exists only once the lab's networks are up).
func (s *Stack) rootServices(early bool) []service {
	ports := func(port int) []string {
		if early {
			return []string{hostPort("127.0.0.1", port)}
		}
		return []string{hostPort("127.0.0.1", port), hostPort(s.Addr, port)}
	}
	novaUp := func(binary string) func(context.Context) error {
		return func(ctx context.Context) error { return s.serviceUp(ctx, binary, "") }
	}
	var svcs []service
	if early { // MariaDB runs by the time the others are checked again
		svcs = append(svcs, s.db.service())
	}
	svcs = append(svcs, []service{
		{Name: "keystone", Args: s.uwsgi("keystone", "/usr/bin/keystone-wsgi-public", PortKeystone, 1, 2),
			Env: []string{"OS_KEYSTONE_CONFIG_FILES=" + conf("keystone", "keystone.conf")}, Ports: ports(PortKeystone),
			Ready: httpReady(fmt.Sprintf("http://127.0.0.1:%d/v3", PortKeystone))},
		{Name: "placement", Args: s.uwsgi("placement", "/usr/bin/placement-api", PortPlacement, 1, 2, debianUwsgi...),
			Env: []string{"OS_PLACEMENT_CONFIG_DIR=" + conf("placement")}, Ports: ports(PortPlacement),
			Ready: httpReady(fmt.Sprintf("http://127.0.0.1:%d/", PortPlacement))},
		{Name: "glance", Args: s.uwsgi("glance", "/usr/bin/glance-wsgi-api", PortGlance, 1, 2, debianUwsgi...),
			Env: []string{"OS_GLANCE_CONFIG_DIR=" + conf("glance")}, Ports: ports(PortGlance),
			Ready: httpReady(fmt.Sprintf("http://127.0.0.1:%d/versions", PortGlance))},
		// nova-api monkey-patches eventlet: one thread per process, as
		// Debian's ini has it (two threads fail with "greenlet.error:
		// cannot switch to a different thread").
		{Name: "nova-api", Args: s.uwsgi("nova-api", "/usr/bin/nova-api-wsgi", PortNova, 1, 1),
			Env: []string{"OS_NOVA_CONFIG_DIR=" + conf("nova")}, Ports: ports(PortNova),
			Ready: httpReady(fmt.Sprintf("http://127.0.0.1:%d/", PortNova))},
		// neutron-server (API and RPC in one eventlet process, as the
		// package's neutron-server runs them) binds one address: the
		// management one, which the root namespaces reach too.
		{Name: "neutron-server", Args: []string{"neutron-server", "--config-file", conf("neutron", "neutron.conf"),
			"--config-file", conf("neutron", "ml2_conf.ini")}, Ports: ports(PortNeutron)[len(ports(PortNeutron))-1:],
			Ready: httpReady(fmt.Sprintf("http://%s:%d/", s.Addr, PortNeutron)), Timeout: 3 * time.Minute},
		{Name: "nova-conductor", Args: []string{"nova-conductor", "--config-file", conf("nova", "nova.conf")}, Ready: novaUp("nova-conductor")},
		{Name: "nova-scheduler", Args: []string{"nova-scheduler", "--config-file", conf("nova", "nova.conf")}, Ready: novaUp("nova-scheduler")},
	}...)
	if early { // neutron-server has no loopback socket to check early
		for i := range svcs {
			if svcs[i].Name == "neutron-server" {
				svcs[i].Ports = nil
			}
		}
	}
	return svcs
}

// dbGroups initialise each service's databases with its own tools.
func (s *Stack) dbGroups() []*dbGroup {
	nova := func(ctx context.Context, args ...string) error {
		return run(ctx, "nova-manage", nil, append([]string{"nova-manage", "--config-file", conf("nova", "nova.conf")}, args...)...)
	}
	return []*dbGroup{
		{name: "keystone", pkg: "keystone", dbs: []string{"keystone"}, dumpLater: true, init: func(ctx context.Context) error {
			kc := []string{"keystone-manage", "--config-file", conf("keystone", "keystone.conf")}
			if err := run(ctx, "keystone-manage", nil, append(kc, "db_sync")...); err != nil {
				return err
			}
			u := s.env.url(PortKeystone, "/v3/")
			return run(ctx, "keystone-manage", nil, append(kc, "bootstrap", "--bootstrap-password", AdminPassword,
				"--bootstrap-username", "admin", "--bootstrap-project-name", "admin", "--bootstrap-role-name", "admin",
				"--bootstrap-service-name", "keystone", "--bootstrap-region-id", Region,
				"--bootstrap-admin-url", u, "--bootstrap-public-url", u, "--bootstrap-internal-url", u)...)
		}},
		{name: "glance", pkg: "glance-common", dbs: []string{"glance"}, init: func(ctx context.Context) error {
			return run(ctx, "glance-manage", nil, "glance-manage", "--config-file", conf("glance", "glance-api.conf"), "db_sync")
		}},
		{name: "placement", pkg: "python3-placement", dbs: []string{"placement"}, init: func(ctx context.Context) error {
			return run(ctx, "placement-manage", nil, "placement-manage", "--config-file", conf("placement", "placement.conf"), "db", "sync")
		}},
		{name: "nova", pkg: "nova-common", dbs: []string{"nova_api", "nova_cell0", "nova_cell1"}, init: func(ctx context.Context) error {
			for _, args := range [][]string{
				{"api_db", "sync"},
				{"cell_v2", "map_cell0", "--database_connection", dbURL("nova_cell0")},
				{"cell_v2", "create_cell", "--name", "cell1", "--transport-url", cell1Transport, "--database_connection", dbURL("nova_cell1")},
				{"db", "sync"},
			} {
				if err := nova(ctx, args...); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: "neutron", pkg: "neutron-common", dbs: []string{"neutron"}, init: func(ctx context.Context) error {
			return run(ctx, "neutron-db-manage", nil, "neutron-db-manage", "--config-file", conf("neutron", "neutron.conf"),
				"--config-file", conf("neutron", "ml2_conf.ini"), "upgrade", "heads")
		}},
	}
}

// writeConfigs writes the shared services' files (again once the run's
// transport URL is known).
func (s *Stack) writeConfigs() error {
	if s.env.Transport == "" {
		s.env.Transport = placeholderTransport
	}
	files := map[string]string{
		conf("keystone", "keystone.conf"):      keystoneConf().String(),
		conf("glance", "glance-api.conf"):      s.env.glanceConf().String(),
		conf("placement", "placement.conf"):    s.env.placementConf().String(),
		conf("nova", "nova.conf"):              s.env.novaConf().String(),
		conf("neutron", "neutron.conf"):        s.env.neutronConf().String(),
		conf("neutron", "ml2_conf.ini"):        ml2Conf().String(),
		conf("glance", "glance-api-paste.ini"): "",
		conf("nova", "api-paste.ini"):          "",
	}
	copies := map[string]string{
		conf("glance", "glance-api-paste.ini"): "/etc/glance/glance-api-paste.ini",
		conf("nova", "api-paste.ini"):          "/etc/nova/api-paste.ini",
	}
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if from, ok := copies[path]; ok {
			b, err := os.ReadFile(from)
			if err != nil {
				return fmt.Errorf("stack: %w (a package's file is missing: run integration/deps.sh)", err)
			}
			content = string(b)
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			return err
		}
	}
	for _, d := range []string{"fernet-keys", "credential-keys"} {
		p := workDir("keystone", d)
		if _, err := os.Stat(p); err != nil {
			if err := writeFernetKeys(p); err != nil {
				return err
			}
		}
	}
	for _, d := range []string{workDir("glance", "images"), workDir("nova"), workDir("neutron")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// serviceUp waits for a Nova service's record to say up (host "" = any).
func (s *Stack) serviceUp(ctx context.Context, binary, host string) error {
	return s.serviceUpSince(ctx, binary, host, time.Time{})
}

// serviceUpSince also wants the record updated after since: a restarted
// service's record still says "up" from its last life for a minute
// (service_down_time).
func (s *Stack) serviceUpSince(ctx context.Context, binary, host string, since time.Time) error {
	var out struct {
		Services []struct {
			Binary, Host, State, Status string
			Updated                     string `json:"updated_at"`
		} `json:"services"`
	}
	q := "os-services?binary=" + binary
	if host != "" {
		q += "&host=" + host
	}
	if err := Do(ctx, s.api.Compute, "GET", q, nil, &out); err != nil {
		return err
	}
	for _, sv := range out.Services {
		u, err := time.Parse("2006-01-02T15:04:05.000000", sv.Updated)
		if sv.State == "up" && (since.IsZero() || (err == nil && u.After(since.UTC()))) {
			return nil
		}
	}
	return fmt.Errorf("%s on %q: not up in os-services (%+v)", binary, host, out.Services)
}

// startHost starts a lab host's linuxbridge agent and nova-compute inside
// its network, mount and UTS namespaces.
func (s *Stack) startHost(ctx context.Context, h *lab.Host) error {
	dir := workDir("hosts", h.Name)
	hi := HostInfo{Name: h.Name, Hostname: h.Hostname, Netns: h.Netns, Mgmt: h.Mgmt.String(), Mig: h.Mig.String(),
		URI: h.URI(), Instances: h.Path(lab.InstancesPath), NSPID: h.PID(), ComputeLog: logPath("nova-compute@" + h.Name)}
	s.mu.Lock()
	s.Hosts = append(s.Hosts, hi)
	s.mu.Unlock()
	for _, d := range []string{"nova/lock", "neutron/lock"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	agentConf := filepath.Join(dir, "neutron-linuxbridge-agent.ini")
	cp := Compute{Host: h.Hostname, MyIP: h.Mgmt.String(), State: filepath.Join(dir, "nova"), Inst: lab.InstancesPath,
		Config: filepath.Join(dir, "nova.conf"), Extra: s.o.ComputeExtra}
	files := map[string]string{
		agentConf: s.env.agentConf(h.Hostname, h.Mgmt.String(), filepath.Join(dir, "neutron"), agentConf).String(),
		cp.Config: s.env.computeConf(cp).String(),
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			return err
		}
	}
	agent := service{Name: "neutron-linuxbridge-agent@" + h.Name, NSPID: h.PID(),
		Args:  []string{"neutron-linuxbridge-agent", "--config-file", agentConf},
		Ready: func(ctx context.Context) error { return s.agentAlive(ctx, h.Hostname) }, Timeout: 3 * time.Minute}
	compute := s.computeService(h.Name, h.Hostname, h.PID(), cp.Config)
	errs := make(chan error, 2)
	go func() { errs <- s.startHostService(ctx, agent, "") }()       // owner: startHost (waits)
	go func() { errs <- s.startHostService(ctx, compute, h.Name) }() // owner: startHost
	return joinErrs(<-errs, <-errs)
}

func (s *Stack) computeService(name, hostname string, nspid int, config string) service {
	started := time.Now().Add(-time.Second) // the database's clock is this machine's
	return service{Name: "nova-compute@" + name, NSPID: nspid,
		Args: []string{"nova-compute", "--config-file", config},
		Ready: func(ctx context.Context) error {
			if err := s.serviceUpSince(ctx, "nova-compute", hostname, started); err != nil {
				return err
			}
			return s.hypervisorMapped(ctx, hostname)
		}, Timeout: 3 * time.Minute}
}

func (s *Stack) startHostService(ctx context.Context, svc service, computeOf string) error {
	p, err := startService(ctx, svc)
	if err != nil {
		return err
	}
	s.addProc(p)
	if computeOf != "" {
		s.mu.Lock()
		s.compute[computeOf] = p
		s.mu.Unlock()
	}
	return nil
}

func joinErrs(errs ...error) error {
	var out []string
	for _, e := range errs {
		if e != nil {
			out = append(out, e.Error())
		}
	}
	if len(out) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(out, "\n"))
}

// agentAlive waits for the host's linuxbridge agent to report in.
func (s *Stack) agentAlive(ctx context.Context, host string) error {
	var out struct {
		Agents []struct {
			Alive bool   `json:"alive"`
			Host  string `json:"host"`
		} `json:"agents"`
	}
	if err := Do(ctx, s.api.Network, "GET", "agents?binary=neutron-linuxbridge-agent&host="+host, nil, &out); err != nil {
		return err
	}
	if len(out.Agents) == 1 && out.Agents[0].Alive {
		return nil
	}
	return fmt.Errorf("linuxbridge agent on %s not alive (%+v)", host, out.Agents)
}

// hypervisorMapped waits for the scheduler's periodic discovery to map
// the host into cell1 (discover_hosts_in_cells_interval).
func (s *Stack) hypervisorMapped(ctx context.Context, host string) error {
	var out struct {
		Hypervisors []struct {
			Name  string `json:"hypervisor_hostname"`
			State string `json:"state"`
		} `json:"hypervisors"`
	}
	if err := Do(ctx, s.api.Compute, "GET", "os-hypervisors?hypervisor_hostname_pattern="+host, nil, &out, 200, 404); err != nil {
		return err
	}
	for _, h := range out.Hypervisors {
		if h.Name == host && h.State == "up" {
			return nil
		}
	}
	return fmt.Errorf("hypervisor %s not listed yet", host)
}

// probeFirewall tells which firewall driver the agents can use here: the
// iptables driver needs bridge netfilter, conntrack zones and ipset inside
// a host's network namespace.
func (s *Stack) probeFirewall(ctx context.Context) string {
	h := s.Lab.Hosts[0]
	sh := `set -e
test -e /proc/sys/net/bridge/bridge-nf-call-iptables
iptables -w -t raw -N ferry-probe
iptables -w -t raw -A ferry-probe -j CT --zone 4097
iptables -w -t raw -F ferry-probe
iptables -w -t raw -X ferry-probe
ipset create ferry-probe hash:net
ipset destroy ferry-probe`
	out, err := runIn(ctx, h.PID(), "sh", "-c", sh)
	if err != nil {
		s.logf("stack: firewall probe in %s failed (%v: %s): agents use firewall_driver noop", h.Netns, err, strings.TrimSpace(out))
		s.env.Firewall = "noop"
		return "noop (probe failed: " + strings.TrimSpace(out) + ")"
	}
	s.env.Firewall = "iptables"
	verdict := "iptables (bridge netfilter, conntrack zones and ipset work in the host namespaces)"
	// The agent's ARP protection (ebtables, for ports with port security)
	// must be removable too; here it is not, which is why the tenant
	// network has port security off (populate).
	eb := `ebtables -t nat -N ferry-probe && ebtables -t nat -A ferry-probe -i x --among-src fa:16:3e:00:00:01 -j RETURN && ebtables -t nat -D ferry-probe -i x --among-src fa:16:3e:00:00:01 -j RETURN; rc=$?; ebtables -t nat -F ferry-probe; ebtables -t nat -X ferry-probe; exit $rc`
	if out, err := runIn(ctx, h.PID(), "sh", "-c", eb); err != nil {
		verdict += "; but the linuxbridge agent's ARP protection cannot be removed (" + strings.TrimSpace(out) +
			"), so the tenant network has port security off and its ports no security groups"
	}
	return verdict
}

// runIn runs a command in the namespaces of process nspid.
func runIn(ctx context.Context, nspid int, args ...string) (string, error) {
	var b bytes.Buffer
	cmd := execCommand(ctx, append([]string{"nsenter", "--target", fmt.Sprint(nspid), "--net", "--mount", "--uts", "--"}, args...))
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}
