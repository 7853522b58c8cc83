package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestLoadLab(t *testing.T) {
	c, err := Load("testdata/lab-a.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "lab-a" || c.Migration.Downtime != 2000 || c.Migration.StallLimit.D() != 30*time.Second ||
		c.Peers["lab-b"].Management != "198.18.0.12" || c.ControlExchange != "nova" || c.Migration.MaxConcurrent != 1 ||
		c.Migration.CompletionTimeout != 800 || c.Placement.AuthType != "noauth" || c.Placement.EndpointOverride != "http://127.0.0.1:8778" {
		t.Errorf("loaded %+v", c)
	}
}

func TestEveryProblemAtOnce(t *testing.T) {
	_, err := Load("testdata/bad.yaml")
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"version: 2", "host: required", `transport_url http://x: invalid argument: scheme "http"`, "instances_path",
		`live_migration_inbound_addr: invalid argument: "198.19.0.1/24"`, `peers.lab-b: destination lab-b: invalid argument: "host@evil"`,
		`peers.lab-b.libvirt_uri: "http://x" is not a qemu libvirt URI`, `migration.compression: "gzip"`,
		"migration.compression: zstd compresses multifd streams", "auto_converge_initial/increment: 120/0",
		"max_concurrent_live_migrations: 0", "live_migration_downtime: 50", "live_migration_timeout_action", "stall_limit",
		"log.level", "max_procs: -1", "image_cache_subdirectory_name",
		"placement.auth_url: required with auth_type password", "placement.endpoint_override: \"placement.example\" is not"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestUnknownKeyAndBadDuration(t *testing.T) {
	b, _ := os.ReadFile("testdata/lab-a.yaml")
	if _, err := Parse(append(b, []byte("surprise: 1\n")...)); err == nil || !strings.Contains(err.Error(), "surprise") {
		t.Errorf("unknown key: %v", err)
	}
	bad := strings.Replace(string(b), "stall_limit: 30s", "stall_limit: soon", 1)
	if _, err := Parse([]byte(bad)); err == nil || !strings.Contains(err.Error(), "not a duration") {
		t.Errorf("bad duration: %v", err)
	}
}

// Placement must be chosen: settling allocations is part of what a compute
// does, so leaving it out is a decision the file states.
func TestPlacementRequired(t *testing.T) {
	b, _ := os.ReadFile("testdata/lab-a.yaml")
	without := string(b[:strings.Index(string(b), "placement:")])
	if _, err := Parse([]byte(without)); err == nil || !strings.Contains(err.Error(), "placement.auth_type: required") {
		t.Errorf("no placement section: %v", err)
	}
	c, err := Parse([]byte(without + "placement:\n  auth_type: none\n"))
	if err != nil || c.Placement.AuthType != "none" {
		t.Errorf("auth_type none: %v", err)
	}
	if _, err := Parse([]byte(without + "placement:\n  auth_type: noauth\n")); err == nil || !strings.Contains(err.Error(), "placement.endpoint_override: required") {
		t.Errorf("noauth without an endpoint: %v", err)
	}
}

func TestCompanion(t *testing.T) {
	b, _ := os.ReadFile("testdata/lab-a.yaml")
	base := string(b)
	c, err := Parse([]byte(base + "mode: companion\nneutron:\n  auth_type: noauth\n  endpoint_override: http://127.0.0.1:9696\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.CompanionQueue() != "ferry.compute.lab-a" || c.NovaComputeExchange() != "ferry-lab-a" ||
		strings.Join(c.Companion.Owned, ",") != "live_migration,live_migration_force_complete,live_migration_abort" {
		t.Errorf("defaults: %q %q %v", c.CompanionQueue(), c.NovaComputeExchange(), c.Companion.Owned)
	}
	if c, err := Parse([]byte(base + "mode: companion\nneutron:\n  auth_type: noauth\n  endpoint_override: http://127.0.0.1:9696\ncompanion:\n  owned: []\n")); err != nil || len(c.Companion.Owned) != 0 {
		t.Errorf("owned nothing (a host being cut over): %v %v", err, c.Companion.Owned)
	}
	_, err = Parse([]byte(base + "mode: companion\nnotifications:\n  driver: [log]\n  notification_format: json\n" +
		"companion:\n  owned: [live_migration, pre_live_migration]\n  queue: compute.lab-a\n  nova_compute_exchange: nova\n" +
		"  cutover:\n    nova_compute_config: nova.conf\n    stop: []\n    policy_priority: 0\n"))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"neutron.auth_type: required", `companion.owned: "pre_live_migration"`,
		"companion.owned: [live_migration pre_live_migration]: the three source-side casts go together",
		`companion.queue: "compute.lab-a" is nova-compute's own queue`, `companion.nova_compute_exchange: nova-compute must run on an exchange of its own`,
		`companion.cutover.nova_compute_config: "nova.conf" must be an absolute path`, "companion.cutover.stop: a command is required",
		"companion.cutover.policy_priority: 0", `notifications.driver: "log"`, `notifications.notification_format: "json"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if _, err := Parse([]byte(base + "mode: sidecar\n")); err == nil || !strings.Contains(err.Error(), `mode: "sidecar"`) {
		t.Errorf("bad mode: %v", err)
	}
}
