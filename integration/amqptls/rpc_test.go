//go:build integration

package amqptls

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/integration/testlog"

	"opendev.org/x/ferry/rpc/oslo"
)

// tlsOptions are the ssl options both sides use: the run's CA, the client
// certificate the broker requires.
func tlsOptions() oslo.TLSOptions {
	return oslo.TLSOptions{Enabled: true, CAFile: ca.File, CertFile: client.Cert, KeyFile: client.Key}
}

// novaConf writes the nova.conf-style file the Python peer reads: the
// transport URL and [oslo_messaging_rabbit]'s ssl options, with host-name
// verification on so that oslo checks what ferry checks.
func novaConf(t *testing.T, o oslo.TLSOptions) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "nova.conf")
	s := fmt.Sprintf("[DEFAULT]\ntransport_url = %s\n\n[oslo_messaging_rabbit]\nssl = %t\nssl_ca_file = %s\nssl_cert_file = %s\nssl_key_file = %s\n"+
		"ssl_enforce_hostname_verification = true\n", url("127.0.0.1"), o.Enabled, o.CAFile, o.CertFile, o.KeyFile)
	if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func mustURL(t *testing.T, host string) oslo.TransportURL {
	t.Helper()
	u, err := oslo.ParseTransportURL(url(host))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func echoServer(t *testing.T, o oslo.ServerOptions) *oslo.Server {
	t.Helper()
	echo := oslo.HandlerFunc(func(_ context.Context, r *oslo.Request) (any, error) {
		var user string
		_ = json.Unmarshal(r.Context["user"], &user)
		return map[string]any{"args": r.Args, "peer": "ferry", "context_user": user}, nil
	})
	srv, err := oslo.NewServer(o, &oslo.Dispatcher{Endpoints: []oslo.Endpoint{{Version: "6.4", Methods: map[string]oslo.Handler{"echo": echo}}}})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// ferry's Server, over TLS with a client certificate, answers a call from
// oslo.messaging configured with the same nova.conf options. The node has
// no plain listener and requires a client certificate, so every
// connection either side made is TLS with one; the broker's
// list_connections says so of ferry's.
func TestFerryServerPythonClient(t *testing.T) {
	srv := echoServer(t, oslo.ServerOptions{URL: mustURL(t, "127.0.0.1"), TLS: tlsOptions(), Server: "tls-go", Log: testLog(t)})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background()) }() // owner: the test (Shutdown below)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-served; !errors.Is(err, oslo.ErrServerClosed) {
			t.Errorf("Serve = %v, want ErrServerClosed", err)
		}
	}()
	select {
	case <-srv.Ready():
	case err := <-served:
		t.Fatalf("Serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not consuming after 30s")
	}
	out := py(t, "client", novaConf(t, tlsOptions()), "tls-go")
	var a struct {
		Result map[string]any `json:"result"`
		Error  map[string]any `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &a); err != nil {
		t.Fatalf("python client: %v: %s", err, out)
	}
	if a.Error != nil || a.Result["peer"] != "ferry" || a.Result["context_user"] != "u-tls" {
		t.Fatalf("python client's call over TLS: %s", out)
	}
	// The broker's own view: ferry's connections are TLS and carry the
	// client certificate's subject.
	got := connections(t)
	n := 0
	for _, line := range strings.Split(got, "\n") {
		if !strings.Contains(line, `{"product","ferry"}`) {
			continue
		}
		n++
		if f := strings.Split(line, "\t"); len(f) != 4 || f[1] != "true" || !strings.HasPrefix(f[2], "tlsv1.") || f[3] != "CN=ferry-test" {
			t.Errorf("ferry's connection is not TLS with the client certificate: %q", line)
		}
	}
	if n == 0 {
		t.Errorf("the broker lists no connection of ferry's:\n%s", got)
	}
}

// ferry's Client calls an oslo.messaging server over TLS.
func TestFerryClientPythonServer(t *testing.T) {
	startPy(t, "server", novaConf(t, tlsOptions()), "tls-py")
	c, err := oslo.NewClient(context.Background(), oslo.ClientOptions{URL: mustURL(t, "127.0.0.1"), TLS: tlsOptions(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Call(ctx, oslo.Target{Topic: "compute", Server: "tls-py", Version: "6.4"}, "echo", map[string]any{"over": "tls"},
		oslo.CallOptions{Timeout: 20 * time.Second, Context: json.RawMessage(`{"user": "u-go"}`)})
	if err != nil {
		t.Fatalf("call over TLS: %v", err)
	}
	var got map[string]any
	if err := json.Unmarshal(res, &got); err != nil || got["peer"] != "oslo.messaging" || got["context_user"] != "u-go" {
		t.Fatalf("reply %s (%v)", res, err)
	}
}

// connections is what the node says of its AMQP connections.
func connections(t *testing.T) string {
	t.Helper()
	out, err := node.Ctl(context.Background(), "-q", "list_connections", "client_properties", "ssl", "ssl_protocol", "peer_cert_subject")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// startPy runs tlspeer.py server until the test ends (its stdin closes)
// and waits for its READY.
func startPy(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("/usr/bin/python3", append([]string{filepath.Join(here(), "py", "tlspeer.py")}, args...)...)
	cmd.Stderr = testlog.Writer(t)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }() // owner: the Cleanup below
	t.Cleanup(func() {
		in.Close()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan bool, 1)
	go func() { // ends at READY or when the peer exits
		s := bufio.NewScanner(out)
		ready <- s.Scan() && s.Text() == "READY"
		for s.Scan() {
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("python server ended before READY")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("python server not READY after 60s")
	}
}

// py runs tlspeer.py to its end and returns its output.
func py(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", append([]string{filepath.Join(here(), "py", "tlspeer.py")}, args...)...)
	cmd.Stderr = testlog.Writer(t)
	t0 := time.Now()
	out, err := cmd.Output()
	t.Logf("tlspeer.py %s: %s", args[0], time.Since(t0).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("tlspeer.py %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func testLog(t *testing.T) *logrus.Entry { return testlog.New(t, logrus.DebugLevel) }

// The notifier, ferryd's other AMQP user, publishes over TLS too: the
// notification lands in notifications.info, as the admin connection (TLS
// as well) reads it.
func TestNotifierOverTLS(t *testing.T) {
	n, err := oslo.NewNotifier(oslo.NotifierOptions{URL: mustURL(t, "127.0.0.1"), TLS: tlsOptions(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	note := oslo.Notification{MessageID: "6f1c2a4e-2b1d-4f7a-9a55-0c3f1e2d4b6a", PublisherID: "compute.tls-go",
		EventType: "compute.instance.live_migration._post.start", Priority: "INFO", Payload: json.RawMessage(`{"over":"tls"}`),
		Timestamp: time.Now().UTC()}
	if err := n.Notify(ctx, "notifications", true, note); err != nil {
		t.Fatalf("Notify over TLS: %v", err)
	}
	a, err := oslo.DialAdmin(ctx, oslo.AdminOptions{URL: mustURL(t, "127.0.0.1"), TLS: tlsOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	q, err := a.Inspect(ctx, "notifications.info")
	if err != nil || q.Messages != 1 {
		t.Errorf("notifications.info: %+v %v, want the one notification", q, err)
	}
}
