package oslo

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/internal/testpki"
	"opendev.org/x/ferry/pkg/errdefs"
)

// The URL's query overrides the configured options, as oslo's
// ConfigOptsProxy does; an amqps scheme turns TLS on; a boolean oslo would
// refuse is refused.
func TestTLSOptionsFromURL(t *testing.T) {
	base := TLSOptions{CAFile: "/etc/ca.pem", Version: "TLSv1_2"}
	for _, tc := range []struct {
		url     string
		want    TLSOptions
		wantErr string
	}{
		{"rabbit://h/", base, ""},
		{"rabbit://h/?ssl=1", TLSOptions{Enabled: true, CAFile: "/etc/ca.pem", Version: "TLSv1_2"}, ""},
		{"rabbit://h/?ssl=On&ssl_ca_file=/q/ca.pem&ssl_version=SSLv23", TLSOptions{Enabled: true, CAFile: "/q/ca.pem", Version: "SSLv23"}, ""},
		{"rabbit://h/?ssl_cert_file=/c.pem&ssl_key_file=/c.key&ssl_enforce_fips_mode=yes",
			TLSOptions{CAFile: "/etc/ca.pem", CertFile: "/c.pem", KeyFile: "/c.key", Version: "TLSv1_2", EnforceFIPS: true}, ""},
		{"amqps://h/", TLSOptions{Enabled: true, CAFile: "/etc/ca.pem", Version: "TLSv1_2"}, ""},
		{"kombu+amqps://h/", TLSOptions{Enabled: true, CAFile: "/etc/ca.pem", Version: "TLSv1_2"}, ""},
		{"amqps://h/?ssl=false", base, ""}, // the query wins, as it does over nova.conf
		{"rabbit://h/?ssl=maybe", base, `?ssl=maybe: "maybe" is not a boolean`},
	} {
		u, err := ParseTransportURL(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		got, err := u.TLSOptions(base)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want %q", tc.url, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.url, err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s: TLSOptions (-want +got):\n%s", tc.url, diff)
		}
	}
}

type pki struct {
	dir             string
	ca, otherCA     *testpki.CA
	server, client  testpki.Pair
	notPEM, missing string
	unreadable      string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	p := pki{dir: t.TempDir()}
	var err error
	if p.ca, err = testpki.NewCA(p.dir, "ca"); err != nil {
		t.Fatal(err)
	}
	if p.otherCA, err = testpki.NewCA(p.dir, "other-ca"); err != nil {
		t.Fatal(err)
	}
	if p.server, err = p.ca.Server("server", "localhost", "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if p.client, err = p.ca.Client("client", "ferry"); err != nil {
		t.Fatal(err)
	}
	p.notPEM = filepath.Join(p.dir, "not.pem")
	p.missing = filepath.Join(p.dir, "missing.pem")
	p.unreadable = filepath.Join(p.dir, "unreadable") // a directory: unreadable as a file, for root too
	if err := os.WriteFile(p.notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p.unreadable, 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

// Check lists every problem, each naming its option and file.
func TestTLSOptionsCheck(t *testing.T) {
	p := newPKI(t)
	for _, tc := range []struct {
		name string
		o    TLSOptions
		want []string // one substring per problem, in order
	}{
		{"off: nothing is read", TLSOptions{CAFile: p.missing, KeyFile: p.missing}, nil},
		{"system roots", TLSOptions{Enabled: true}, nil},
		{"CA and client pair", TLSOptions{Enabled: true, CAFile: p.ca.File, CertFile: p.client.Cert, KeyFile: p.client.Key, Version: "tlsv1_2"}, nil},
		{"missing CA", TLSOptions{Enabled: true, CAFile: p.missing}, []string{"ssl_ca_file " + p.missing + ": no such file or directory"}},
		{"unreadable CA", TLSOptions{Enabled: true, CAFile: p.unreadable}, []string{"ssl_ca_file " + p.unreadable + ": is a directory"}},
		{"CA not PEM", TLSOptions{Enabled: true, CAFile: p.notPEM}, []string{"ssl_ca_file " + p.notPEM + ": holds no PEM certificate"}},
		{"key without cert", TLSOptions{Enabled: true, KeyFile: p.client.Key}, []string{"ssl_key_file " + p.client.Key + ": set without ssl_cert_file"}},
		{"cert without key", TLSOptions{Enabled: true, CertFile: p.client.Cert}, []string{"ssl_cert_file " + p.client.Cert + ": set without ssl_key_file"}},
		{"both files missing", TLSOptions{Enabled: true, CertFile: p.missing, KeyFile: p.unreadable},
			[]string{"ssl_cert_file " + p.missing + ": no such file", "ssl_key_file " + p.unreadable + ": is a directory"}},
		{"not a pair", TLSOptions{Enabled: true, CertFile: p.client.Cert, KeyFile: p.server.Key},
			[]string{"ssl_cert_file " + p.client.Cert + " / ssl_key_file " + p.server.Key + ": tls: private key does not match public key"}},
		{"old version", TLSOptions{Enabled: true, Version: "TLSv1"}, []string{"ssl_version TLSv1: ferry speaks TLS 1.2 and 1.3 only"}},
		{"unknown version", TLSOptions{Enabled: true, Version: "TLSv9"}, []string{`ssl_version "TLSv9": unknown`}},
		{"everything at once", TLSOptions{Enabled: true, CAFile: p.missing, KeyFile: p.client.Key, Version: "sslv3"},
			[]string{"ssl_ca_file " + p.missing, "ssl_key_file " + p.client.Key + ": set without", "ssl_version sslv3: not offered"}},
	} {
		errs := tc.o.Check()
		if len(errs) != len(tc.want) {
			t.Errorf("%s: %d problems %v, want %d", tc.name, len(errs), errs, len(tc.want))
			continue
		}
		for i, err := range errs {
			if !strings.Contains(err.Error(), tc.want[i]) {
				t.Errorf("%s: problem %d = %q, want it to contain %q", tc.name, i, err, tc.want[i])
			}
		}
	}
}

// tlsListener accepts TLS connections with cert and closes each after the
// handshake: enough for the dial to get past TLS (and fail at AMQP).
func tlsListener(t *testing.T, cert testpki.Pair, clientCA string) string {
	t.Helper()
	c, err := tls.LoadX509KeyPair(cert.Cert, cert.Key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{c}}
	if clientCA != "" {
		pool, err := loadCA(clientCA)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { // owner: the test (Cleanup closes l and waits)
		defer close(done)
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_ = conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

// A broker certificate ferry refuses on every host is a configuration
// error (the reconnect loop stops on ErrInvalidArgument) that says what
// was wrong; one that passes leaves an AMQP failure, an outage to retry.
func TestDialVerifiesTheBroker(t *testing.T) {
	p := newPKI(t)
	addr := tlsListener(t, p.server, "")
	_, port, _ := net.SplitHostPort(addr)
	misnamed, err := p.ca.Server("misnamed", "broker.example")
	if err != nil {
		t.Fatal(err)
	}
	_, misnamedPort, _ := net.SplitHostPort(tlsListener(t, misnamed, ""))
	for _, tc := range []struct {
		name, host, port string
		o                TLSOptions
		class            error
		want             string
	}{
		{"trusted, named", "127.0.0.1", port, TLSOptions{Enabled: true, CAFile: p.ca.File}, errdefs.ErrUnavailable, "nova@127.0.0.1:" + port},
		{"untrusted CA", "127.0.0.1", port, TLSOptions{Enabled: true, CAFile: p.otherCA.File}, errdefs.ErrInvalidArgument,
			"the broker's certificate for 127.0.0.1 is not trusted by ssl_ca_file " + p.otherCA.File},
		{"system roots", "127.0.0.1", port, TLSOptions{Enabled: true}, errdefs.ErrInvalidArgument,
			"not trusted by the system's roots (ssl_ca_file is not set)"},
		{"wrong name", "127.0.0.1", misnamedPort, TLSOptions{Enabled: true, CAFile: p.ca.File}, errdefs.ErrInvalidArgument,
			"the broker's certificate does not name 127.0.0.1, the host in transport_url"},
		{"missing CA file", "127.0.0.1", port, TLSOptions{Enabled: true, CAFile: p.missing}, errdefs.ErrInvalidArgument,
			"ssl_ca_file " + p.missing + ": no such file"},
	} {
		u, err := ParseTransportURL("rabbit://nova:s3cret@" + net.JoinHostPort(tc.host, tc.port) + "/")
		if err != nil {
			t.Fatal(err)
		}
		tr, err := newAMQPTransport(u, tc.o, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tr.Dial(context.Background())
		if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: Dial = %v, want %v containing %q", tc.name, err, tc.class, tc.want)
		}
	}

	// Two hosts, one refused, one merely down: an outage, retried.
	down, _ := net.Listen("tcp", "127.0.0.1:0")
	downAddr := down.Addr().String()
	down.Close()
	u, _ := ParseTransportURL("rabbit://nova:s3cret@127.0.0.1:" + misnamedPort + ",nova:s3cret@" + downAddr + "/")
	tr, _ := newAMQPTransport(u, TLSOptions{Enabled: true, CAFile: p.ca.File}, time.Minute)
	if _, err := tr.Dial(context.Background()); !errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("one host refused, one down: %v, want ErrUnavailable only", err)
	}
}

// A client certificate is presented: a listener that requires one from
// the CA completes the handshake.
func TestDialPresentsClientCertificate(t *testing.T) {
	p := newPKI(t)
	addr := tlsListener(t, p.server, p.ca.File)
	u, _ := ParseTransportURL("rabbit://nova:s3cret@" + addr + "/?ssl=1")
	with := TLSOptions{CAFile: p.ca.File, CertFile: p.client.Cert, KeyFile: p.client.Key}
	cfg, err := with.config("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("handshake with the client certificate: %v", err)
	}
	conn.Close()
	tr, err := newAMQPTransport(u, with, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Dial(context.Background()); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Dial past TLS = %v, want an AMQP-level ErrUnavailable", err)
	}
	without := with
	without.CertFile, without.KeyFile = "", ""
	tr, _ = newAMQPTransport(u, without, time.Minute)
	if _, err := tr.Dial(context.Background()); !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "may require a client certificate") {
		t.Errorf("Dial without the client certificate = %v, want ErrUnavailable with a hint", err)
	}
}

func TestTLSVersion(t *testing.T) {
	o := TLSOptions{Enabled: true, Version: "TLSv1_2"}
	cfg, err := o.config("h")
	if err != nil || cfg.MinVersion != tls.VersionTLS12 || cfg.MaxVersion != tls.VersionTLS12 || cfg.ServerName != "h" {
		t.Errorf("TLSv1_2: %+v %v", cfg, err)
	}
	o.Version = "SSLv23"
	if cfg, err = o.config("h"); err != nil || cfg.MinVersion != tls.VersionTLS12 || cfg.MaxVersion != 0 {
		t.Errorf("SSLv23: %+v %v", cfg, err)
	}
}
