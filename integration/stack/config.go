package stack

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
)

// Where the shared services listen (on Addr and, for the uwsgi ones, on
// 127.0.0.1 too) and the stack's fixed credentials. The passwords are
// constants because the cached database dumps hold them; nothing here
// listens beyond the machine's loopback and the lab's own networks.
const (
	PortKeystone  = 5000
	PortGlance    = 9292
	PortPlacement = 8778
	PortNova      = 8774
	PortNeutron   = 9696
	PortMariaDB   = 13306
	PortRabbit    = 5672 // the relay onto the management address

	Region        = "RegionOne"
	AdminPassword = "ferry-stack-admin"
	ServicePass   = "ferry-stack-service" // every service user's password
	dbPassword    = "ferry-stack-db"
	Cloud         = "ferry-stack" // the clouds.yaml entry
)

// ServiceUsers are the users of the service project; "ferry" is ferryd's.
var ServiceUsers = []string{"nova", "neutron", "placement", "glance", "ferry"}

// ini is an oslo.config file: section → option → value, rendered sorted.
type ini map[string]map[string]string

func (c ini) set(section string, kv ...string) ini {
	if c[section] == nil {
		c[section] = map[string]string{}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		c[section][kv[i]] = kv[i+1]
	}
	return c
}

func (c ini) String() string {
	var names []string
	for s := range c {
		names = append(names, s)
	}
	sort.Slice(names, func(i, j int) bool { // DEFAULT first, as people write it
		if (names[i] == "DEFAULT") != (names[j] == "DEFAULT") {
			return names[i] == "DEFAULT"
		}
		return names[i] < names[j]
	})
	var b strings.Builder
	for _, s := range names {
		fmt.Fprintf(&b, "[%s]\n", s)
		var keys []string
		for k := range c[s] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s = %s\n", k, c[s][k])
		}
		b.WriteString("\n")
	}
	return b.String()
}

// env is what every configuration is rendered from.
type env struct {
	Addr      string // the root namespaces' management address
	Transport string // oslo transport_url (the run's vhost and user, via the relay)
	Firewall  string // neutron firewall_driver for the agents
}

func (e env) url(port int, path string) string {
	return fmt.Sprintf("http://%s:%d%s", e.Addr, port, path)
}

func dbURL(name string) string {
	return fmt.Sprintf("mysql+pymysql://root:%s@127.0.0.1:%d/%s?charset=utf8", dbPassword, PortMariaDB, name)
}

// neutronDBURL is Neutron's database with serializable transactions. Zed's
// nova-compute activates the destination's port binding twice at the end
// of every live migration — from its libvirt lifecycle-event handler
// (MIGRATION_COMPLETED) and from _post_live_migration — within
// milliseconds; under MariaDB's default REPEATABLE READ both of Neutron's
// activate transactions pass the "inactive binding exists" check, and the
// second fails in _commit_port_binding ("UnmappedInstanceError: Class
// 'builtins.NoneType' is not mapped", HTTP 500), which nova-compute turns
// into PortBindingActivationFailed and the migration into "error". Under
// SERIALIZABLE the two conflict, InnoDB reports a deadlock, Neutron's retry
// decorator runs the loser again, and it answers 409 (already active),
// which Nova expects.
func neutronDBURL() string {
	return dbURL("neutron") + "&init_command=SET%20SESSION%20TRANSACTION%20ISOLATION%20LEVEL%20SERIALIZABLE"
}

// creds fills a keystoneauth password section for a service user.
func (e env) creds(c ini, section, user string) {
	c.set(section, "auth_type", "password", "auth_url", e.url(PortKeystone, "/v3"),
		"username", user, "password", ServicePass, "project_name", "service",
		"user_domain_name", "Default", "project_domain_name", "Default", "region_name", Region)
}

// authtoken is keystonemiddleware's section for a service that checks tokens.
func (e env) authtoken(c ini, user string) {
	e.creds(c, "keystone_authtoken", user)
	c.set("keystone_authtoken", "www_authenticate_uri", e.url(PortKeystone, ""), "service_token_roles_required", "true")
}

func keystoneConf() ini {
	d := workDir("keystone")
	return ini{}.
		set("database", "connection", dbURL("keystone")).
		set("token", "provider", "fernet").
		set("fernet_tokens", "key_repository", filepath.Join(d, "fernet-keys")).
		set("fernet_receipts", "key_repository", filepath.Join(d, "fernet-keys")).
		set("credential", "key_repository", filepath.Join(d, "credential-keys"))
}

func (e env) glanceConf() ini {
	c := ini{}.
		set("DEFAULT", "enabled_backends", "file:file", "workers", "1").
		set("database", "connection", dbURL("glance")).
		set("glance_store", "default_backend", "file").
		set("file", "filesystem_store_datadir", workDir("glance", "images")).
		set("os_glance_staging_store", "filesystem_store_datadir", workDir("glance", "staging")).
		set("os_glance_tasks_store", "filesystem_store_datadir", workDir("glance", "tasks")).
		set("paste_deploy", "flavor", "keystone").
		set("oslo_concurrency", "lock_path", workDir("glance", "lock"))
	e.authtoken(c, "glance")
	return c
}

func (e env) placementConf() ini {
	c := ini{}.
		set("api", "auth_strategy", "keystone").
		set("placement_database", "connection", dbURL("placement"))
	e.authtoken(c, "placement")
	return c
}

// novaConf is the control plane's nova.conf (api, conductor, scheduler and
// nova-manage).
func (e env) novaConf() ini {
	c := ini{}.
		set("DEFAULT", "transport_url", e.Transport, "my_ip", e.Addr, "state_path", workDir("nova"),
			"enabled_apis", "osapi_compute", "osapi_compute_workers", "1", "metadata_workers", "1").
		set("api", "auth_strategy", "keystone").
		set("api_database", "connection", dbURL("nova_api")).
		set("database", "connection", dbURL("nova_cell1")).
		set("conductor", "workers", "1").
		// New computes are mapped into cell1 by the scheduler's periodic
		// discovery, which runs every periodic_task_interval (60 s by
		// default: a minute's wait for each new host).
		set("scheduler", "workers", "1", "discover_hosts_in_cells_interval", "2", "periodic_task_interval", "3").
		set("oslo_concurrency", "lock_path", workDir("nova", "lock")).
		set("vnc", "enabled", "false").
		set("glance", "region_name", Region).
		set("cinder", "os_region_name", Region).
		set("oslo_messaging_notifications", "driver", "noop")
	e.authtoken(c, "nova")
	e.creds(c, "placement", "placement")
	e.creds(c, "neutron", "neutron")
	e.creds(c, "service_user", "nova")
	c.set("service_user", "send_service_user_token", "true")
	return c
}

// Compute is how one lab host's nova-compute is configured.
type Compute struct {
	Host   string // Nova's host (the lab host name, lab-a)
	MyIP   string // its management address
	State  string // state_path (a directory of the stack's, per host)
	Extra  ini    // merged last (bench rows: post-copy, auto-converge)
	CPU    string // cpu_models; default qemu64
	Inst   string // instances_path inside the host
	Config string // where the file goes (root path, visible in the host too)
}

// computeConf is a lab host's nova.conf: the libvirt driver on the host's
// own libvirtd; the live-migration control connection goes to the peer by
// its host name (its management address, from the host's /etc/hosts) and
// the data to the address the destination's qemu.conf names in
// migration_host (the migration network), as an operator steers it on Zed
// without live_migration_inbound_addr (which Zed would use for the control
// connection too).
func (e env) computeConf(cp Compute) ini {
	cpu := cp.CPU
	if cpu == "" {
		cpu = "qemu64"
	}
	privsep := "privsep-helper --config-file " + cp.Config
	c := ini{}.
		set("DEFAULT", "host", cp.Host, "my_ip", cp.MyIP, "transport_url", e.Transport,
			"compute_driver", "libvirt.LibvirtDriver", "instances_path", cp.Inst, "state_path", cp.State,
			"force_config_drive", "false", "use_cow_images", "true", "force_raw_images", "false",
			"vif_plugging_timeout", "120", "heal_instance_info_cache_interval", "-1",
			"resume_guests_state_on_host_boot", "false",
			// The lab's busybox guest ignores ACPI: a clean shutdown never
			// comes, and Nova's waits (60 s to stop, 120 s before a soft
			// reboot turns hard) are dead time in every test that stops or
			// reboots a server.
			"shutdown_timeout", "10").
		set("libvirt", "virt_type", "qemu", "connection_uri", "qemu:///system",
			"cpu_mode", "custom", "cpu_models", cpu, "images_type", "qcow2", "wait_soft_reboot_seconds", "15").
		set("compute", "live_migration_wait_for_vif_plug", "true").
		set("oslo_concurrency", "lock_path", filepath.Join(cp.State, "lock")).
		set("vnc", "enabled", "false").
		set("serial_console", "enabled", "false").
		set("glance", "region_name", Region).
		set("cinder", "os_region_name", Region).
		set("os_vif_linux_bridge", "use_ipv6", "false").
		set("oslo_messaging_notifications", "driver", "noop")
	for _, s := range []string{"nova_sys_admin", "vif_plug_linux_bridge_privileged", "vif_plug_ovs_privileged", "privsep_osbrick"} {
		c.set(s, "helper_command", privsep)
	}
	e.creds(c, "placement", "placement")
	e.creds(c, "neutron", "neutron")
	e.creds(c, "service_user", "nova")
	c.set("service_user", "send_service_user_token", "true")
	for s, kv := range cp.Extra {
		for k, v := range kv {
			c.set(s, k, v)
		}
	}
	return c
}

func (e env) neutronConf() ini {
	c := ini{}.
		set("DEFAULT", "core_plugin", "ml2", "service_plugins", "", "auth_strategy", "keystone",
			"transport_url", e.Transport, "bind_host", e.Addr, "bind_port", fmt.Sprint(PortNeutron),
			// 0: the API and the RPC consumers run in neutron-server's own
			// process instead of one forked worker each (~200 MiB apiece).
			"api_workers", "0", "rpc_workers", "0", "rpc_state_report_workers", "0",
			"state_path", workDir("neutron"), "api_paste_config", "/etc/neutron/api-paste.ini",
			"notify_nova_on_port_status_changes", "true", "notify_nova_on_port_data_changes", "true",
			"dhcp_agent_notification", "false", "allow_overlapping_ips", "true").
		set("database", "connection", neutronDBURL()).
		set("oslo_concurrency", "lock_path", workDir("neutron", "lock")).
		set("agent", "report_interval", "10").
		set("oslo_messaging_notifications", "driver", "noop").
		set("experimental", "linuxbridge", "true") // Zed marks the linuxbridge driver experimental
	e.authtoken(c, "neutron")
	e.creds(c, "nova", "nova")
	return c
}

func ml2Conf() ini {
	return ini{}.
		set("ml2", "type_drivers", "vxlan", "tenant_network_types", "vxlan",
			"mechanism_drivers", "linuxbridge", "extension_drivers", "port_security").
		set("ml2_type_vxlan", "vni_ranges", "1000:1999").
		set("securitygroup", "enable_ipset", "true")
}

// agentConf is a lab host's linuxbridge agent: VXLAN over the management
// interface (its address stays where it is, unlike a flat network's), its
// own host, state and lock paths, privsep helpers started without sudo.
func (e env) agentConf(host, mgmtIP, state, config string) ini {
	privsep := "privsep-helper --config-file " + config
	c := ini{}.
		set("DEFAULT", "host", host, "transport_url", e.Transport, "state_path", state).
		set("agent", "root_helper", "", "report_interval", "10", "polling_interval", "2").
		set("oslo_concurrency", "lock_path", filepath.Join(state, "lock")).
		set("vxlan", "enable_vxlan", "true", "local_ip", mgmtIP, "l2_population", "false").
		set("securitygroup", "firewall_driver", e.Firewall, "enable_security_group", fmt.Sprint(e.Firewall != "noop")).
		set("linux_bridge", "physical_interface_mappings", "").
		set("oslo_messaging_notifications", "driver", "noop")
	for _, s := range []string{"privsep", "privsep_link", "privsep_namespace", "privsep_conntrack", "privsep_dhcp_release", "privsep_ovs_vsctl"} {
		c.set(s, "helper_command", privsep)
	}
	return c
}

// cloudsYAML is the admin's clouds.yaml.
func (e env) cloudsYAML() string {
	return fmt.Sprintf(`clouds:
  %s:
    auth:
      auth_url: %s
      username: admin
      password: %s
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: %s
    interface: public
    identity_api_version: 3
`, Cloud, e.url(PortKeystone, "/v3"), AdminPassword, Region)
}

// qemuShim is what each lab host sees as /usr/bin/qemu-system-x86_64: the
// lab's TCG wrapper with the real binary taken from real (a private bind
// mount of it). It must never exec its own path.
func qemuShim(wrapper, real string) string {
	return fmt.Sprintf(`#!/bin/sh
# ferry stack: Nova names /usr/bin/qemu-system-x86_64 as the emulator; inside
# this lab host that path is this shim, which applies the lab's QEMU 7.2 TCG
# workaround and runs the real binary from a private path.
FERRY_LAB_QEMU=%s exec %s "$@"
`, real, wrapper)
}
