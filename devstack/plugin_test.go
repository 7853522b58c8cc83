// Package devstack holds the devstack plugin (plugin.sh, settings); this
// test runs its configure step against a nova.conf and loads the result
// with ferryd's own configuration loader.
package devstack

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"opendev.org/x/ferry/config"
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
	script := stubs + `
DEST=` + dir + ` HOST_IP=198.18.0.10 NOVA_CONF=` + conf + ` NOVA_STATE_PATH=/opt/stack/data/nova
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
	if err != nil {
		t.Fatalf("ferryd refuses the configuration the plugin wrote: %v\n%s", err, b)
	}
	return c, string(b)
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
		{"rpc_response_timeout", c.Oslo.ResponseTimout.D(), 90 * time.Second},
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
