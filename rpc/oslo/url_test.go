package oslo

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
)

func TestParseTransportURL(t *testing.T) {
	type host struct {
		Host, User, Pass string
		Port             int
	}
	tests := []struct {
		in    string
		hosts []host
		vhost string
		tls   bool
	}{
		{"rabbit://guest:guest@127.0.0.1:5672/", []host{{"127.0.0.1", "guest", "guest", 5672}}, "/", false},
		{"rabbit://u:p@h1:5672,u2:p2@h2:5673/nova", []host{{"h1", "u", "p", 5672}, {"h2", "u2", "p2", 5673}}, "nova", false},
		{"rabbit://u:p%40ss%2Fw@h/v%2Fh", []host{{"h", "u", "p@ss/w", 5672}}, "v/h", false},
		{"rabbit://u:p@[fd00::1]:5671/?ssl=1", []host{{"fd00::1", "u", "p", 5671}}, "/", true},
		{"rabbit://u:p@[fd00::2]/?ssl=true", []host{{"fd00::2", "u", "p", 5671}}, "/", true},
		{"amqps://u:p@h", []host{{"h", "u", "p", 5671}}, "/", true},
		{"rabbit://", []host{{"localhost", "guest", "guest", 5672}}, "/", false},
		{"rabbit://h1,h2:1234/", []host{{"h1", "guest", "guest", 5672}, {"h2", "guest", "guest", 1234}}, "/", false},
		{"rabbit://u:p:with:colons@h/", []host{{"h", "u", "p:with:colons", 5672}}, "/", false},
	}
	for _, tc := range tests {
		u, err := ParseTransportURL(tc.in)
		if err != nil {
			t.Errorf("ParseTransportURL(%q): %v", tc.in, err)
			continue
		}
		var got []host
		for _, h := range u.Hosts {
			got = append(got, host{h.Host, h.Username, h.Password(), h.Port})
		}
		if diff := cmp.Diff(tc.hosts, got); diff != "" {
			t.Errorf("ParseTransportURL(%q) hosts (-want +got):\n%s", tc.in, diff)
		}
		if u.VHost != tc.vhost || u.TLS() != tc.tls {
			t.Errorf("ParseTransportURL(%q) = vhost %q tls %v, want %q %v", tc.in, u.VHost, u.TLS(), tc.vhost, tc.tls)
		}
		if s := u.String(); strings.Contains(s, "p@ss") || (tc.hosts[0].Pass != "guest" && strings.Contains(s, ":"+tc.hosts[0].Pass+"@")) {
			t.Errorf("String() leaks a password: %s", s)
		}
	}
}

func TestParseTransportURLErrorsHidePasswords(t *testing.T) {
	for _, in := range []string{
		"http://u:secret@h/",
		"rabbit://u:secret@h:99999/",
		"rabbit://u:secret@[fd00::1/",
		"rabbit://u:secret@h:port/",
		"u:secret@h",
	} {
		_, err := ParseTransportURL(in)
		if err == nil {
			t.Errorf("ParseTransportURL(%q) accepted", in)
			continue
		}
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseTransportURL(%q) = %v, want ErrInvalidArgument", in, err)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseTransportURL(%q) error leaks the password: %v", in, err)
		}
	}
}
