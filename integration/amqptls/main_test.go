//go:build integration

// Package amqptls proves AMQP over TLS against real peers: a RabbitMQ node
// of the package's own with a TLS listener on loopback (the shared broker
// is left alone), certificates from a CA made for the run, Debian's
// python3-oslo.messaging configured with the same nova.conf ssl options on
// the other side of each RPC, and ferryd's own binary refusing what it
// must refuse.
package amqptls

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/rabbit"
	"opendev.org/x/ferry/internal/testpki"
)

// The run's PKI and broker.
var (
	ca, otherCA *testpki.CA
	client      testpki.Pair // signed by ca: the broker requires one
	node        *rabbit.Node
	port        int    // the TLS listener, on 127.0.0.1 and 127.0.0.2; the certificate names 127.0.0.1 only
	runDir      string // removed at the end of the run
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ferry-amqptls-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	runDir = dir
	defer os.RemoveAll(dir)
	if err := setup(dir); err != nil {
		fmt.Fprintln(os.Stderr, "amqptls:", err)
		return 1
	}
	defer func() {
		t0 := time.Now()
		if err := node.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "amqptls:", err)
		}
		fmt.Fprintf(os.Stderr, "amqptls: node %s stopped in %s\n", node.Name, time.Since(t0).Round(time.Millisecond))
	}()
	return m.Run()
}

func setup(dir string) error {
	pki := filepath.Join(dir, "pki")
	if err := os.Mkdir(pki, 0o755); err != nil {
		return err
	}
	var err error
	if ca, err = testpki.NewCA(pki, "ca"); err != nil {
		return err
	}
	if otherCA, err = testpki.NewCA(pki, "other-ca"); err != nil {
		return err
	}
	server, err := ca.Server("broker", "127.0.0.1")
	if err != nil {
		return err
	}
	if client, err = ca.Client("client", "ferry-test"); err != nil {
		return err
	}
	if port, err = rabbit.FreePort(); err != nil {
		return err
	}
	conf := fmt.Sprintf(`listeners.tcp = none
listeners.ssl.1 = 127.0.0.1:%[1]d
listeners.ssl.2 = 127.0.0.2:%[1]d
ssl_options.cacertfile = %[2]s
ssl_options.certfile = %[3]s
ssl_options.keyfile = %[4]s
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
`, port, ca.File, server.Cert, server.Key)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t0 := time.Now()
	if node, err = rabbit.StartNode(ctx, filepath.Join(dir, "node"), fmt.Sprintf("ferry-tls-%d", os.Getpid()), conf); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "amqptls: node %s serving TLS on 127.0.0.1:%d after %s\n", node.Name, port, time.Since(t0).Round(time.Millisecond))
	return nil
}

func here() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Dir(self)
}

// url is the transport URL of the private node at host (127.0.0.1 is the
// name in its certificate; 127.0.0.2 reaches the same listener under
// another name).
func url(host string) string {
	return fmt.Sprintf("rabbit://guest:guest@%s:%d/", host, port)
}
