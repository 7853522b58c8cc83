package openstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
)

// fakeCloud is Keystone and nova-api on one server: a password token whose
// catalog names the compute endpoint, and the few compute calls the CLI
// makes, each request recorded.
type fakeCloud struct {
	mu   sync.Mutex
	reqs []string // "METHOD path?query body" with the microversion header
}

func (f *fakeCloud) record(r *http.Request) string {
	b, _ := io.ReadAll(r.Body)
	line := fmt.Sprintf("%s %s %s [%s]", r.Method, r.URL.RequestURI(), strings.TrimSpace(string(b)), r.Header.Get("X-OpenStack-Nova-API-Version"))
	f.mu.Lock()
	f.reqs = append(f.reqs, line)
	f.mu.Unlock()
	return line
}

func newFakeCloud(t *testing.T) (*fakeCloud, *Cloud) {
	t.Helper()
	f := &fakeCloud{}
	mux := http.NewServeMux()
	var base string
	mux.HandleFunc("POST /v3/auth/tokens", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Subject-Token", "admin-token")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"token": {"expires_at": %q, "catalog": [
			{"type": "identity", "endpoints": [{"interface": "public", "region": "RegionOne", "url": %q}]},
			{"type": "compute", "endpoints": [{"interface": "public", "region": "RegionOne", "url": %q}]}]}}`,
			time.Now().Add(time.Hour).UTC().Format(time.RFC3339), base+"/v3", base+"/compute/v2.1")
	})
	mux.HandleFunc("/compute/v2.1/", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Auth-Token") != "admin-token" {
			http.Error(w, "{}", http.StatusUnauthorized)
			return
		}
		f.record(r)
		p := strings.TrimPrefix(r.URL.Path, "/compute/v2.1")
		switch {
		case r.Method == "GET" && p == "/servers/"+srv1:
			fmt.Fprintf(w, `{"server": {"id": %q, "name": "web-1", "OS-EXT-SRV-ATTR:host": "lab-a", "status": "ACTIVE"}}`, srv1)
		case r.Method == "GET" && strings.HasPrefix(p, "/servers/") && !strings.HasPrefix(p, "/servers/detail") && !strings.Contains(p, "/migrations"):
			http.Error(w, `{"itemNotFound": {"code": 404, "message": "Instance could not be found."}}`, http.StatusNotFound)
		case r.Method == "GET" && p == "/servers/detail" && r.URL.Query().Get("host") == "lab-a":
			if r.URL.Query().Get("marker") == "" { // a full page: Nova links the next
				fmt.Fprintf(w, `{"servers": [{"id": %q, "name": "web-1", "status": "ACTIVE", "OS-EXT-SRV-ATTR:host": "lab-a",
					"OS-EXT-STS:task_state": null, "flavor": {"original_name": "m1.small", "ram": 512, "vcpus": 1, "disk": 1}}],
					"servers_links": [{"rel": "next", "href": "x"}]}`, srv1)
				return
			}
			fmt.Fprint(w, `{"servers": [{"id": "b", "name": "db-1", "status": "SHUTOFF", "OS-EXT-SRV-ATTR:host": "lab-a",
				"OS-EXT-STS:task_state": "powering-on", "flavor": {"original_name": "m1.big", "ram": 4096, "vcpus": 2, "disk": 10}}]}`)
		case r.Method == "GET" && p == "/servers/detail":
			switch r.URL.Query().Get("name") {
			case "^web-1$":
				fmt.Fprintf(w, `{"servers": [{"id": %q, "name": "web-1"}]}`, srv1)
			case "^twin$":
				fmt.Fprint(w, `{"servers": [{"id": "a", "name": "twin"}, {"id": "b", "name": "twin"}]}`)
			default:
				fmt.Fprint(w, `{"servers": []}`)
			}
		case r.Method == "POST" && p == "/servers/"+srv1+"/action":
			w.WriteHeader(http.StatusAccepted)
		case r.Method == "POST" && p == "/servers/busy/action":
			http.Error(w, `{"conflictingRequest": {"code": 409, "message": "Cannot 'os-migrateLive' instance busy while it is in task_state migrating"}}`, http.StatusConflict)
		case r.Method == "GET" && p == "/os-migrations":
			fmt.Fprintf(w, `{"migrations": [
				{"id": 41, "uuid": %q, "instance_uuid": %q, "migration_type": "live-migration", "status": "completed",
				 "source_compute": "lab-b", "dest_compute": "lab-a", "created_at": "2026-12-04T02:00:00.000000", "updated_at": null},
				{"id": 43, "uuid": %q, "instance_uuid": %q, "migration_type": "live-migration", "status": "running",
				 "source_compute": "lab-a", "dest_compute": "lab-b", "created_at": "2026-12-04T03:00:00.500000", "updated_at": "2026-12-04T03:00:05.000000"}]}`,
				mig41, srv1, mig43, srv1)
		case r.Method == "GET" && p == "/servers/"+srv1+"/migrations/43":
			fmt.Fprint(w, `{"migration": {"id": 43, "memory_total_bytes": 536870912, "memory_processed_bytes": 1048576, "memory_remaining_bytes": 535822336}}`)
		case r.Method == "GET" && p == "/servers/"+srv1+"/migrations/41":
			http.Error(w, `{"itemNotFound": {"code": 404, "message": "Migration 41 for server is not in progress."}}`, http.StatusNotFound)
		case (r.Method == "POST" || r.Method == "DELETE") && strings.HasPrefix(p, "/servers/"+srv1+"/migrations/43"):
			w.WriteHeader(http.StatusAccepted)
		default:
			http.Error(w, `{"badRequest": {"code": 400, "message": "unexpected"}}`, http.StatusBadRequest)
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	base = srv.URL
	cfg := filepath.Join(t.TempDir(), "clouds.yaml")
	yml := fmt.Sprintf("clouds:\n  lab:\n    auth:\n      auth_url: %s/v3\n      username: admin\n      password: pw\n      project_name: admin\n"+
		"      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    identity_api_version: 3\n", base)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OS_CLIENT_CONFIG_FILE", cfg)
	c, err := OpenCloud(context.Background(), "lab", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

const (
	srv1  = "6a3e0000-0000-4000-8000-000000000001"
	mig41 = "5b2f0000-0000-4000-8000-000000000041"
	mig43 = "5b2f0000-0000-4000-8000-000000000043"
)

// live-migrate's body as Nova's schema at 2.80 wants it: host null for the
// scheduler's choice, block_migration "auto" or a boolean, no
// disk_over_commit, no force.
func TestLiveMigrateBody(t *testing.T) {
	f, c := newFakeCloud(t)
	ctx := context.Background()
	if err := c.LiveMigrate(ctx, srv1, "", "auto"); err != nil {
		t.Fatal(err)
	}
	if err := c.LiveMigrate(ctx, srv1, "lab-b", "false"); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`POST /compute/v2.1/servers/` + srv1 + `/action {"os-migrateLive":{"block_migration":"auto","host":null}} [2.80]`,
		`POST /compute/v2.1/servers/` + srv1 + `/action {"os-migrateLive":{"block_migration":false,"host":"lab-b"}} [2.80]`,
	}
	if diff := cmp.Diff(want, f.reqs); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	err := c.LiveMigrate(ctx, "busy", "", "auto")
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(APIMessage(err), "task_state migrating") {
		t.Errorf("a refused live-migrate: %v (message %q)", err, APIMessage(err))
	}
}

func TestMigrationsParsedAndOrdered(t *testing.T) {
	f, c := newFakeCloud(t)
	ms, err := c.Migrations(context.Background(), MigrationFilter{Server: srv1, Status: "running", Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].ID != 43 || ms[1].ID != 41 {
		t.Fatalf("not newest first: %+v", ms)
	}
	if want := time.Date(2026, 12, 4, 3, 0, 0, 5e8, time.UTC); !ms[0].CreatedAt.Equal(want) || ms[0].UpdatedAt.IsZero() || !ms[1].UpdatedAt.IsZero() {
		t.Errorf("times: %v %v %v", ms[0].CreatedAt, ms[0].UpdatedAt, ms[1].UpdatedAt)
	}
	if ms[0].Ended() || !ms[1].Ended() {
		t.Errorf("Ended: running %v, completed %v", ms[0].Ended(), ms[1].Ended())
	}
	if q := f.reqs[0]; !strings.Contains(q, "instance_uuid="+srv1) || !strings.Contains(q, "migration_type=live-migration") ||
		!strings.Contains(q, "status=running") || !strings.Contains(q, "limit=5") {
		t.Errorf("query: %s", q)
	}
	m, err := c.FindMigration(context.Background(), srv1, mig41)
	if err != nil || m.ID != 41 {
		t.Errorf("by uuid: %+v %v", m, err)
	}
	if _, err := c.FindMigration(context.Background(), srv1, "44"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("an unknown id: %v", err)
	}
}

func TestInProgressAndActions(t *testing.T) {
	f, c := newFakeCloud(t)
	ctx := context.Background()
	p, err := c.InProgress(ctx, srv1, 43)
	if err != nil || p.MemoryTotal != 512<<20 || p.MemoryRemaining != 535822336 {
		t.Errorf("in progress: %+v %v", p, err)
	}
	if _, err := c.InProgress(ctx, srv1, 41); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a finished migration: %v", err)
	}
	if err := c.ForceComplete(ctx, srv1, 43); err != nil {
		t.Error(err)
	}
	if err := c.AbortMigration(ctx, srv1, 43); err != nil {
		t.Error(err)
	}
	got := f.reqs[len(f.reqs)-2:]
	want := []string{
		`POST /compute/v2.1/servers/` + srv1 + `/migrations/43/action {"force_complete":null} [2.80]`,
		`DELETE /compute/v2.1/servers/` + srv1 + `/migrations/43  [2.80]`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}

func TestServerByIDOrName(t *testing.T) {
	_, c := newFakeCloud(t)
	ctx := context.Background()
	for _, ref := range []string{srv1, "web-1"} {
		if s, err := c.Server(ctx, ref); err != nil || s.ID != srv1 {
			t.Errorf("%s: %+v %v", ref, s, err)
		}
	}
	if _, err := c.Server(ctx, "twin"); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "a, b") {
		t.Errorf("an ambiguous name: %v", err)
	}
	for _, ref := range []string{"nope", "6a3e0000-0000-4000-8000-0000000000ff"} {
		if _, err := c.Server(ctx, ref); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("%s: %v", ref, err)
		}
	}
}

func TestParseBlockMigration(t *testing.T) {
	for in, ok := range map[string]bool{"auto": true, "true": true, "false": true, "": false, "yes": false, "True": false} {
		if _, err := ParseBlockMigration(in); (err == nil) != ok {
			t.Errorf("%q: %v", in, err)
		}
	}
}

// A host's servers, every project's, across Nova's pages, with the
// embedded flavor's size.
func TestServersOnHost(t *testing.T) {
	f, c := newFakeCloud(t)
	got, err := c.ServersOnHost(context.Background(), "lab-a")
	if err != nil {
		t.Fatal(err)
	}
	want := []Server{
		{ID: srv1, Name: "web-1", Status: "ACTIVE", Host: "lab-a", Flavor: Flavor{Name: "m1.small", RAMMiB: 512, VCPUs: 1, DiskGB: 1}},
		{ID: "b", Name: "db-1", Status: "SHUTOFF", Host: "lab-a", TaskState: "powering-on", Flavor: Flavor{Name: "m1.big", RAMMiB: 4096, VCPUs: 2, DiskGB: 10}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("servers (-want +got):\n%s", diff)
	}
	if len(f.reqs) != 2 || !strings.Contains(f.reqs[0], "all_tenants=1") || !strings.Contains(f.reqs[0], "host=lab-a") ||
		!strings.Contains(f.reqs[1], "marker="+srv1) || !strings.HasSuffix(f.reqs[0], "[2.80]") {
		t.Errorf("requests: %q", f.reqs)
	}
	if _, err := c.ServersOnHost(context.Background(), ""); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("no host: %v", err)
	}
}
