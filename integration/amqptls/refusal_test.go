//go:build integration

package amqptls

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
)

// A broker ferry must not trust ends Serve with a configuration error that
// says what was wrong, before anything is consumed; the node answered
// each time (the same listener serves TestFerryServerPythonClient).
func TestServeRefusesTheBroker(t *testing.T) {
	other := tlsOptions()
	other.CAFile = otherCA.File
	for _, tc := range []struct {
		name, host string
		o          oslo.TLSOptions
		want       string
	}{
		{"untrusted CA", "127.0.0.1", other, "the broker's certificate for 127.0.0.1 is not trusted by ssl_ca_file " + otherCA.File},
		{"wrong server name", "127.0.0.2", tlsOptions(), "the broker's certificate does not name 127.0.0.2, the host in transport_url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := echoServer(t, oslo.ServerOptions{URL: mustURL(t, tc.host), TLS: tc.o, Server: "tls-refused", Log: testLog(t)})
			served := make(chan error, 1)
			go func() { served <- srv.Serve(context.Background()) }() // owner: the test (it ends by itself)
			select {
			case err := <-served:
				if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("Serve = %v\nwant ErrInvalidArgument saying %q", err, tc.want)
				}
				t.Logf("Serve: %v", err)
			case <-srv.Ready():
				t.Fatal("serving a broker it must refuse")
			case <-time.After(30 * time.Second):
				_ = srv.Shutdown(context.Background())
				t.Fatalf("Serve still retrying after 30s; want it to stop: %v", <-served)
			}
		})
	}
}

// The node requires a client certificate: without ssl_cert_file the dial
// fails (so the tests above and TestFerryServerPythonClient prove that
// ferry presents the one configured).
func TestBrokerRequiresClientCertificate(t *testing.T) {
	o := tlsOptions()
	o.CertFile, o.KeyFile = "", ""
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := oslo.DialAdmin(ctx, oslo.AdminOptions{URL: mustURL(t, "127.0.0.1"), TLS: o})
	if err == nil {
		a.Close()
		t.Fatal("the node took a TLS connection without a client certificate")
	}
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "the broker may require a client certificate") {
		t.Errorf("DialAdmin without a client certificate = %v, want ErrUnavailable with a hint", err)
	}
	t.Logf("without a client certificate: %v", err)
	if a, err := oslo.DialAdmin(ctx, oslo.AdminOptions{URL: mustURL(t, "127.0.0.1"), TLS: tlsOptions()}); err != nil {
		t.Errorf("DialAdmin with it: %v", err)
	} else {
		a.Close()
	}
}

// ferrydBin is cmd/ferryd, built once per run into the run's directory.
var ferrydBin string

func buildFerryd(t *testing.T) string {
	t.Helper()
	if ferrydBin != "" {
		return ferrydBin
	}
	out := filepath.Join(runDir, "ferryd")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", out, "./cmd/ferryd")
	cmd.Dir = filepath.Join(here(), "..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/ferryd: %v\n%s", err, b)
	}
	ferrydBin = out
	return out
}

// writeConfig writes a native-mode ferryd.yaml for host tls-ferryd with
// transportURL and the given oslo_messaging_rabbit lines (no libvirtd: it
// is not needed to serve or to refuse).
func writeConfig(t *testing.T, transportURL, osloSection string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ferryd.yaml")
	yml := fmt.Sprintf(`version: 1
host: tls-ferryd
transport_url: %q
libvirt_uri: qemu+unix:///system?socket=%s/no-libvirt-sock
instances_path: %s/instances
state_dir: %s/state
oslo_messaging_rabbit:
%s
placement:
  auth_type: none
log:
  format: text
`, transportURL, dir, dir, dir, osloSection)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// ferryd runs the binary with writeConfig's file until it exits (at most
// within, counted from the start of the process, not of its build), and
// returns its exit code and output.
func ferryd(t *testing.T, transportURL, osloSection string, within time.Duration) (int, string) {
	t.Helper()
	cfg := writeConfig(t, transportURL, osloSection)
	bin := buildFerryd(t) // before the clock starts: a cold build cache takes longer than within
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--config", cfg)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err := cmd.Run()
	t.Logf("ferryd exited after %s: %v\n%s", time.Since(t0).Round(time.Millisecond), err, out.String())
	if ctx.Err() != nil {
		t.Fatalf("ferryd still running after %s", within)
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

// ferryd refuses to start with an ssl_ca_file that is not there, naming
// it, before it dials anything (the URL's port has no listener).
func TestFerrydRefusesMissingCAFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "rabbit-ca.pem")
	code, out := ferryd(t, "rabbit://guest:guest@127.0.0.1:1/", "  ssl: true\n  ssl_ca_file: "+missing, 30*time.Second)
	if code == 0 || !strings.Contains(out, "oslo_messaging_rabbit.ssl_ca_file "+missing+": no such file or directory") {
		t.Errorf("exit %d, want non-zero naming %s:\n%s", code, missing, out)
	}
	if strings.Contains(out, "starting") {
		t.Errorf("ferryd started:\n%s", out)
	}
}

// ferryd pointed at the node with a CA that did not sign its certificate
// stops, non-zero, saying so, and never consumes.
func TestFerrydRefusesUntrustedBroker(t *testing.T) {
	code, out := ferryd(t, url("127.0.0.1"), fmt.Sprintf("  ssl: true\n  ssl_ca_file: %s\n  ssl_cert_file: %s\n  ssl_key_file: %s",
		otherCA.File, client.Cert, client.Key), 60*time.Second)
	if code == 0 || !strings.Contains(out, "not trusted by ssl_ca_file "+otherCA.File) {
		t.Errorf("exit %d, want non-zero naming %s:\n%s", code, otherCA.File, out)
	}
	if strings.Contains(out, "serving: every queue consumed") {
		t.Errorf("ferryd served a broker it must refuse:\n%s", out)
	}
}

// lockedBuffer is a process's output read while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// ferryd with ssl_enforce_fips_mode starts only in Go's FIPS 140-3 mode,
// and in it serves over TLS: a call from oslo.messaging gets ferryd's
// answer (NoSuchMethod for a method Nova's compute API lacks).
func TestFerrydFIPSMode(t *testing.T) {
	section := fmt.Sprintf("  ssl: true\n  ssl_ca_file: %s\n  ssl_cert_file: %s\n  ssl_key_file: %s\n  ssl_enforce_fips_mode: true",
		ca.File, client.Cert, client.Key)
	if code, out := ferryd(t, url("127.0.0.1"), section, 30*time.Second); code != 2 ||
		!strings.Contains(out, "oslo_messaging_rabbit.ssl_enforce_fips_mode: Go's FIPS 140-3 mode is off") {
		t.Errorf("without GODEBUG=fips140=on: exit %d, want 2 naming ssl_enforce_fips_mode:\n%s", code, out)
	}

	cmd := exec.Command(buildFerryd(t), "--config", writeConfig(t, url("127.0.0.1"), section))
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=on")
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // owner: the test (SIGTERM below)
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("ferryd after SIGTERM: %v", err)
			}
		case <-time.After(40 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("ferryd did not stop within 40s of SIGTERM: %v", <-exited)
		}
		t.Logf("ferryd (GODEBUG=fips140=on):\n%s", out.String())
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "serving: every queue consumed") {
		select {
		case err := <-exited:
			t.Fatalf("ferryd exited: %v\n%s", err, out.String())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("ferryd not serving after 30s:\n%s", out.String())
		}
	}
	if !strings.Contains(out.String(), "broker_tls=true") {
		t.Errorf("ferryd's start line does not say the broker is dialled over TLS:\n%s", out.String())
	}
	answer := py(t, "client", novaConf(t, tlsOptions()), "tls-ferryd")
	if !strings.Contains(answer, `"error"`) || strings.Contains(answer, "MessagingTimeout") {
		t.Errorf("oslo.messaging's call to ferryd over TLS in FIPS mode: %s, want ferryd's failure reply", answer)
	}
	t.Logf("ferryd's answer: %s", answer)
}
