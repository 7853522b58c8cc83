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
	"net"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/rpc/oslo"
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
	Version         int    `yaml:"version"`          // must be 1
	Host            string `yaml:"host"`             // Nova host name (CONF.host) this ferryd serves
	TransportURL    string `yaml:"transport_url"`    // oslo transport_url; its password is never logged
	ControlExchange string `yaml:"control_exchange"` // default "nova"
	LibvirtURI      string `yaml:"libvirt_uri"`      // this host's libvirtd; default qemu:///system
	InboundAddr     string `yaml:"live_migration_inbound_addr"`
	InstancesPath   string `yaml:"instances_path"`                // default /var/lib/nova/instances
	ImageCacheDir   string `yaml:"image_cache_subdirectory_name"` // Nova's [image_cache] subdirectory_name; default _base
	StateDir        string `yaml:"state_dir"`                     // journals; default /var/lib/ferry
	// JournalRetention is how long the journal keeps a migration that
	// ended and owes Nova nothing; default 168h.
	JournalRetention Duration        `yaml:"journal_retention"`
	Peers            map[string]Peer `yaml:"peers"` // other hosts by Nova host name
	Oslo             Oslo            `yaml:"oslo_messaging_rabbit"`
	Migration        Migration       `yaml:"migration"`
	Placement        Keystone        `yaml:"placement"` // nova.conf's [placement]: where allocations are settled
	// Mode is native (ferryd is the host's compute service: the lab/CI
	// mode) or companion (ferryd beside the stock nova-compute, owning
	// live migration: the deployment shape); default native.
	Mode      string    `yaml:"mode"`
	Companion Companion `yaml:"companion"`
	// Neutron is nova.conf's [neutron] credentials: companion mode
	// activates the destination's port bindings when the guest moved.
	Neutron Keystone `yaml:"neutron"`
	// Glance is nova.conf's [glance] credentials: a native-mode destination
	// fetches an instance's kernel and ramdisk images from it, as
	// nova-compute's pre_live_migration does. Unset: Placement's
	// credentials, Glance from the catalog.
	Glance        Keystone      `yaml:"glance"`
	Notifications Notifications `yaml:"notifications"`
	// Status is ferryd's read-only HTTP API: the migrations it holds and
	// Prometheus's /metrics.
	Status Status `yaml:"status"`
	Log    Log    `yaml:"log"`
	// ReportInterval is nova.conf's [DEFAULT] report_interval: in native
	// mode ferryd saves this host's Service record that often, as
	// nova-compute does, or the scheduler drops the host; default 10s.
	ReportInterval Duration `yaml:"report_interval"`
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
	DurableQueues   bool     `yaml:"amqp_durable_queues"`
	AutoDelete      bool     `yaml:"amqp_auto_delete"`
	QuorumQueue     bool     `yaml:"rabbit_quorum_queue"`
	HAQueues        bool     `yaml:"rabbit_ha_queues"`
	Prefetch        int      `yaml:"rabbit_qos_prefetch_count"`   // default 0: ferryd's handlers plus a reserve
	ThreadPoolSize  int      `yaml:"executor_thread_pool_size"`   // oslo's [DEFAULT] option: concurrent handlers; default 64
	DedupSize       int      `yaml:"dedup_size"`                  // ferry: remembered _unique_ids; default 1024
	Heartbeat       Duration `yaml:"heartbeat_timeout_threshold"` // default 60s
	ResponseTimeout Duration `yaml:"rpc_response_timeout"`        // default 60s
	LongTimeout     Duration `yaml:"long_rpc_timeout"`            // default 1800s

	// nova.conf's ssl options, for every AMQP connection ferryd makes (RPC
	// server and client, the companion checks, the cut-over). As in oslo,
	// transport_url's query (?ssl=1&ssl_ca_file=…) overrides them. ferry
	// always verifies the broker's chain (against ssl_ca_file, or the
	// system's roots) and that its certificate names the transport_url
	// host, as oslo does only with ssl_enforce_hostname_verification.
	SSL         bool   `yaml:"ssl"`           // default false
	SSLCAFile   string `yaml:"ssl_ca_file"`   // PEM CA certificates; default: the system's roots
	SSLCertFile string `yaml:"ssl_cert_file"` // PEM client certificate; with ssl_key_file
	SSLKeyFile  string `yaml:"ssl_key_file"`  // its PEM key; never logged
	// SSLVersion is "" or SSLv23 (TLS 1.2 or 1.3, the default) or TLSv1_2;
	// oslo's TLSv1 and TLSv1_1 are refused.
	SSLVersion string `yaml:"ssl_version"`
	// SSLEnforceFIPS requires Go's FIPS 140-3 mode (run ferryd with
	// GODEBUG=fips140=on); default false.
	SSLEnforceFIPS bool `yaml:"ssl_enforce_fips_mode"`
}

// TLS returns the ssl options as rpc/oslo takes them.
func (o Oslo) TLS() oslo.TLSOptions {
	return oslo.TLSOptions{Enabled: o.SSL, CAFile: o.SSLCAFile, CertFile: o.SSLCertFile, KeyFile: o.SSLKeyFile,
		Version: o.SSLVersion, EnforceFIPS: o.SSLEnforceFIPS}
}

// tlsProblems checks the TLS options a transport URL ends up with (its
// query over the configured ones): every file readable, pairs complete, a
// version ferry speaks. The URL's own errors get urlPrefix, the options'
// optPrefix. skip is what an earlier URL was checked with: the same
// options are not reported twice.
func tlsProblems(urlPrefix, optPrefix, raw string, base oslo.TLSOptions, skip *oslo.TLSOptions) (oslo.TLSOptions, []error) {
	u, err := oslo.ParseTransportURL(raw)
	if err != nil {
		return oslo.TLSOptions{}, nil // reported as a bad URL
	}
	o, err := u.TLSOptions(base)
	var errs []error
	if err != nil {
		errs = append(errs, fmt.Errorf("%s%w", urlPrefix, err))
	}
	if skip != nil && *skip == o {
		return o, errs
	}
	for _, e := range o.Check() {
		errs = append(errs, fmt.Errorf("%s%w", optPrefix, e))
	}
	return o, errs
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
	Compression       []string `yaml:"compression"`                         // ferry: memory compression methods: xbzrle, mt, zlib, zstd (the last two with parallel connections); default none
	PermitPause       bool     `yaml:"permit_pause"`                        // ferry: pausing the guest is a permitted escalation
	StallLimit        Duration `yaml:"stall_limit"`                         // ferry: no bytes this long aborts; default 30s
	AutoConvergeGrace Duration `yaml:"auto_converge_grace"`                 // ferry: default 60s
	// ferry: auto-converge's initial throttle and step, in percent (libvirt's
	// auto_converge.initial/.increment); 0 = QEMU's 20 and 10.
	AutoConvergeInitial   int      `yaml:"auto_converge_initial"`
	AutoConvergeIncrement int      `yaml:"auto_converge_increment"`
	InitialDowntime       Duration `yaml:"initial_downtime"` // ferry: default 100ms
}

// Companion configures companion mode (DESIGN §2): nova-compute runs with
// control_exchange NovaComputeExchange, ferryd consumes Queue bound to
// control_exchange with the key compute.<host>, serves the Owned methods
// and forwards every other message to nova-compute's compute.<host> queue.
type Companion struct {
	// Owned are the methods ferryd serves; default the three source-side
	// casts. They go together: a subset would hand nova-compute an abort
	// or force-complete of a migration it does not run. Empty: ferryd
	// forwards everything (a host being cut over).
	Owned               []string `yaml:"owned"`
	Queue               string   `yaml:"queue"`                 // default ferry.compute.<host>
	NovaComputeExchange string   `yaml:"nova_compute_exchange"` // default ferry-<host>
	// ComputeRPCPinned states that the controllers pin [upgrade_levels]
	// compute to 6.4 or lower, so nothing is sent to compute-alt.<host>
	// (compute RPC 6.5, Nova 2025.2), which ferryd does not forward.
	// Checked at start only when nova-compute consumes compute-alt.<host>.
	ComputeRPCPinned bool `yaml:"compute_rpc_pinned"`
	// nova.conf's [DEFAULT] vif_plugging_timeout and vif_plugging_is_fatal:
	// how long a migration waits for the plug events of its ports'
	// destination plugs, and whether it fails without them; 300s, true.
	VIFPluggingTimeout Duration `yaml:"vif_plugging_timeout"`
	VIFPluggingIsFatal bool     `yaml:"vif_plugging_is_fatal"`
	CutOver            CutOver  `yaml:"cutover"`
}

// CutOver is what `ferryd cutover` needs to move this host between the
// stock shape and companion mode.
type CutOver struct {
	// NovaComputeConfig is the nova-compute configuration file whose
	// [DEFAULT] control_exchange the cut-over sets (Debian:
	// /etc/nova/nova-compute.conf; devstack: /etc/nova/nova-cpu.conf).
	NovaComputeConfig string   `yaml:"nova_compute_config"`
	Stop              []string `yaml:"stop"`  // stops nova-compute; default systemctl stop nova-compute
	Start             []string `yaml:"start"` // starts it; default systemctl start nova-compute
	// Rabbitmqctl runs rabbitmqctl on a broker node (the policy is not
	// settable over AMQP); default rabbitmqctl.
	Rabbitmqctl []string `yaml:"rabbitmqctl"`
	// TransportURL is a broker user allowed to bind and unbind on Nova's
	// exchange and to read nova-compute's queue; default transport_url.
	TransportURL   string `yaml:"transport_url"`
	PolicyPriority int    `yaml:"policy_priority"` // default 100, above the catch-alls deployment tools install
}

// Notifications mirror nova.conf's [oslo_messaging_notifications] and
// [notifications]: what nova-compute would emit around a live migration,
// ferryd emits for the parts it runs (companion mode).
type Notifications struct {
	Driver       []string `yaml:"driver"`              // messagingv2, messaging, noop; default none (oslo's default: nothing is sent)
	Topics       []string `yaml:"topics"`              // default [notifications]
	TransportURL string   `yaml:"transport_url"`       // default transport_url
	Format       string   `yaml:"notification_format"` // unversioned (Zed's default), versioned, both
	// VersionedTopics is [notifications] versioned_notifications_topics;
	// default [versioned_notifications].
	VersionedTopics []string `yaml:"versioned_notifications_topics"`
	// BDMsInNotifications is [notifications] bdms_in_notifications: the
	// versioned payloads list block devices; default false.
	BDMsInNotifications bool `yaml:"bdms_in_notifications"`
}

// validate checks one service's credentials; allowNone: the service may be
// left out (auth_type none).
func (k Keystone) validate(section string, allowNone bool) []error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf(section+"."+f, a...)) }
	need := func(field, v string) {
		if v == "" {
			bad("%s: required with auth_type %s", field, k.AuthType)
		}
	}
	switch k.AuthType {
	case "password":
		need("auth_url", k.AuthURL)
		need("username", k.Username)
		need("password", k.Password)
		need("project_name", k.ProjectName)
	case "noauth":
		need("endpoint_override", k.EndpointOverride)
	case "none":
		if !allowNone {
			bad("auth_type: none is not possible here: ferryd needs this service")
		}
	case "":
		if allowNone {
			bad("auth_type: required: password (nova.conf's [%s] credentials), noauth, or none (allocations left to an operator)", section)
		} else {
			bad("auth_type: required: password (nova.conf's [%s] credentials) or noauth", section)
		}
	default:
		bad("auth_type: %q, want password, noauth or none", k.AuthType)
	}
	for _, f := range []struct{ name, v string }{{"auth_url", k.AuthURL}, {"endpoint_override", k.EndpointOverride}} {
		if u, err := url.Parse(f.v); f.v != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
			bad("%s: %q is not an http(s) URL", f.name, f.v)
		}
	}
	switch k.ValidInterfaces {
	case "", "internal", "public", "admin":
	default:
		bad("valid_interfaces: %q, want internal, public or admin", k.ValidInterfaces)
	}
	return errs
}

func (c Companion) validate(host string) []error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf("companion."+f, a...)) }
	for _, m := range c.Owned {
		if !slices.Contains(CompanionOwned, m) {
			bad("owned: %q: companion mode serves only %v (nova-compute keeps the destination's work: VIF plugging, volume connections)", m, CompanionOwned)
		}
	}
	if len(c.Owned) > 0 && len(c.Owned) != len(CompanionOwned) {
		bad("owned: %v: the three source-side casts go together, or none (a host being cut over)", c.Owned)
	}
	if c.Queue == "compute."+host {
		bad("queue: %q is nova-compute's own queue; ferryd's must be another (default ferry.compute.%s)", c.Queue, host)
	}
	if c.NovaComputeExchange == "nova" {
		bad("nova_compute_exchange: nova-compute must run on an exchange of its own, not %q", c.NovaComputeExchange)
	}
	co := c.CutOver
	if co.NovaComputeConfig != "" && !strings.HasPrefix(co.NovaComputeConfig, "/") {
		bad("cutover.nova_compute_config: %q must be an absolute path", co.NovaComputeConfig)
	}
	for name, argv := range map[string][]string{"stop": co.Stop, "start": co.Start, "rabbitmqctl": co.Rabbitmqctl} {
		if len(argv) == 0 || argv[0] == "" {
			bad("cutover.%s: a command is required", name)
		}
	}
	if co.TransportURL != "" {
		if _, err := oslo.ParseTransportURL(co.TransportURL); err != nil {
			bad("cutover.%v", err)
		}
	}
	if co.PolicyPriority < 1 {
		bad("cutover.policy_priority: %d, want ≥ 1", co.PolicyPriority)
	}
	return errs
}

func (n Notifications) validate() []error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf("notifications."+f, a...)) }
	for _, d := range n.Driver {
		switch d {
		case "messagingv2", "messaging", "noop":
		default:
			bad("driver: %q, want messagingv2, messaging or noop", d)
		}
	}
	switch n.Format {
	case "unversioned", "versioned", "both":
	default:
		bad("notification_format: %q, want unversioned, versioned or both", n.Format)
	}
	if n.TransportURL != "" {
		if _, err := oslo.ParseTransportURL(n.TransportURL); err != nil {
			bad("%v", err)
		}
	}
	return errs
}

// Status configures ferryd's status API and /metrics. On loopback it is
// open to the host's own users; beyond loopback every request must come
// over TLS with a Keystone token holding the admin role.
type Status struct {
	// Listen is host:port, the host an IP address or localhost; default
	// 127.0.0.1:9779 (StatusPort); port 0 takes a free port, which the
	// log's "status API serving" line names (tests); "off" serves nothing.
	Listen  string `yaml:"listen"`
	TLSCert string `yaml:"tls_cert_file"` // PEM certificate (chain); required beyond loopback
	TLSKey  string `yaml:"tls_key_file"`  // its PEM key; required beyond loopback
	// Keystone is the service credentials tokens are validated with
	// (keystone_authtoken's): auth_type password. Required beyond
	// loopback; set on loopback, tokens are required there too.
	Keystone Keystone `yaml:"keystone"`
}

// StatusPort is the status API's default port.
const StatusPort = 9779

// Enabled reports whether the status API is served.
func (s Status) Enabled() bool { return s.Listen != "off" }

// Loopback reports whether Listen is a loopback address only.
func (s Status) Loopback() bool {
	host, _, err := net.SplitHostPort(s.Listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s Status) validate() []error {
	if !s.Enabled() {
		return nil
	}
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf("status."+f, a...)) }
	host, port, err := net.SplitHostPort(s.Listen)
	if err != nil {
		bad("listen: %q is not host:port (or off)", s.Listen)
	} else {
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			bad("listen: %q: port %q, want 0–65535", s.Listen, port)
		}
		if host != "" && host != "localhost" && net.ParseIP(host) == nil {
			bad("listen: %q: the host must be an IP address or localhost (a name could resolve beyond loopback)", s.Listen)
		}
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		bad("tls_cert_file, tls_key_file: set both or neither")
	}
	for _, f := range []struct{ name, v string }{{"tls_cert_file", s.TLSCert}, {"tls_key_file", s.TLSKey}} {
		if f.v != "" && !strings.HasPrefix(f.v, "/") {
			bad("%s: %q must be an absolute path", f.name, f.v)
		}
	}
	if err == nil && !s.Loopback() {
		if s.TLSCert == "" || s.TLSKey == "" {
			bad("listen: %q is beyond loopback: tls_cert_file and tls_key_file are required", s.Listen)
		}
		if s.Keystone.AuthType == "" {
			bad("listen: %q is beyond loopback: keystone (auth_type password) is required, so that every request carries a token with the admin role", s.Listen)
		}
	}
	switch s.Keystone.AuthType {
	case "":
	case "password":
		errs = append(errs, s.Keystone.validate("status.keystone", false)...)
	default:
		bad("keystone.auth_type: %q, want password (tokens are validated with the service's own credentials)", s.Keystone.AuthType)
	}
	return errs
}

// CompanionOwned is companion mode's default ownership table.
var CompanionOwned = []string{"live_migration", "live_migration_force_complete", "live_migration_abort"}

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

// Keystone is how ferryd reaches an OpenStack service, with nova.conf's
// option names ([placement], [neutron]). For Placement auth_type is
// required: password (Keystone), noauth (a Placement with auth_strategy =
// noauth2, at endpoint_override), or none — ferryd then leaves the
// allocations a migration holds to an operator, and says so at start.
type Keystone struct {
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
		Oslo: Oslo{Heartbeat: Duration(60 * time.Second), ResponseTimeout: Duration(60 * time.Second), ThreadPoolSize: 64, DedupSize: 1024,
			LongTimeout: Duration(1800 * time.Second)},
		Migration: Migration{MaxConcurrent: 1, MaxInbound: 2, InboundHold: Duration(5 * time.Minute), Downtime: 500,
			CompletionTimeout: 800, TimeoutAction: "abort", Scheme: "tcp", ParallelConns: 1,
			StallLimit: Duration(30 * time.Second), AutoConvergeGrace: Duration(60 * time.Second),
			InitialDowntime: Duration(100 * time.Millisecond)},
		Log:              Log{Level: "info"},
		MaxProcs:         1,
		ReportInterval:   Duration(10 * time.Second),
		JournalRetention: Duration(7 * 24 * time.Hour),
		Mode:             "native",
		Companion: Companion{Owned: CompanionOwned, VIFPluggingTimeout: Duration(300 * time.Second), VIFPluggingIsFatal: true, CutOver: CutOver{Stop: []string{"systemctl", "stop", "nova-compute"},
			Start: []string{"systemctl", "start", "nova-compute"}, Rabbitmqctl: []string{"rabbitmqctl"}, PolicyPriority: 100}},
		Notifications: Notifications{Topics: []string{"notifications"}, Format: "unversioned",
			VersionedTopics: []string{"versioned_notifications"}},
		Status: Status{Listen: net.JoinHostPort("127.0.0.1", strconv.Itoa(StatusPort))},
	}
}

// CompanionQueue is ferryd's own queue in companion mode.
func (c Config) CompanionQueue() string {
	if c.Companion.Queue != "" {
		return c.Companion.Queue
	}
	return "ferry.compute." + c.Host
}

// NovaComputeExchange is the private control_exchange of this host's
// nova-compute in companion mode.
func (c Config) NovaComputeExchange() string {
	if c.Companion.NovaComputeExchange != "" {
		return c.Companion.NovaComputeExchange
	}
	return "ferry-" + c.Host
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
	} else if _, err := oslo.ParseTransportURL(c.TransportURL); err != nil {
		bad("%v", err) // the parser's own error, which names transport_url and never shows the password
	}
	mainTLS, tlsErrs := tlsProblems("", "oslo_messaging_rabbit.", c.TransportURL, c.Oslo.TLS(), nil)
	errs = append(errs, tlsErrs...)
	if c.InboundAddr != "" {
		if err := hostnet.CheckHost(c.InboundAddr); err != nil {
			bad("live_migration_inbound_addr: %v", err)
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
		if _, err := hostnet.For(hostnet.Dest{Host: h, Mgmt: p.Management, TLSName: p.TLSName, Scheme: c.Migration.Scheme}, false); err != nil {
			bad("peers.%s: %v", h, err)
		}
		if p.LibvirtURI != "" {
			if u, err := url.Parse(p.LibvirtURI); err != nil || !strings.HasPrefix(u.Scheme, "qemu") {
				bad("peers.%s.libvirt_uri: %q is not a qemu libvirt URI", h, p.LibvirtURI)
			}
		}
	}
	if c.Oslo.ThreadPoolSize < 1 || c.Oslo.DedupSize < 16 {
		bad("oslo_messaging_rabbit.executor_thread_pool_size/dedup_size: %d/%d, want ≥ 1 and ≥ 16", c.Oslo.ThreadPoolSize, c.Oslo.DedupSize)
	}
	if c.JournalRetention.D() < time.Hour {
		bad("journal_retention: %v, want ≥ 1h", c.JournalRetention.D())
	}
	if c.ReportInterval.D() < time.Second {
		bad("report_interval: %v, want ≥ 1s", c.ReportInterval.D())
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
	if m.AutoConvergeInitial < 0 || m.AutoConvergeInitial > 99 || m.AutoConvergeIncrement < 0 || m.AutoConvergeIncrement > 99 {
		bad("migration.auto_converge_initial/increment: %d/%d, want 0–99 (percent)", m.AutoConvergeInitial, m.AutoConvergeIncrement)
	}
	for _, c := range m.Compression {
		switch c {
		case "xbzrle", "mt":
		case "zlib", "zstd":
			if m.ParallelConns < 2 {
				bad("migration.compression: %s compresses multifd streams: set live_migration_parallel_connections ≥ 2", c)
			}
		default:
			bad("migration.compression: %q, want xbzrle, mt, zlib or zstd", c)
		}
	}
	if m.StallLimit.D() < 5*time.Second {
		bad("migration.stall_limit: %v, want ≥ 5s", m.StallLimit.D())
	}
	errs = append(errs, c.Placement.validate("placement", true)...)
	if c.Glance.AuthType != "" {
		errs = append(errs, c.Glance.validate("glance", true)...)
	}
	switch c.Mode {
	case "native":
	case "companion":
		errs = append(errs, c.Neutron.validate("neutron", false)...)
		errs = append(errs, c.Companion.validate(c.Host)...)
		if u := c.Companion.CutOver.TransportURL; u != "" {
			_, tlsErrs := tlsProblems("companion.cutover.", "companion.cutover.transport_url: ", u, c.Oslo.TLS(), &mainTLS)
			errs = append(errs, tlsErrs...)
		}
		if u := c.Notifications.TransportURL; u != "" { // companion mode sends them
			_, tlsErrs := tlsProblems("notifications.", "notifications.transport_url: ", u, c.Oslo.TLS(), &mainTLS)
			errs = append(errs, tlsErrs...)
		}
	default:
		bad("mode: %q, want native or companion", c.Mode)
	}
	errs = append(errs, c.Notifications.validate()...)
	errs = append(errs, c.Status.validate()...)
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
