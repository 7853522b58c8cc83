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
	for _, want := range []string{"version: 2", "host: required", "transport_url: not a rabbit", "instances_path",
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
