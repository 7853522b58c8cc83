// Package devstack holds the devstack plugin (plugin.sh, settings); this
// test runs its configure step against a nova.conf and loads the result
// with ferryd's own configuration loader.
package devstack

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/internal/testpki"
	"opendev.org/x/ferry/rpc/oslo"
)

// stubs stand in for the devstack functions the plugin calls.
const stubs = `
set -e
sudo() { "$@"; }
die() { echo "die: $2" >&2; exit 1; }
is_service_enabled() { return 1; }
iniget() {
    awk -v sect="[$2]" -v key="$3" '
        $0 == sect { on = 1; next }
        /^\[/ { on = 0 }
        on { k = $0; sub(/[ \t]*=.*/, "", k); if (k == key) { v = $0; sub(/^[^=]*=[ \t]*/, "", v); print v; exit } }' "$1"
}
`

func configure(t *testing.T, novaConf string) (config.Config, string) {
	t.Helper()
	return configureWith(t, "", novaConf)
}

// configureWith runs the configure step with extra stubs (n-cpu enabled:
// companion mode), the nova.conf given as devstack's nova-cpu.conf.
func configureWith(t *testing.T, extra, novaConf string) (config.Config, string) {
	t.Helper()
	c, yml, err := configureYAML(t, extra, novaConf)
	if err != nil {
		t.Fatalf("ferryd refuses the configuration the plugin wrote: %v\n%s", err, yml)
	}
	return c, yml
}

// configureErr runs the configure step and returns what ferryd's loader
// says of its result.
func configureErr(t *testing.T, novaConf string) (config.Config, error) {
	t.Helper()
	c, _, err := configureYAML(t, "", novaConf)
	return c, err
}

func configureYAML(t *testing.T, extra, novaConf string) (config.Config, string, error) {
	t.Helper()
	// Read here too, so that go test's cache knows the result depends on them.
	for _, f := range []string{"settings", "plugin.sh"} {
		if _, err := os.ReadFile(f); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "nova.conf")
	if err := os.WriteFile(conf, []byte(novaConf), 0o644); err != nil {
		t.Fatal(err)
	}
	cpuConf := filepath.Join(dir, "nova-cpu.conf")
	if err := os.WriteFile(cpuConf, []byte(novaConf), 0o644); err != nil {
		t.Fatal(err)
	}
	script := stubs + extra + `
DEST=` + dir + ` HOST_IP=198.18.0.10 NOVA_CONF=` + conf + ` NOVA_CPU_CONF=` + cpuConf + ` NOVA_STATE_PATH=/opt/stack/data/nova
FERRY_CONF_DIR=` + dir + `/etc FERRY_STATE_DIR=` + dir + `/state
source ./settings
source ./plugin.sh
configure_ferry
`
	cmd := exec.Command("bash", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("configure_ferry: %v\n%s", err, out)
	}
	path := filepath.Join(dir, "etc", "ferryd.yaml")
	b, _ := os.ReadFile(path)
	c, err := config.Load(path)
	return c, string(b), err
}

func TestConfigureFromNovaConf(t *testing.T) {
	c, yml := configure(t, `[DEFAULT]
host = compute-1
transport_url = rabbit://stackrabbit:secret@198.18.0.1:5672/
instances_path = /opt/stack/data/nova/instances
rpc_response_timeout = 90
max_concurrent_live_migrations = 2

[image_cache]
subdirectory_name = _cache

[libvirt]
live_migration_downtime = 800
live_migration_completion_timeout = 400
live_migration_timeout_action = force_complete
live_migration_permit_post_copy = True
live_migration_permit_auto_converge = False
live_migration_bandwidth = 100
live_migration_inbound_addr = 198.19.0.10

[placement]
auth_type = password
auth_url = http://198.18.0.1/identity
username = placement
password = se"cr\et
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = RegionOne

[oslo_messaging_rabbit]
amqp_durable_queues = True
rabbit_quorum_queue = True
heartbeat_timeout_threshold = 30
`)
	m := c.Migration
	checks := []struct {
		name      string
		got, want any
	}{
		{"host", c.Host, "compute-1"},
		{"transport_url", c.TransportURL, "rabbit://stackrabbit:secret@198.18.0.1:5672/"},
		{"instances_path", c.InstancesPath, "/opt/stack/data/nova/instances"},
		{"image cache", c.ImageCacheDir, "_cache"},
		{"live_migration_inbound_addr (nova.conf's, over HOST_IP)", c.InboundAddr, "198.19.0.10"},
		{"downtime", m.Downtime, 800},
		{"completion timeout", m.CompletionTimeout, 400},
		{"timeout action", m.TimeoutAction, "force_complete"},
		{"post-copy", m.PermitPostCopy, true},
		{"auto-converge", m.PermitAutoConv, false},
		{"bandwidth", m.Bandwidth, 100},
		{"max concurrent", m.MaxConcurrent, 2},
		{"durable queues", c.Oslo.DurableQueues, true},
		{"quorum queues", c.Oslo.QuorumQueue, true},
		{"heartbeat", c.Oslo.Heartbeat.D(), 30 * time.Second},
		{"rpc_response_timeout", c.Oslo.ResponseTimeout.D(), 90 * time.Second},
		{"placement auth", c.Placement.AuthType, "password"},
		{"placement url", c.Placement.AuthURL, "http://198.18.0.1/identity"},
		{"placement user", c.Placement.Username + "/" + c.Placement.Password + "@" + c.Placement.ProjectName, "placement/se\"cr\\et@service"},
		{"placement region", c.Placement.RegionName, "RegionOne"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	if t.Failed() {
		t.Logf("ferryd.yaml:\n%s", yml)
	}
}

// A nova.conf that sets nothing ferry maps still gives a configuration
// ferryd starts with: Nova's defaults, the devstack host address; Nova's
// "unlimited" concurrency becomes ferry's default bound.
func TestConfigureMinimal(t *testing.T) {
	c, _ := configure(t, "[DEFAULT]\ntransport_url = rabbit://stackrabbit:secret@198.18.0.1:5672/\nmax_concurrent_live_migrations = 0\n")
	if c.Migration.MaxConcurrent != 1 {
		t.Errorf("Nova's 0 (unlimited) became %d, want ferry's default 1", c.Migration.MaxConcurrent)
	}
	if c.InboundAddr != "198.18.0.10" || c.InstancesPath != "/opt/stack/data/nova/instances" || c.Migration.Downtime != 500 || c.ImageCacheDir != "_base" ||
		c.Placement.AuthType != "none" {
		t.Errorf("minimal: inbound %q, instances %q, downtime %d", c.InboundAddr, c.InstancesPath, c.Migration.Downtime)
	}
	if host, _ := os.Hostname(); c.Host != host {
		t.Errorf("host %q, want the machine's name %q", c.Host, host)
	}
}

// With n-cpu on the host the plugin configures companion mode, the
// deployment shape: Neutron's credentials from nova-cpu.conf's [neutron],
// the cut-over's commands for devstack's n-cpu unit and its configuration
// file, nova.conf's VIF plugging options; ferryd's loader accepts it.
func TestConfigureCompanion(t *testing.T) {
	c, yml := configureWith(t, "is_service_enabled() { [[ $1 == n-cpu ]]; }\n", `[DEFAULT]
host = compute-1
transport_url = rabbit://stackrabbit:secret@198.18.0.1:5672/
vif_plugging_timeout = 120
vif_plugging_is_fatal = False

[placement]
auth_type = password
auth_url = http://198.18.0.1/identity
username = placement
password = Secret
project_name = service

[neutron]
auth_type = password
auth_url = http://198.18.0.1/identity
username = neutron
password = MixedCase"Secret
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = RegionOne
`)
	checks := []struct {
		name      string
		got, want any
	}{
		{"mode", c.Mode, "companion"},
		{"neutron user", c.Neutron.Username + "/" + c.Neutron.Password, "neutron/MixedCase\"Secret"},
		{"neutron region", c.Neutron.RegionName, "RegionOne"},
		{"vif_plugging_timeout", c.Companion.VIFPluggingTimeout.D(), 120 * time.Second},
		{"vif_plugging_is_fatal", c.Companion.VIFPluggingIsFatal, false},
		{"owned", len(c.Companion.Owned), 3},
		{"cut-over stop", strings.Join(c.Companion.CutOver.Stop, " "), "systemctl stop devstack@n-cpu.service"},
		{"cut-over start", strings.Join(c.Companion.CutOver.Start, " "), "systemctl start devstack@n-cpu.service"},
		{"companion queue", c.CompanionQueue(), "ferry.compute.compute-1"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	if !strings.HasSuffix(c.Companion.CutOver.NovaComputeConfig, "/nova-cpu.conf") {
		t.Errorf("cut-over edits %q, want devstack's nova-cpu.conf", c.Companion.CutOver.NovaComputeConfig)
	}
	if t.Failed() {
		t.Logf("ferryd.yaml:\n%s", yml)
	}
}

// nova.conf's ssl options reach ferryd under the same names (the
// deprecated kombu_ and rabbit_ names too, which oslo still reads), and
// ferryd's loader checks the files they name.
func TestConfigureBrokerTLS(t *testing.T) {
	pki := t.TempDir()
	ca, err := testpki.NewCA(pki, "ca")
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Client("client", "compute-1")
	if err != nil {
		t.Fatal(err)
	}
	c, yml := configure(t, `[DEFAULT]
transport_url = rabbit://stackrabbit:secret@198.18.0.1:5671/

[oslo_messaging_rabbit]
ssl = True
ssl_ca_file = `+ca.File+`
ssl_cert_file = `+client.Cert+`
ssl_key_file = `+client.Key+`
ssl_version = TLSv1_2
`)
	want := oslo.TLSOptions{Enabled: true, CAFile: ca.File, CertFile: client.Cert, KeyFile: client.Key, Version: "TLSv1_2"}
	if diff := cmp.Diff(want, c.Oslo.TLS()); diff != "" {
		t.Errorf("ssl options (-want +got):\n%s\nferryd.yaml:\n%s", diff, yml)
	}
	c, yml = configure(t, `[DEFAULT]
transport_url = rabbit://stackrabbit:secret@198.18.0.1:5671/

[oslo_messaging_rabbit]
rabbit_use_ssl = true
kombu_ssl_ca_certs = `+ca.File+`
ssl_enforce_fips_mode = False
`)
	if diff := cmp.Diff(oslo.TLSOptions{Enabled: true, CAFile: ca.File}, c.Oslo.TLS()); diff != "" {
		t.Errorf("deprecated names (-want +got):\n%s\nferryd.yaml:\n%s", diff, yml)
	}
}

// A CA file nova.conf names that is not there stops the plugin's
// configuration at ferryd's loader, naming the file.
func TestConfigureBrokerTLSMissingFile(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "rabbit-ca.pem")
	_, err := configureErr(t, "[DEFAULT]\ntransport_url = rabbit://stackrabbit:secret@198.18.0.1:5671/\n\n[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = "+missing+"\n")
	if err == nil || !strings.Contains(err.Error(), "oslo_messaging_rabbit.ssl_ca_file "+missing+": no such file") {
		t.Errorf("missing CA file: %v", err)
	}
}
