package config

import (
	"crypto/fips140"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/internal/testpki"
	"opendev.org/x/ferry/rpc/oslo"
)

// nova.conf's [oslo_messaging_rabbit] ssl options under the same names;
// every problem with them refused at once, each naming its file.
func TestBrokerTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := testpki.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Client("client", "ferry")
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	b, _ := os.ReadFile("testdata/lab-a.yaml")
	base := strings.Replace(string(b), "transport_url: rabbit://guest:guest@127.0.0.1:5672/ferry\n", "", 1)
	companion := "mode: companion\nneutron:\n  auth_type: noauth\n  endpoint_override: http://127.0.0.1:9696\n"
	fipsWant := []string{"ssl_enforce_fips_mode: Go's FIPS 140-3 mode is off"}
	if fips140.Enabled() {
		fipsWant = nil
	}
	for _, tc := range []struct {
		name  string
		yaml  string // transport_url and oslo_messaging_rabbit
		want  oslo.TLSOptions
		probs []string // every problem, in order; none: accepted with want
	}{
		{"no TLS", "transport_url: rabbit://h/\n", oslo.TLSOptions{}, nil},
		{"all options", "transport_url: rabbit://h/\noslo_messaging_rabbit:\n  ssl: true\n  ssl_ca_file: " + ca.File +
			"\n  ssl_cert_file: " + client.Cert + "\n  ssl_key_file: " + client.Key + "\n  ssl_version: TLSv1_2\n",
			oslo.TLSOptions{Enabled: true, CAFile: ca.File, CertFile: client.Cert, KeyFile: client.Key, Version: "TLSv1_2"}, nil},
		{"TLS off: files not read, as oslo", "transport_url: rabbit://h/\noslo_messaging_rabbit:\n  ssl_ca_file: " + missing + "\n",
			oslo.TLSOptions{CAFile: missing}, nil},
		{"missing CA", "transport_url: rabbit://h/\noslo_messaging_rabbit:\n  ssl: true\n  ssl_ca_file: " + missing + "\n", oslo.TLSOptions{},
			[]string{"oslo_messaging_rabbit.ssl_ca_file " + missing + ": no such file or directory"}},
		{"the URL's query turns TLS on and names the file", "transport_url: rabbit://h/?ssl=1&ssl_ca_file=" + missing + "\n", oslo.TLSOptions{},
			[]string{"oslo_messaging_rabbit.ssl_ca_file " + missing}},
		{"amqps with a missing CA", "transport_url: amqps://h/\noslo_messaging_rabbit:\n  ssl_ca_file: " + missing + "\n", oslo.TLSOptions{},
			[]string{"ssl_ca_file " + missing}},
		{"key without cert, cert without key", "transport_url: rabbit://h/?ssl=1\noslo_messaging_rabbit:\n  ssl_key_file: " + client.Key + "\n",
			oslo.TLSOptions{}, []string{"oslo_messaging_rabbit.ssl_key_file " + client.Key + ": set without ssl_cert_file"}},
		{"cert without key", "transport_url: rabbit://h/?ssl=1\noslo_messaging_rabbit:\n  ssl_cert_file: " + client.Cert + "\n",
			oslo.TLSOptions{}, []string{"oslo_messaging_rabbit.ssl_cert_file " + client.Cert + ": set without ssl_key_file"}},
		{"every problem at once", "transport_url: rabbit://h/?ssl=yes&ssl_enforce_fips_mode=maybe\noslo_messaging_rabbit:\n  ssl_ca_file: " + missing +
			"\n  ssl_cert_file: " + filepath.Join(dir, "c.pem") + "\n  ssl_key_file: " + filepath.Join(dir, "c.key") + "\n  ssl_version: TLSv1_3\n", oslo.TLSOptions{},
			[]string{`transport_url ?ssl_enforce_fips_mode=maybe: "maybe" is not a boolean`,
				"oslo_messaging_rabbit.ssl_ca_file " + missing, "oslo_messaging_rabbit.ssl_cert_file " + filepath.Join(dir, "c.pem") + ": no such file",
				"oslo_messaging_rabbit.ssl_key_file " + filepath.Join(dir, "c.key") + ": no such file", `oslo_messaging_rabbit.ssl_version "TLSv1_3": unknown`}},
		{"TLSv1 refused", "transport_url: rabbit://h/\noslo_messaging_rabbit:\n  ssl: true\n  ssl_version: TLSv1\n", oslo.TLSOptions{},
			[]string{"oslo_messaging_rabbit.ssl_version TLSv1: ferry speaks TLS 1.2 and 1.3 only"}},
		{"FIPS mode", "transport_url: rabbit://h/\noslo_messaging_rabbit:\n  ssl: true\n  ssl_enforce_fips_mode: true\n",
			oslo.TLSOptions{Enabled: true, EnforceFIPS: true}, fipsWant},
		{"the cut-over's own URL, checked once more only when it differs", "transport_url: rabbit://h/?ssl=1&ssl_ca_file=" + ca.File + "\n" + companion +
			"companion:\n  cutover:\n    transport_url: rabbit://admin:pw@h/?ssl=1&ssl_ca_file=" + missing + "&ssl_enforce_fips_mode=soon\n",
			oslo.TLSOptions{}, []string{`companion.cutover.transport_url ?ssl_enforce_fips_mode=soon: "soon" is not a boolean`,
				"companion.cutover.transport_url: ssl_ca_file " + missing}},
		{"the notifications' own URL", "transport_url: rabbit://h/\n" + companion +
			"notifications:\n  transport_url: rabbit://n:pw@h2/?ssl=true&ssl_cert_file=" + client.Cert + "\n",
			oslo.TLSOptions{}, []string{"notifications.transport_url: ssl_cert_file " + client.Cert + ": set without ssl_key_file"}},
		{"the cut-over's URL with the same options", "transport_url: rabbit://h/?ssl=1&ssl_ca_file=" + missing + "\n" + companion +
			"companion:\n  cutover:\n    transport_url: rabbit://admin:pw@h/?ssl=1&ssl_ca_file=" + missing + "\n",
			oslo.TLSOptions{}, []string{"oslo_messaging_rabbit.ssl_ca_file " + missing}},
	} {
		c, err := Parse([]byte(base + tc.yaml))
		if len(tc.probs) == 0 {
			if err != nil {
				t.Errorf("%s: refused: %v", tc.name, err)
				continue
			}
			if diff := cmp.Diff(tc.want, c.Oslo.TLS()); diff != "" {
				t.Errorf("%s: TLS() (-want +got):\n%s", tc.name, diff)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		msg := err.Error()
		for _, want := range tc.probs {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: error lacks %q:\n%v", tc.name, want, msg)
			}
		}
		if n := strings.Count(msg, "ssl"); n < len(tc.probs) || strings.Count(msg, "\n") != len(tc.probs) {
			t.Errorf("%s: want exactly %d problems:\n%v", tc.name, len(tc.probs), msg)
		}
		if strings.Contains(msg, ":pw@") {
			t.Errorf("%s: the cut-over URL's password is in the error:\n%v", tc.name, msg)
		}
	}
}
