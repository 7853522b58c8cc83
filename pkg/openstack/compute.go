package openstack

// The admin's side of Nova: what `ferry` asks nova-api, as python-
// openstackclient does, so Nova's records stay the truth. gophercloud v2
// wraps none of the server-migration calls, and its LiveMigrateOpts cannot
// say block_migration "auto"; they are raw requests here.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"opendev.org/x/ferry/pkg/errdefs"
)

// computeMicroversion is what the admin calls need: 2.59 gives migrations
// their uuid (ferryd's id for them), 2.80 the user and project; ≥2.68
// live-migrate has no "force" (the scheduler always checks the host).
const computeMicroversion = "2.80"

// Cloud is nova-api as an admin reaches it, from clouds.yaml (OS_CLOUD,
// OS_CLIENT_CONFIG_FILE and the OS_* variables, as openstackclient reads
// them).
type Cloud struct {
	provider *gophercloud.ProviderClient
	compute  *gophercloud.ServiceClient
	tls      *tls.Config
}

// OpenCloud authenticates to the cloud clouds.yaml names (name "" is
// $OS_CLOUD) and finds Nova in its catalog.
func OpenCloud(ctx context.Context, name string, timeout time.Duration) (*Cloud, error) {
	var opts []clouds.ParseOption
	if name != "" {
		opts = append(opts, clouds.WithCloudName(name))
	}
	ao, eo, tlsCfg, err := clouds.Parse(opts...)
	if err != nil {
		return nil, fmt.Errorf("clouds.yaml: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	ao.AllowReauth = true
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	// Debian's nova-api runs under uwsgi: a connection per request (see
	// session.httpClient).
	hc := http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true, Proxy: http.ProxyFromEnvironment, TLSClientConfig: tlsCfg}}
	pc, err := config.NewProviderClient(ctx, ao, config.WithHTTPClient(hc))
	if err != nil {
		return nil, fmt.Errorf("keystone at %s: %w", ao.IdentityEndpoint, classify(err))
	}
	sc, err := gopenstack.NewComputeV2(pc, eo)
	if err != nil {
		return nil, fmt.Errorf("nova: %w: %w", errdefs.ErrNotFound, err)
	}
	sc.Microversion = computeMicroversion
	return &Cloud{provider: pc, compute: sc, tls: tlsCfg}, nil
}

// Token is the Keystone token the cloud's calls carry (ferryd's status API
// takes the same one).
func (c *Cloud) Token() string { return c.provider.Token() }

// TLS is clouds.yaml's TLS settings (cacert, cert, key, verify); nil when
// it sets none.
func (c *Cloud) TLS() *tls.Config { return c.tls }

// Server is what the CLI needs of a server.
type Server struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Status     string `json:"status"`
	Host       string `json:"OS-EXT-SRV-ATTR:host"`
	TaskState  string `json:"OS-EXT-STS:task_state"`
	VMState    string `json:"OS-EXT-STS:vm_state"`
	InstanceOf string `json:"OS-EXT-SRV-ATTR:instance_name"`
	// Flavor is the server's flavor as Nova embeds it (microversion ≥ 2.47).
	Flavor Flavor `json:"flavor"`
}

// Flavor is what a server's embedded flavor says of its size.
type Flavor struct {
	Name   string `json:"original_name"`
	RAMMiB int64  `json:"ram"`
	VCPUs  int    `json:"vcpus"`
	DiskGB int64  `json:"disk"`
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)

// Server finds a server by id, or else by exact name in every project (an
// admin's view). A name that matches more than one server is refused.
func (c *Cloud) Server(ctx context.Context, ref string) (Server, error) {
	if ref == "" {
		return Server{}, fmt.Errorf("server: %w: empty name or id", errdefs.ErrInvalidArgument)
	}
	if uuidRE.MatchString(ref) {
		var out struct {
			Server Server `json:"server"`
		}
		_, err := c.compute.Get(ctx, c.compute.ServiceURL("servers", ref), &out, nil)
		if err == nil {
			return out.Server, nil
		}
		if !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return Server{}, fmt.Errorf("server %s: %w", ref, classify(err))
		}
	}
	q := url.Values{"name": {"^" + regexp.QuoteMeta(ref) + "$"}, "all_tenants": {"1"}}
	var out struct {
		Servers []Server `json:"servers"`
	}
	if _, err := c.compute.Get(ctx, c.compute.ServiceURL("servers", "detail")+"?"+q.Encode(), &out, nil); err != nil {
		return Server{}, fmt.Errorf("server %s: %w", ref, classify(err))
	}
	switch len(out.Servers) {
	case 0:
		return Server{}, fmt.Errorf("server %s: %w", ref, errdefs.ErrNotFound)
	case 1:
		return out.Servers[0], nil
	}
	ids := make([]string, 0, len(out.Servers))
	for _, s := range out.Servers {
		ids = append(ids, s.ID)
	}
	return Server{}, fmt.Errorf("server %s: %w: %d servers have that name (%s); give an id", ref, errdefs.ErrInvalidArgument, len(ids), strings.Join(ids, ", "))
}

// serversPage bounds one page of a server listing (Nova's own default
// [api] max_limit is 1000).
const serversPage = 500

// ServersOnHost lists every server Nova places on a compute host, in every
// project (an admin's view), following Nova's pages to the end.
func (c *Cloud) ServersOnHost(ctx context.Context, host string) ([]Server, error) {
	if host == "" {
		return nil, fmt.Errorf("servers on host: %w: empty host", errdefs.ErrInvalidArgument)
	}
	var all []Server
	marker := ""
	for {
		q := url.Values{"host": {host}, "all_tenants": {"1"}, "limit": {strconv.Itoa(serversPage)}}
		if marker != "" {
			q.Set("marker", marker)
		}
		var out struct {
			Servers []Server `json:"servers"`
			Links   []struct {
				Rel string `json:"rel"`
			} `json:"servers_links"`
		}
		if _, err := c.compute.Get(ctx, c.compute.ServiceURL("servers", "detail")+"?"+q.Encode(), &out, nil); err != nil {
			return nil, fmt.Errorf("servers on %s: %w", host, classify(err))
		}
		all = append(all, out.Servers...)
		next := false
		for _, l := range out.Links {
			next = next || l.Rel == "next"
		}
		if !next || len(out.Servers) == 0 {
			return all, nil
		}
		marker = out.Servers[len(out.Servers)-1].ID
	}
}

// BlockMigration is live-migrate's block_migration: "auto" (Nova decides
// from the storage), "true" or "false".
type BlockMigration string

// ParseBlockMigration accepts auto, true and false.
func ParseBlockMigration(s string) (BlockMigration, error) {
	switch s {
	case "auto", "true", "false":
		return BlockMigration(s), nil
	}
	return "", fmt.Errorf("block migration %q: %w: want auto, true or false", s, errdefs.ErrInvalidArgument)
}

func (b BlockMigration) wire() any {
	switch b {
	case "true":
		return true
	case "false":
		return false
	}
	return "auto"
}

// LiveMigrate asks Nova to live-migrate a server; host "" lets the
// scheduler choose. Nova answers 202 before anything moves (the conductor's
// checks run after); the migration shows in Migrations.
func (c *Cloud) LiveMigrate(ctx context.Context, serverID, host string, block BlockMigration) error {
	body := map[string]any{"os-migrateLive": map[string]any{"host": nil, "block_migration": block.wire()}}
	if host != "" {
		body["os-migrateLive"].(map[string]any)["host"] = host
	}
	_, err := c.compute.Post(ctx, c.compute.ServiceURL("servers", serverID, "action"), body, nil, &gophercloud.RequestOpts{OkCodes: []int{202}})
	if err != nil {
		return fmt.Errorf("live-migrate %s: %w", serverID, classify(err))
	}
	return nil
}

// Migration is Nova's record of a migration (GET /os-migrations).
type Migration struct {
	ID            int64     `json:"id"`
	UUID          string    `json:"uuid"`
	InstanceUUID  string    `json:"instance_uuid"`
	Type          string    `json:"migration_type"`
	Status        string    `json:"status"`
	SourceCompute string    `json:"source_compute"`
	DestCompute   string    `json:"dest_compute"`
	SourceNode    string    `json:"source_node"`
	DestNode      string    `json:"dest_node"`
	DestHost      string    `json:"dest_host"`
	UserID        string    `json:"user_id"`
	ProjectID     string    `json:"project_id"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at,omitzero"`
}

// UnmarshalJSON reads Nova's times ("2026-12-04T02:47:01.000000", no zone,
// UTC).
func (m *Migration) UnmarshalJSON(b []byte) error {
	type plain Migration
	var w struct {
		plain
		CreatedAt *string `json:"created_at"`
		UpdatedAt *string `json:"updated_at"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*m = Migration(w.plain)
	var err error
	if m.CreatedAt, err = novaTime(w.CreatedAt); err != nil {
		return fmt.Errorf("created_at: %w", err)
	}
	if m.UpdatedAt, err = novaTime(w.UpdatedAt); err != nil {
		return fmt.Errorf("updated_at: %w", err)
	}
	return nil
}

func novaTime(s *string) (time.Time, error) {
	if s == nil || *s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05.999999", time.RFC3339Nano, "2006-01-02 15:04:05.999999"} {
		if t, err := time.Parse(layout, *s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%w: %q is not a time", errdefs.ErrInvalidArgument, *s)
}

// Ended reports whether Nova's status is final for a live migration.
func (m Migration) Ended() bool {
	switch m.Status {
	case "completed", "failed", "error", "cancelled", "done":
		return true
	}
	return false
}

// MigrationFilter narrows Migrations; zero fields do not filter.
type MigrationFilter struct {
	Server string // instance uuid
	Host   string // source or destination compute
	Status string
	Limit  int
}

// Migrations lists Nova's live migrations, newest first.
func (c *Cloud) Migrations(ctx context.Context, f MigrationFilter) ([]Migration, error) {
	q := url.Values{"migration_type": {"live-migration"}}
	if f.Server != "" {
		q.Set("instance_uuid", f.Server)
	}
	if f.Host != "" {
		q.Set("host", f.Host)
	}
	if f.Status != "" {
		q.Set("status", f.Status)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out struct {
		Migrations []Migration `json:"migrations"`
	}
	if _, err := c.compute.Get(ctx, c.compute.ServiceURL("os-migrations")+"?"+q.Encode(), &out, nil); err != nil {
		return nil, fmt.Errorf("migrations: %w", classify(err))
	}
	sort.Slice(out.Migrations, func(i, j int) bool { return out.Migrations[i].ID > out.Migrations[j].ID })
	return out.Migrations, nil
}

// FindMigration finds a server's migration by Nova's id or uuid.
func (c *Cloud) FindMigration(ctx context.Context, serverID, ref string) (Migration, error) {
	ms, err := c.Migrations(ctx, MigrationFilter{Server: serverID})
	if err != nil {
		return Migration{}, err
	}
	for _, m := range ms {
		if strconv.FormatInt(m.ID, 10) == ref || (m.UUID != "" && strings.EqualFold(m.UUID, ref)) {
			return m, nil
		}
	}
	return Migration{}, fmt.Errorf("migration %s of server %s: %w", ref, serverID, errdefs.ErrNotFound)
}

// Progress is what Nova shows of a live migration in progress (GET
// /servers/{id}/migrations/{mid}): the source compute's latest save.
type Progress struct {
	MemoryTotal     uint64 `json:"memory_total_bytes"`
	MemoryProcessed uint64 `json:"memory_processed_bytes"`
	MemoryRemaining uint64 `json:"memory_remaining_bytes"`
	DiskTotal       uint64 `json:"disk_total_bytes"`
	DiskProcessed   uint64 `json:"disk_processed_bytes"`
	DiskRemaining   uint64 `json:"disk_remaining_bytes"`
}

// InProgress reads Nova's progress of a running live migration; a
// migration that is not running is ErrNotFound (Nova shows only running
// ones there).
func (c *Cloud) InProgress(ctx context.Context, serverID string, id int64) (Progress, error) {
	var out struct {
		Migration Progress `json:"migration"`
	}
	_, err := c.compute.Get(ctx, c.compute.ServiceURL("servers", serverID, "migrations", strconv.FormatInt(id, 10)), &out, nil)
	if err != nil {
		return Progress{}, fmt.Errorf("migration %d of server %s: %w", id, serverID, classify(err))
	}
	return out.Migration, nil
}

// ForceComplete asks Nova to force a running live migration to complete
// (the source compute pauses the guest or switches to post-copy).
func (c *Cloud) ForceComplete(ctx context.Context, serverID string, id int64) error {
	_, err := c.compute.Post(ctx, c.compute.ServiceURL("servers", serverID, "migrations", strconv.FormatInt(id, 10), "action"),
		map[string]any{"force_complete": nil}, nil, &gophercloud.RequestOpts{OkCodes: []int{202}})
	if err != nil {
		return fmt.Errorf("force-complete migration %d of server %s: %w", id, serverID, classify(err))
	}
	return nil
}

// AbortMigration asks Nova to abort a live migration (running, queued or
// preparing).
func (c *Cloud) AbortMigration(ctx context.Context, serverID string, id int64) error {
	_, err := c.compute.Delete(ctx, c.compute.ServiceURL("servers", serverID, "migrations", strconv.FormatInt(id, 10)),
		&gophercloud.RequestOpts{OkCodes: []int{202}})
	if err != nil {
		return fmt.Errorf("abort migration %d of server %s: %w", id, serverID, classify(err))
	}
	return nil
}

// APIMessage is the message of Nova's error answer ("Instance ... in
// task_state migrating..."), "" when err carries none.
func APIMessage(err error) string {
	var code gophercloud.ErrUnexpectedResponseCode
	if !errors.As(err, &code) {
		return ""
	}
	var body map[string]struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(code.Body, &body) != nil {
		return ""
	}
	for _, v := range body {
		if v.Message != "" {
			return v.Message
		}
	}
	return ""
}
