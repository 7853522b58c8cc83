//go:build integration

// Package statusapi proves ferryd's status API and /metrics on the real
// binary: a ferryd whose libvirtd does not exist (ferryd starts without
// it: nothing at start dials libvirt) against RabbitMQ in a virtual host of
// its own, answering an RPC, refusing a live migration it cannot plan, and
// showing both on /metrics and /v1/migrations; then it stops on SIGTERM
// and the port closes. No lab, no guest.
package statusapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/rabbit"
	"opendev.org/x/ferry/rpc/oslo"
)

const (
	host     = "status-test-host"
	instance = "6a3e5a7e-0000-4000-8000-0000000000c1"
	migUUID  = "5f3c5a7e-0000-4000-8000-0000000000c2"
)

func here() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Dir(self)
}

func buildFerryd(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ferryd")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/ferryd")
	cmd.Dir = filepath.Join(here(), "..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build ferryd: %v\n%s", err, b)
	}
	return out
}

// logLines reads ferryd's JSON log as it grows.
type logLines struct {
	path string
}

func (l logLines) find(t *testing.T, within time.Duration, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		f, err := os.Open(l.path)
		if err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				var e map[string]any
				if json.Unmarshal(sc.Bytes(), &e) == nil && match(e) {
					f.Close()
					return e
				}
			}
			f.Close()
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(l.path)
	t.Fatalf("no such log line within %s; the log:\n%s", within, b)
	return nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func object(name string, data map[string]any) map[string]any {
	return map[string]any{"nova_object.name": name, "nova_object.namespace": "nova", "nova_object.version": "1.0",
		"nova_object.data": data, "nova_object.changes": []string{}}
}

func TestFerrydStatusAPI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := rabbit.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	vhost := fmt.Sprintf("ferry-statusapi-%d", os.Getpid())
	drop, err := rabbit.NewVHost(ctx, b, vhost)
	if err != nil {
		t.Fatalf("a virtual host of the test's own on the broker: %v", err)
	}
	defer drop()
	bin := buildFerryd(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ferryd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 1
host: %s
transport_url: %q
libvirt_uri: qemu+unix:///system?socket=%s
instances_path: %s
state_dir: %s
peers:
  other-host:
    management: 127.0.0.1
oslo_messaging_rabbit:
  rpc_response_timeout: 5s
placement:
  auth_type: none
log:
  level: debug
  format: json
status:
  listen: 127.0.0.1:0
`, host, b.URL(vhost), filepath.Join(dir, "no-libvirt-sock"), filepath.Join(dir, "instances"), filepath.Join(dir, "state"))), 0o600)
	os.MkdirAll(filepath.Join(dir, "instances"), 0o755)
	logPath := filepath.Join(dir, "ferryd.log")
	lf, _ := os.Create(logPath)
	defer lf.Close()
	cmd := exec.Command(bin, "--config", cfg)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // owner: the test (waits below or in the cleanup)
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	}()
	logs := logLines{logPath}
	e := logs.find(t, time.Minute, func(e map[string]any) bool { return e["msg"] == "status API serving" })
	base := "http://" + e["listen"].(string)
	logs.find(t, time.Minute, func(e map[string]any) bool { return e["msg"] == "serving: every queue consumed" })

	// Nothing yet: an empty list, a 404, metrics at zero.
	if code, body := get(t, base+"/v1/migrations"); code != 200 || !strings.Contains(body, `"migrations": []`) {
		t.Errorf("GET /v1/migrations at start: %d %s", code, body)
	}
	if code, _ := get(t, base+"/v1/migrations/"+migUUID); code != 404 {
		t.Errorf("GET an unknown migration: %d, want 404", code)
	}
	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{`ferry_migrations_total{outcome="completed"} 0`, `ferry_migrations_in_flight{role="source"} 0`,
		`ferry_migrations_in_flight{role="destination"} 0`, "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics at start lacks %q", want)
		}
	}

	// An RPC, a made-up one, and a live migration ferryd cannot plan (no libvirtd).
	u, err := oslo.ParseTransportURL(b.URL(vhost))
	if err != nil {
		t.Fatal(err)
	}
	c, err := oslo.NewClient(ctx, oslo.ClientOptions{URL: u, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	target := oslo.Target{Topic: "compute", Server: host, Version: "6.0"}
	rctx := json.RawMessage(`{"request_id": "req-statusapi-1", "global_request_id": "req-global-statusapi", "auth_token": "gAAAA-not-logged"}`)
	if _, err := c.Call(ctx, target, "get_host_uptime", map[string]any{}, oslo.CallOptions{Context: rctx}); err != nil {
		t.Fatalf("get_host_uptime: %v", err)
	}
	if _, err := c.Call(ctx, target, "made_up_method", map[string]any{}, oslo.CallOptions{}); err == nil {
		t.Error("a made-up method was answered")
	}
	args := map[string]any{
		"instance":        object("Instance", map[string]any{"uuid": instance, "host": host}),
		"migration":       object("Migration", map[string]any{"uuid": migUUID, "id": 41, "status": "accepted"}),
		"migrate_data":    object("LibvirtLiveMigrateData", map[string]any{"is_shared_instance_path": false, "block_migration": false}),
		"dest":            "other-host",
		"block_migration": false,
	}
	if err := c.Cast(ctx, target, "live_migration", args, oslo.CallOptions{Context: rctx}); err != nil {
		t.Fatal(err)
	}
	logs.find(t, time.Minute, func(e map[string]any) bool { return e["msg"] == "live_migration refused" })

	var one struct {
		ID, Phase, Role, Reason, RequestID string
		GlobalRequestID                    string `json:"global_request_id"`
	}
	code, body := get(t, base+"/v1/migrations/"+migUUID)
	if err := json.Unmarshal([]byte(body), &one); code != 200 || err != nil {
		t.Fatalf("GET the refused migration: %d %v %s", code, err, body)
	}
	if one.ID != migUUID || one.Phase != "error" || one.Role != "source" || one.Reason == "" {
		t.Errorf("the refused migration: %s", body)
	}
	if !strings.Contains(body, `"request_id": "req-statusapi-1"`) || one.GlobalRequestID != "req-global-statusapi" {
		t.Errorf("the refused migration lacks the request's ids: %s", body)
	}
	if strings.Contains(body, "gAAAA") {
		t.Errorf("the status API shows the token: %s", body)
	}
	_, metrics = get(t, base+"/metrics")
	for _, want := range []string{
		`ferry_migrations_total{outcome="error"} 1`,
		`ferry_rpc_requests_total{kind="call",method="get_host_uptime",outcome="ok"} 1`,
		`ferry_rpc_requests_total{kind="call",method="other",outcome="error"} 1`,
		`ferry_rpc_requests_total{kind="cast",method="live_migration",outcome="ok"} 1`,
		`ferry_libvirt_calls_total{call="dial",result="unavailable"}`,
		`ferry_rpc_duration_seconds_count{kind="call",method="get_host_uptime"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(metrics, "made_up_method") || strings.Contains(metrics, migUUID) || strings.Contains(metrics, instance) {
		t.Error("/metrics carries a name from the wire or a migration's id")
	}
	// Every log line naming the migration carries the request's ids; none the token.
	raw, _ := os.ReadFile(logPath)
	if strings.Contains(string(raw), "gAAAA") {
		t.Error("the token is in ferryd's log")
	}
	n := 0
	for _, l := range strings.Split(string(raw), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(l), &e) != nil || e["migration_id"] != migUUID {
			continue
		}
		n++
		if e["request_id"] != "req-statusapi-1" || e["global_request_id"] != "req-global-statusapi" {
			t.Errorf("a log line of the migration without the request's ids: %s", l)
		}
	}
	if n == 0 {
		t.Error("no log line names the migration")
	}

	// SIGTERM: ferryd stops, the status API with it.
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("ferryd after SIGTERM: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("ferryd did not stop within 60s of SIGTERM")
	}
	if conn, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), time.Second); err == nil {
		conn.Close()
		t.Error("the status port still accepts connections after ferryd stopped")
	}
}

// A listen beyond loopback without TLS and Keystone stops ferryd at start,
// every missing piece named, before anything is served.
func TestFerrydRefusesOpenListen(t *testing.T) {
	bin := buildFerryd(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ferryd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 1
host: %s
transport_url: "rabbit://guest:guest@127.0.0.1:5672/unused"
state_dir: %s
placement:
  auth_type: none
status:
  listen: 0.0.0.0:9779
`, host, filepath.Join(dir, "state"))), 0o600)
	out, err := exec.Command(bin, "--config", cfg).CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 2 {
		t.Fatalf("ferryd with an open listen: %v, want exit 2\n%s", err, out)
	}
	for _, want := range []string{"tls_cert_file and tls_key_file are required", "keystone (auth_type password) is required"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the refusal lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		t.Error("ferryd made its state directory before refusing")
	}
}

// SIGTERM while ferryd still waits for its broker (down at start) is a
// clean stop, exit 0, within the shutdown bound (issue 12, item 11: it
// exited 1).
func TestFerrydSIGTERMWhileBrokerDown(t *testing.T) {
	bin := buildFerryd(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ferryd.yaml")
	// Port 1 on loopback: nothing listens, every dial is refused.
	os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 1
host: %s
transport_url: "rabbit://guest:guest@127.0.0.1:1/"
libvirt_uri: qemu+unix:///system?socket=%s
instances_path: %s
state_dir: %s
placement:
  auth_type: none
log:
  format: json
status:
  listen: 127.0.0.1:0
`, host, filepath.Join(dir, "no-libvirt-sock"), filepath.Join(dir, "instances"), filepath.Join(dir, "state"))), 0o600)
	os.MkdirAll(filepath.Join(dir, "instances"), 0o755)
	logPath := filepath.Join(dir, "ferryd.log")
	lf, _ := os.Create(logPath)
	defer lf.Close()
	cmd := exec.Command(bin, "--config", cfg)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // owner: the test (waits below)
	logLines{logPath}.find(t, 30*time.Second, func(m map[string]any) bool { return m["msg"] == "status API serving" })
	logLines{logPath}.find(t, 30*time.Second, func(m map[string]any) bool { // its server is retrying the broker
		msg, _ := m["msg"].(string)
		return m["component"] == "oslo-server" && strings.HasPrefix(msg, "consumer: broker unreachable")
	})
	t0 := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			b, _ := os.ReadFile(logPath)
			t.Errorf("ferryd after SIGTERM while its broker is down: %v, want exit 0\n%s", err, b)
		}
		t.Logf("stopped %.1fs after SIGTERM", time.Since(t0).Seconds())
	case <-time.After(40 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatal("ferryd did not stop within 40s of SIGTERM")
	}
}
