package ferrylab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"opendev.org/x/ferry/integration/lab"
)

// Placement is a real OpenStack Placement (Debian's python3-placement,
// SQLite, auth_strategy noauth2) on loopback, with one resource provider per
// lab host. The tests play the conductor's part in it (Claim) with plain
// HTTP, independent of ferry's own client.
type Placement struct {
	URL  string
	RPs  map[string]string // host name → resource provider uuid
	proc *lab.Proc
	hc   http.Client
}

func startPlacement(ctx context.Context, l *lab.Lab) (*Placement, error) {
	dir := filepath.Join(lab.WorkDir, "placement")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	_ = os.Remove(filepath.Join(dir, "placement.db"))
	conf := fmt.Sprintf("[DEFAULT]\nlog_file = %s\n[api]\nauth_strategy = noauth2\n[placement_database]\nconnection = sqlite:///%s\n",
		filepath.Join(dir, "placement-api.log"), filepath.Join(dir, "placement.db"))
	if err := os.WriteFile(filepath.Join(dir, "placement.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	dbSync := exec.CommandContext(ctx, "placement-manage", "--config-file", filepath.Join(dir, "placement.conf"), "db", "sync")
	if out, err := dbSync.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("placement-manage db sync: %w: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	// In the first host's namespaces only so that the lab records the
	// process and a later run reaps it; it listens in the root network
	// namespace, like ferryd and RabbitMQ.
	p, err := l.StartIn(l.Hosts[0], filepath.Join(dir, "stdout.log"), "env", "OS_PLACEMENT_CONFIG_DIR="+dir,
		"placement-api", "--host", "127.0.0.1", "--port", fmt.Sprint(port))
	if err != nil {
		return nil, err
	}
	pl := &Placement{URL: fmt.Sprintf("http://127.0.0.1:%d", port), RPs: map[string]string{}, proc: p, hc: http.Client{Timeout: 30 * time.Second}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := pl.do("GET", "/", nil); err == nil {
			break
		}
		select {
		case <-p.Done():
			b, _ := os.ReadFile(filepath.Join(dir, "stdout.log"))
			return nil, fmt.Errorf("placement-api exited: %s", b)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			pl.Close()
			return nil, fmt.Errorf("placement-api not answering on %s after 60s", pl.URL)
		}
	}
	for i, h := range l.Hosts {
		rp := fmt.Sprintf("7e570000-0000-4000-8000-%012d", i+1)
		if _, err := pl.do("POST", "/resource_providers", map[string]any{"name": h.Hostname, "uuid": rp}); err != nil {
			pl.Close()
			return nil, err
		}
		inv := map[string]any{"resource_provider_generation": 0, "inventories": map[string]any{
			"VCPU": map[string]any{"total": 8}, "MEMORY_MB": map[string]any{"total": 16384}, "DISK_GB": map[string]any{"total": 100}}}
		if _, err := pl.do("PUT", "/resource_providers/"+rp+"/inventories", inv); err != nil {
			pl.Close()
			return nil, err
		}
		pl.RPs[h.Hostname] = rp
	}
	return pl, nil
}

// Close stops placement-api.
func (p *Placement) Close() {
	if p.proc != nil {
		_ = p.proc.Signal(syscall.SIGTERM)
		_ = p.proc.Wait(10 * time.Second)
	}
}

// Flavor is what the lab's instances claim.
var Flavor = map[string]int{"VCPU": 1, "MEMORY_MB": 384, "DISK_GB": 1}

// Claim does the conductor's part before it casts live_migration: the
// instance's allocation on the source moves to the migration, and the
// instance claims the destination.
func (p *Placement) Claim(instance, migration, source, dest string) error {
	body := map[string]any{
		migration: map[string]any{"allocations": map[string]any{p.RPs[source]: map[string]any{"resources": Flavor}},
			"project_id": "lab-project", "user_id": "lab-user", "consumer_generation": nil},
	}
	// The instance's consumer generation: absent (null) while it holds nothing.
	raw, err := p.do("GET", "/allocations/"+instance, nil)
	if err != nil {
		return err
	}
	var cur struct {
		Gen *int `json:"consumer_generation"`
	}
	if err := json.Unmarshal(raw, &cur); err != nil {
		return err
	}
	body[instance] = map[string]any{"allocations": map[string]any{p.RPs[dest]: map[string]any{"resources": Flavor}},
		"project_id": "lab-project", "user_id": "lab-user", "consumer_generation": cur.Gen}
	_, err = p.do("POST", "/allocations", body)
	return err
}

// Allocations returns a consumer's allocations by host name.
func (p *Placement) Allocations(consumer string) (map[string]map[string]int, error) {
	raw, err := p.do("GET", "/allocations/"+consumer, nil)
	if err != nil {
		return nil, err
	}
	var a struct {
		Allocations map[string]struct {
			Resources map[string]int `json:"resources"`
		} `json:"allocations"`
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, err
	}
	out := map[string]map[string]int{}
	for rp, v := range a.Allocations {
		name := rp
		for h, u := range p.RPs {
			if u == rp {
				name = h
			}
		}
		out[name] = v.Resources
	}
	return out, nil
}

func (p *Placement) do(method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, p.URL+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("x-auth-token", "admin")
	req.Header.Set("openstack-api-version", "placement 1.28")
	req.Header.Set("content-type", "application/json")
	resp, err := p.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return nil, fmt.Errorf("placement %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
