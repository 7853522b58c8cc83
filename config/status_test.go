package config

import (
	"os"
	"strings"
	"testing"
)

const keystoneOK = `
  keystone:
    auth_type: password
    auth_url: https://keystone.example:5000/v3
    username: ferry
    password: s3cret
    project_name: service
`

const tlsOK = `
  tls_cert_file: /etc/ferry/status.crt
  tls_key_file: /etc/ferry/status.key
`

// The status API: loopback by default; beyond loopback, TLS and Keystone,
// every missing piece named at once.
func TestStatus(t *testing.T) {
	b, err := os.ReadFile("testdata/lab-a.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name     string
		section  string   // appended after "status:"; "" leaves the section out
		want     []string // problems, all reported; none: accepted
		listen   string
		loopback bool
	}{
		{name: "default", listen: "127.0.0.1:9779", loopback: true},
		{name: "off", section: "\n  listen: \"off\"\n", listen: "off"},
		{name: "loopback v6", section: "\n  listen: \"[::1]:9100\"\n", listen: "[::1]:9100", loopback: true},
		{name: "any free port", section: "\n  listen: 127.0.0.1:0\n", listen: "127.0.0.1:0", loopback: true},
		{name: "localhost", section: "\n  listen: localhost:9100\n", listen: "localhost:9100", loopback: true},
		{name: "loopback with keystone", section: "\n  listen: 127.0.0.1:9100\n" + keystoneOK, listen: "127.0.0.1:9100", loopback: true},
		{name: "beyond loopback, complete", section: "\n  listen: 198.18.0.11:9779\n" + tlsOK + keystoneOK, listen: "198.18.0.11:9779"},
		{name: "beyond loopback, bare", section: "\n  listen: 198.18.0.11:9779\n", want: []string{
			`status.listen: "198.18.0.11:9779" is beyond loopback: tls_cert_file and tls_key_file are required`,
			`status.listen: "198.18.0.11:9779" is beyond loopback: keystone (auth_type password) is required`}},
		{name: "every interface, TLS only", section: "\n  listen: \":9779\"\n" + tlsOK, want: []string{
			`status.listen: ":9779" is beyond loopback: keystone (auth_type password) is required`}},
		{name: "every interface, Keystone only", section: "\n  listen: 0.0.0.0:9779\n" + keystoneOK, want: []string{
			`status.listen: "0.0.0.0:9779" is beyond loopback: tls_cert_file and tls_key_file are required`}},
		{name: "a name", section: "\n  listen: ferry.example:9779\n" + tlsOK + keystoneOK, want: []string{
			`status.listen: "ferry.example:9779": the host must be an IP address or localhost`}},
		{name: "no port", section: "\n  listen: 127.0.0.1\n", want: []string{`status.listen: "127.0.0.1" is not host:port`}},
		{name: "bad port", section: "\n  listen: 127.0.0.1:99999\n", want: []string{`status.listen: "127.0.0.1:99999": port "99999"`}},
		{name: "half TLS, relative", section: "\n  listen: 127.0.0.1:9779\n  tls_cert_file: status.crt\n", want: []string{
			"status.tls_cert_file, tls_key_file: set both or neither", `status.tls_cert_file: "status.crt" must be an absolute path`}},
		{name: "keystone incomplete", section: "\n  listen: 198.18.0.11:9779\n" + tlsOK + "  keystone:\n    auth_type: password\n", want: []string{
			"status.keystone.auth_url: required", "status.keystone.username: required", "status.keystone.password: required"}},
		{name: "keystone noauth", section: "\n  listen: 198.18.0.11:9779\n" + tlsOK + "  keystone:\n    auth_type: noauth\n    endpoint_override: http://k\n", want: []string{
			`status.keystone.auth_type: "noauth", want password`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			doc := string(b)
			if tt.section != "" {
				doc += "status:" + tt.section
			}
			c, err := Parse([]byte(doc))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if c.Status.Listen != tt.listen || c.Status.Loopback() != tt.loopback || c.Status.Enabled() != (tt.listen != "off") {
					t.Errorf("listen %q loopback %v enabled %v, want %q %v", c.Status.Listen, c.Status.Loopback(), c.Status.Enabled(), tt.listen, tt.loopback)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("the password is in the error: %v", err)
			}
		})
	}
}
