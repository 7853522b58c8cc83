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
		// TLS keeps oslo's default port: "host.port or 5672" (impl_rabbit.py).
		{"rabbit://u:p@[fd00::2]/?ssl=true", []host{{"fd00::2", "u", "p", 5672}}, "/", true},
		{"amqps://u:p@h", []host{{"h", "u", "p", 5672}}, "/", true},
		{"kombu+amqps://u:p@h:5671/", []host{{"h", "u", "p", 5671}}, "/", true},
		{"rabbit://u:p@h/?ssl=0", []host{{"h", "u", "p", 5672}}, "/", false},
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
		o, err := u.TLSOptions(TLSOptions{})
		if u.VHost != tc.vhost || o.Enabled != tc.tls || err != nil {
			t.Errorf("ParseTransportURL(%q) = vhost %q tls %v (%v), want %q %v", tc.in, u.VHost, o.Enabled, err, tc.vhost, tc.tls)
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

// A password holding an unescaped '/', '?', '#' or ',' splits the URL in the
// wrong place: no part of it may reach an error (or, through String, a log).
func TestParseTransportURLUnescapedPassword(t *testing.T) {
	for _, tc := range []struct{ in, a, b string }{
		{"rabbit://nova:Xq9/Zk7@rabbit1:5672/nova", "Xq9", "Zk7"},
		{"rabbit://nova:Xq9?Zk7@rabbit1:5672/nova", "Xq9", "Zk7"},
		{"rabbit://nova:Xq9#Zk7@rabbit1:5672/nova", "Xq9", "Zk7"},
		{"rabbit://nova:Xq9,Zk7@rabbit1:5672/nova", "Xq9", "Zk7"},
		{"rabbit://nova:8731/4429@rabbit1:5672/", "8731", "4429"},
		{"rabbit://nova:8731?4429@rabbit1/", "8731", "4429"},
		{"rabbit://nova:8731,4429@rabbit1:5672/", "8731", "4429"},
		{"rabbit://nova:ok@rabbit1:5672,nova:8731/4429@rabbit2:5672/", "8731", "4429"},
	} {
		u, err := ParseTransportURL(tc.in)
		if err == nil {
			t.Errorf("ParseTransportURL(%q) accepted it as %s; want an error asking for percent-encoding", tc.in, u)
			if s := u.String(); strings.Contains(s, tc.a) || strings.Contains(s, tc.b) {
				t.Errorf("String() of %q leaks a part of the password: %s", tc.in, s)
			}
			continue
		}
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseTransportURL(%q) = %v, want ErrInvalidArgument", tc.in, err)
		}
		if msg := err.Error(); strings.Contains(msg, tc.a) || strings.Contains(msg, tc.b) {
			t.Errorf("ParseTransportURL(%q) error leaks a part of the password: %v", tc.in, msg)
		}
	}
}
