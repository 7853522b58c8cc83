package status

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/openstack"
	"opendev.org/x/ferry/pkg/virt"
)

const (
	id1 = "5b2f0000-0000-4000-8000-0000000000a1"
	id2 = "5b2f0000-0000-4000-8000-0000000000a2"
)

type fakeEngine struct {
	ms       []migration.Migration
	progress map[string]virt.JobStats
}

func (f fakeEngine) Progress(id string) (virt.JobStats, time.Time, bool) {
	js, ok := f.progress[id]
	return js, t0.Add(90 * time.Second), ok
}

func (f fakeEngine) List() []migration.Migration { return f.ms }

func (f fakeEngine) Status(id string) (migration.Migration, bool) {
	for _, m := range f.ms {
		if m.ID == id {
			return m, true
		}
	}
	return migration.Migration{}, false
}

var t0 = time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC)

func engine() fakeEngine {
	done := migration.Migration{Request: migration.Request{ID: id1, InstanceUUID: "6a3e0000-0000-4000-8000-000000000001",
		RequestID: "req-1", GlobalRequestID: "req-g1", Dest: hostnet.Dest{Host: "lab-b", Mgmt: "198.18.0.12"},
		State: []byte(`{"context": {"auth_token": "gAAAA-secret"}}`), Credentials: []byte(`{"auth_token": "gAAAA-secret"}`),
		Job: migration.Job{Disks: []string{"vda"}}, Policy: migration.Policy{AutoConverge: true}},
		Version: 1, Phase: migration.PhaseCompleted, Downtime: 300 * time.Millisecond, Updated: t0.Add(time.Minute),
		Prep:    &migration.Preparation{MigrationAddr: "198.18.1.12", Copy: virt.CopyIncremental, CopyNote: "backing file cached on lab-b"},
		Reports: []migration.Report{{Seq: 1, Name: "status", Delivered: true}, {Seq: 2, Name: "settle"}},
		Record: migration.Record{Started: t0, Ended: t0.Add(42 * time.Second), Total: 42 * time.Second, Downtime: 180 * time.Millisecond,
			MemBytes: 3 << 30, FirstPass: 2 << 30, DiskBytes: 1 << 30, Iterations: 7, Bandwidth: 1.25e8, Floor: 20 << 20, Stalls: 1,
			LongestStall: 2 * time.Second, Actions: []migration.ActionRecord{
				{At: 500 * time.Millisecond, Action: "set-downtime", Downtime: 100 * time.Millisecond, Reason: "initial max downtime"},
				{At: 20 * time.Second, Action: "set-downtime", Downtime: 300 * time.Millisecond, Reason: "floor 20 MiB at 119 MiB/s needs 170ms"}},
			Series: []migration.Point{{At: 500 * time.Millisecond, MemRemaining: 3 << 30, Bps: 1.25e8, MaxDowntime: 100 * time.Millisecond}}}}
	running := migration.Migration{Request: migration.Request{ID: id2, InstanceUUID: "6a3e0000-0000-4000-8000-000000000002",
		Dest: hostnet.Dest{Host: "lab-b"}}, Phase: migration.PhaseRunning, Updated: t0.Add(2 * time.Minute),
		Record: migration.Record{Started: t0.Add(time.Minute)}}
	return fakeEngine{ms: []migration.Migration{running, done}, progress: map[string]virt.JobStats{id2: {Elapsed: 30 * time.Second,
		MemIteration: 3, MemTotal: 1 << 30, MemProcessed: 900 << 20, MemRemaining: 200 << 20, MemBps: 50 << 20, DiskTotal: 2 << 30,
		DiskProcessed: 2 << 30}}}
}

func newTestServer(t *testing.T, o Options) *httptest.Server {
	t.Helper()
	if o.Engine == nil {
		o.Engine = engine()
	}
	s := &Server{o: o.withDefaults()}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string, header ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// The JSON shape of one migration: the record's figures in base units,
// the actions with their reasons and times, and nothing of Nova's objects
// or the request's credentials.
func TestMigrationShape(t *testing.T) {
	srv := newTestServer(t, Options{})
	code, h, b := get(t, srv.URL+"/v1/migrations/"+id1)
	if code != http.StatusOK || h.Get("Content-Type") != "application/json" {
		t.Fatalf("GET one: %d %s %s", code, h.Get("Content-Type"), b)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"id": id1, "instance_uuid": "6a3e0000-0000-4000-8000-000000000001", "phase": "completed", "role": "source", "dest": "lab-b",
		"request_id": "req-1", "global_request_id": "req-g1", "started": "2026-12-03T07:00:00Z", "ended": "2026-12-03T07:00:42Z",
		"updated": "2026-12-03T07:01:00Z", "reports_pending": float64(1),
		"record": map[string]any{"total_seconds": 42.0, "downtime_seconds": 0.18, "max_downtime_seconds": 0.3,
			"memory_bytes": float64(3 << 30), "first_pass_bytes": float64(2 << 30), "disk_bytes": float64(1 << 30), "iterations": 7.0,
			"bandwidth_bps": 1.25e8, "floor_bytes": float64(20 << 20), "stalls": 1.0, "longest_stall_seconds": 2.0},
		"actions": []any{
			map[string]any{"at_seconds": 0.5, "action": "set-downtime", "downtime_seconds": 0.1, "reason": "initial max downtime"},
			map[string]any{"at_seconds": 20.0, "action": "set-downtime", "downtime_seconds": 0.3, "reason": "floor 20 MiB at 119 MiB/s needs 170ms"}},
		"series": []any{map[string]any{"at_seconds": 0.5, "memory_remaining_bytes": float64(3 << 30), "bps": 1.25e8, "max_downtime_seconds": 0.1}},
		"job": map[string]any{"disks": []any{"vda"}, "copy": "incremental", "copy_note": "backing file cached on lab-b",
			"migration_uri": "tcp://198.18.1.12", "disks_uri": "tcp://198.18.1.12", "tls": false, "post_copy": false, "auto_converge": true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GET /v1/migrations/%s (-want +got):\n%s", id1, diff)
	}
	if strings.Contains(string(b), "gAAAA") || strings.Contains(string(b), "auth_token") {
		t.Errorf("the answer carries the request's credentials: %s", b)
	}
}

func TestList(t *testing.T) {
	srv := newTestServer(t, Options{})
	code, _, b := get(t, srv.URL+"/v1/migrations")
	var l List
	if err := json.Unmarshal(b, &l); code != http.StatusOK || err != nil {
		t.Fatalf("GET list: %d %v %s", code, err, b)
	}
	if len(l.Migrations) != 2 || l.Migrations[0].ID != id2 || l.Migrations[0].Phase != "running" || l.Migrations[1].ID != id1 {
		t.Errorf("list = %+v", l)
	}
	if l.Migrations[0].Actions == nil || !strings.Contains(string(b), `"actions": []`) {
		t.Errorf("a migration without actions must show an empty list: %s", b)
	}
	want := &Progress{SampledAt: t0.Add(90 * time.Second), ElapsedSeconds: 30, Iteration: 3, MemoryTotalBytes: 1 << 30,
		MemoryProcessedBytes: 900 << 20, MemoryRemainingBytes: 200 << 20, MemoryBps: 50 << 20, DiskTotalBytes: 2 << 30,
		DiskProcessedBytes: 2 << 30}
	if diff := cmp.Diff(want, l.Migrations[0].Progress); diff != "" {
		t.Errorf("the running migration's progress (-want +got):\n%s", diff)
	}
	if l.Migrations[1].Progress != nil || strings.Count(string(b), `"progress"`) != 1 {
		t.Errorf("an ended migration shows progress: %s", b)
	}
	empty := newTestServer(t, Options{Engine: fakeEngine{}})
	if code, _, b := get(t, empty.URL+"/v1/migrations"); code != http.StatusOK || !strings.Contains(string(b), `"migrations": []`) {
		t.Errorf("an empty engine: %d %s", code, b)
	}
}

// Unknown and hostile ids get a 404 that does not echo them; other paths
// 404, other methods 405: the API changes nothing.
func TestUnknownAndHostile(t *testing.T) {
	srv := newTestServer(t, Options{})
	for _, p := range []string{
		"/v1/migrations/5b2f0000-0000-4000-8000-0000000000ff",
		"/v1/migrations/..%2F..%2Fetc%2Fpasswd",
		"/v1/migrations/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
		"/v1/migrations/" + strings.Repeat("a", 8000),
		"/v1/migrations/%00",
		"/v1/migrations/" + strings.ToUpper(id1),
		"/v1/migrations/" + id1 + "/extra",
		"/v1/nothing",
		"/",
	} {
		code, h, b := get(t, srv.URL+p)
		if code != http.StatusNotFound || h.Get("Content-Type") != "application/json" {
			t.Errorf("GET %.60s: %d %s, want 404 JSON", p, code, h.Get("Content-Type"))
		}
		var e Error
		if json.Unmarshal(b, &e) != nil || e.Error == "" || strings.Contains(string(b), "script") || strings.Contains(string(b), "passwd") {
			t.Errorf("GET %.60s: body %.200s", p, b)
		}
	}
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		req, _ := http.NewRequestWithContext(context.Background(), m, srv.URL+"/v1/migrations/"+id1, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s: %d, want 405", m, resp.StatusCode)
		}
	}
}

type fakeTokens map[string][]string

func (f fakeTokens) Validate(_ context.Context, token string) (openstack.Token, error) {
	if token == "keystone-down" {
		return openstack.Token{}, fmt.Errorf("keystone: %w", errdefs.ErrUnavailable)
	}
	roles, ok := f[token]
	if !ok {
		return openstack.Token{}, fmt.Errorf("keystone: %w", errdefs.ErrNotFound)
	}
	return openstack.Token{Roles: roles}, nil
}

// With Keystone, every path needs a valid token with the admin role.
func TestTokens(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ferry_up 1\n") })
	srv := newTestServer(t, Options{Tokens: fakeTokens{"tok-admin": {"reader", "admin"}, "tok-member": {"member"}}, Metrics: metrics})
	for _, tt := range []struct {
		name   string
		header []string
		want   int
	}{
		{"no token", nil, http.StatusUnauthorized},
		{"unknown token", []string{"X-Auth-Token", "tok-forged"}, http.StatusUnauthorized},
		{"without the role", []string{"X-Auth-Token", "tok-member"}, http.StatusForbidden},
		{"keystone down", []string{"X-Auth-Token", "keystone-down"}, http.StatusServiceUnavailable},
		{"admin", []string{"X-Auth-Token", "tok-admin"}, http.StatusOK},
		{"admin, bearer", []string{"Authorization", "Bearer tok-admin"}, http.StatusOK},
		{"basic is no token", []string{"Authorization", "Basic dG9rLWFkbWluOg=="}, http.StatusUnauthorized},
	} {
		for _, p := range []string{"/v1/migrations", "/v1/migrations/" + id1, "/metrics"} {
			code, _, b := get(t, srv.URL+p, tt.header...)
			if code != tt.want {
				t.Errorf("%s: GET %s = %d, want %d (%s)", tt.name, p, code, tt.want, b)
			}
			if code != http.StatusOK && strings.Contains(string(b), "tok-") {
				t.Errorf("%s: the refusal echoes the token: %s", tt.name, b)
			}
		}
	}
	// Without Keystone (loopback) the same paths are open.
	open := newTestServer(t, Options{Metrics: metrics})
	if code, _, b := get(t, open.URL+"/metrics"); code != http.StatusOK || string(b) != "ferry_up 1\n" {
		t.Errorf("open /metrics: %d %s", code, b)
	}
}

// New binds and loads the key pair up front; Serve speaks TLS when
// configured and stops when its context ends.
func TestServeTLSAndShutdown(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	if _, err := New(Options{Listen: "127.0.0.1:0", TLSCert: cert, TLSKey: filepath.Join(dir, "missing.key"), Engine: engine()}); err == nil {
		t.Error("a missing key was accepted")
	}
	s, err := New(Options{Listen: "127.0.0.1:0", TLSCert: cert, TLSKey: key, Engine: engine()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Listen: s.Addr().String(), Engine: engine()}); err == nil {
		t.Error("a second server bound the same address")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	url := "https://" + s.Addr().String() + "/v1/migrations"
	var resp *http.Response
	for range 50 {
		if resp, err = c.Get(url); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil {
		t.Errorf("over TLS: %d %v", resp.StatusCode, resp.TLS)
	}
	if r, err := http.Get("http://" + s.Addr().String() + "/v1/migrations"); err == nil {
		r.Body.Close()
		if r.StatusCode == http.StatusOK {
			t.Error("plain HTTP answered on the TLS listener")
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

func selfSigned(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ferryd"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	cert, key = filepath.Join(dir, "status.crt"), filepath.Join(dir, "status.key")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, key
}
