// Package config is ferryd's configuration: one YAML file, "version: 1",
// strict (an unknown key is an error), every problem reported at once.
// Migration knobs keep their nova.conf names and defaults, so an operator
// can carry values over; ferry's own knobs sit beside them. Durations are
// strings such as "30s".
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration written as "30s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses "30s", "1m30s", "500ms".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like \"30s\"", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Config is the whole file.
type Config struct {
	Version         int             `yaml:"version"`          // must be 1
	Host            string          `yaml:"host"`             // Nova host name (CONF.host) this ferryd serves
	TransportURL    string          `yaml:"transport_url"`    // oslo transport_url; its password is never logged
	ControlExchange string          `yaml:"control_exchange"` // default "nova"
	LibvirtURI      string          `yaml:"libvirt_uri"`      // this host's libvirtd; default qemu:///system
	InboundAddr     string          `yaml:"live_migration_inbound_addr"`
	InstancesPath   string          `yaml:"instances_path"`                // default /var/lib/nova/instances
	ImageCacheDir   string          `yaml:"image_cache_subdirectory_name"` // Nova's [image_cache] subdirectory_name; default _base
	StateDir        string          `yaml:"state_dir"`                     // journals; default /var/lib/ferry
	Peers           map[string]Peer `yaml:"peers"`                         // other hosts by Nova host name
	Oslo            Oslo            `yaml:"oslo_messaging_rabbit"`
	Migration       Migration       `yaml:"migration"`
	Placement       Placement       `yaml:"placement"` // nova.conf's [placement]: where allocations are settled
	Log             Log             `yaml:"log"`
	// MaxProcs bounds the OS threads running Go code (GOMAXPROCS); 0 = one
	// per CPU. ferryd is I/O-bound and shares the host with its guests: one
	// is the default (bench-rpc: CPU per call 0.39 → 0.25 ms, p99 2.6 → 2.0 ms
	// on 2 cores). The GOMAXPROCS environment variable overrides it.
	MaxProcs int `yaml:"max_procs"`
}

// Peer is what this host knows about another compute host.
type Peer struct {
	Management string `yaml:"management"`  // address for libvirt control (peer to peer); default: the host name
	TLSName    string `yaml:"tls_name"`    // name in its certificate; default: the host name
	LibvirtURI string `yaml:"libvirt_uri"` // how this ferryd reaches its libvirtd to verify outcomes; default qemu+<scheme>://<management>/system
}

// Oslo mirrors the deployment's [oslo_messaging_rabbit] queue settings.
type Oslo struct {
	DurableQueues  bool     `yaml:"amqp_durable_queues"`
	AutoDelete     bool     `yaml:"amqp_auto_delete"`
	QuorumQueue    bool     `yaml:"rabbit_quorum_queue"`
	HAQueues       bool     `yaml:"rabbit_ha_queues"`
	Prefetch       int      `yaml:"rabbit_qos_prefetch_count"`
	Heartbeat      Duration `yaml:"heartbeat_timeout_threshold"` // default 60s
	ResponseTimout Duration `yaml:"rpc_response_timeout"`        // default 60s
	LongTimeout    Duration `yaml:"long_rpc_timeout"`            // default 1800s
}

// Migration holds the live-migration knobs.
type Migration struct {
	MaxConcurrent     int      `yaml:"max_concurrent_live_migrations"`      // outbound; default 1
	MaxInbound        int      `yaml:"max_concurrent_inbound_migrations"`   // ferry; default 2
	InboundHold       Duration `yaml:"inbound_reservation"`                 // ferry: a pre-check's slot lapses after this unless pre_live_migration takes it; default 5m
	Downtime          int      `yaml:"live_migration_downtime"`             // ms; default 500 (Nova)
	CompletionTimeout int      `yaml:"live_migration_completion_timeout"`   // s per GiB of RAM+disk; default 800 (Nova); 0 = none
	TimeoutAction     string   `yaml:"live_migration_timeout_action"`       // abort (default) | force_complete
	PermitPostCopy    bool     `yaml:"live_migration_permit_post_copy"`     // default false (Nova)
	PermitAutoConv    bool     `yaml:"live_migration_permit_auto_converge"` // default false (Nova)
	Bandwidth         int      `yaml:"live_migration_bandwidth"`            // MiB/s; 0 = unlimited
	Scheme            string   `yaml:"live_migration_scheme"`               // libvirt transport: tcp (default), tls
	NativeTLS         bool     `yaml:"live_migration_with_native_tls"`      // QEMU TLS for the data streams
	ParallelConns     int      `yaml:"live_migration_parallel_connections"` // default 1
	PermitPause       bool     `yaml:"permit_pause"`                        // ferry: pausing the guest is a permitted escalation
	StallLimit        Duration `yaml:"stall_limit"`                         // ferry: no bytes this long aborts; default 30s
	AutoConvergeGrace Duration `yaml:"auto_converge_grace"`                 // ferry: default 60s
	InitialDowntime   Duration `yaml:"initial_downtime"`                    // ferry: default 100ms
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // text, json; default: text on a terminal, json otherwise
}

// ApplyMaxProcs sets GOMAXPROCS to MaxProcs unless the environment sets it
// or MaxProcs is 0.
func (c Config) ApplyMaxProcs() {
	if os.Getenv("GOMAXPROCS") == "" && c.MaxProcs > 0 {
		runtime.GOMAXPROCS(c.MaxProcs)
	}
}

// Placement is how ferryd reaches Placement, with nova.conf's [placement]
// option names. auth_type is required: password (Keystone), noauth (a
// Placement with auth_strategy = noauth2, at endpoint_override), or none —
// ferryd then leaves the allocations a migration holds to an operator, and
// says so at start.
type Placement struct {
	AuthType          string `yaml:"auth_type"`
	AuthURL           string `yaml:"auth_url"`
	Username          string `yaml:"username"`
	Password          string `yaml:"password"`
	ProjectName       string `yaml:"project_name"`
	UserDomainName    string `yaml:"user_domain_name"`
	ProjectDomainName string `yaml:"project_domain_name"`
	RegionName        string `yaml:"region_name"`
	ValidInterfaces   string `yaml:"valid_interfaces"` // internal (default), public, admin
	EndpointOverride  string `yaml:"endpoint_override"`
}

// Default returns the defaults.
func Default() Config {
	return Config{
		ControlExchange: "nova",
		LibvirtURI:      "qemu:///system",
		InstancesPath:   "/var/lib/nova/instances",
		ImageCacheDir:   "_base",
		StateDir:        "/var/lib/ferry",
		Oslo: Oslo{Heartbeat: Duration(60 * time.Second), ResponseTimout: Duration(60 * time.Second),
			LongTimeout: Duration(1800 * time.Second)},
		Migration: Migration{MaxConcurrent: 1, MaxInbound: 2, InboundHold: Duration(5 * time.Minute), Downtime: 500,
			CompletionTimeout: 800, TimeoutAction: "abort", Scheme: "tcp", ParallelConns: 1,
			StallLimit: Duration(30 * time.Second), AutoConvergeGrace: Duration(60 * time.Second),
			InitialDowntime: Duration(100 * time.Millisecond)},
		Log:      Log{Level: "info"},
		MaxProcs: 1,
	}
}

// Load reads and validates a file over the defaults.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return Parse(b)
}

// Parse decodes strictly and validates.
func Parse(b []byte) (Config, error) {
	c := Default()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if c.Version != 1 {
		bad("version: %d, want 1", c.Version)
	}
	if c.Host == "" {
		bad("host: required (the Nova host name this ferryd serves)")
	}
	if c.TransportURL == "" {
		bad("transport_url: required")
	} else if !strings.HasPrefix(c.TransportURL, "rabbit://") && !strings.HasPrefix(c.TransportURL, "amqp") {
		bad("transport_url: not a rabbit:// URL")
	}
	if c.InboundAddr != "" {
		if _, err := netip.ParseAddr(c.InboundAddr); err != nil && strings.ContainsAny(c.InboundAddr, "/:@ ") {
			bad("live_migration_inbound_addr: %q is neither an address nor a host name", c.InboundAddr)
		}
	}
	for _, p := range []struct{ name, v string }{{"instances_path", c.InstancesPath}, {"state_dir", c.StateDir}} {
		if !strings.HasPrefix(p.v, "/") {
			bad("%s: %q must be an absolute path", p.name, p.v)
		}
	}
	if c.ImageCacheDir == "" || strings.Contains(c.ImageCacheDir, "/") || c.ImageCacheDir == "." || c.ImageCacheDir == ".." {
		bad("image_cache_subdirectory_name: %q must name one directory below instances_path", c.ImageCacheDir)
	}
	for h, p := range c.Peers {
		if h == c.Host {
			bad("peers.%s: this host itself", h)
		}
		if p.Management != "" && strings.ContainsAny(p.Management, "/@ ") {
			bad("peers.%s.management: %q is neither an address nor a host name", h, p.Management)
		}
	}
	if c.MaxProcs < 0 {
		bad("max_procs: %d, want ≥ 0 (0 = one per CPU)", c.MaxProcs)
	}
	m := c.Migration
	if m.MaxConcurrent < 1 {
		bad("migration.max_concurrent_live_migrations: %d, want ≥ 1 (0 no longer means unlimited)", m.MaxConcurrent)
	}
	if m.MaxInbound < 1 {
		bad("migration.max_concurrent_inbound_migrations: %d, want ≥ 1", m.MaxInbound)
	}
	if m.Downtime < 100 {
		bad("migration.live_migration_downtime: %d ms, Nova's minimum is 100", m.Downtime)
	}
	if m.CompletionTimeout < 0 {
		bad("migration.live_migration_completion_timeout: %d, want ≥ 0", m.CompletionTimeout)
	}
	if m.TimeoutAction != "abort" && m.TimeoutAction != "force_complete" {
		bad("migration.live_migration_timeout_action: %q, want abort or force_complete", m.TimeoutAction)
	}
	if m.Bandwidth < 0 {
		bad("migration.live_migration_bandwidth: %d, want ≥ 0", m.Bandwidth)
	}
	if m.Scheme != "tcp" && m.Scheme != "tls" {
		bad("migration.live_migration_scheme: %q, want tcp or tls", m.Scheme)
	}
	if m.ParallelConns < 1 {
		bad("migration.live_migration_parallel_connections: %d, want ≥ 1", m.ParallelConns)
	}
	if m.StallLimit.D() < 5*time.Second {
		bad("migration.stall_limit: %v, want ≥ 5s", m.StallLimit.D())
	}
	pl := c.Placement
	need := func(field, v string) {
		if v == "" {
			bad("placement.%s: required with auth_type %s", field, pl.AuthType)
		}
	}
	switch pl.AuthType {
	case "password":
		need("auth_url", pl.AuthURL)
		need("username", pl.Username)
		need("password", pl.Password)
		need("project_name", pl.ProjectName)
	case "noauth":
		need("endpoint_override", pl.EndpointOverride)
	case "none":
	case "":
		bad("placement.auth_type: required: password (nova.conf's [placement] credentials), noauth, or none (allocations left to an operator)")
	default:
		bad("placement.auth_type: %q, want password, noauth or none", pl.AuthType)
	}
	if u := pl.EndpointOverride; u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		bad("placement.endpoint_override: %q is not an http(s) URL", u)
	}
	switch pl.ValidInterfaces {
	case "", "internal", "public", "admin":
	default:
		bad("placement.valid_interfaces: %q, want internal, public or admin", pl.ValidInterfaces)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level: %q, want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		bad("log.format: %q, want text or json", c.Log.Format)
	}
	if len(errs) > 0 {
		return fmt.Errorf("config: %d problems:\n%w", len(errs), errors.Join(errs...))
	}
	return nil
}
