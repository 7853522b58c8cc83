package oslo

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"opendev.org/x/ferry/pkg/errdefs"
)

// TransportURL is a parsed oslo.messaging transport_url:
//
//	rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost?ssl=1
//
// amqp091's own parser rejects the rabbit scheme and keeps only the last of
// several hosts, so ferry parses it the way oslo does. Hosts are tried in
// order. String redacts passwords; the type has no other way to print one.
type TransportURL struct {
	Scheme string
	Hosts  []URLHost
	VHost  string            // "/" when the URL has none
	Query  map[string]string // driver options (repeated keys joined with ",", as oslo does)
}

// URLHost is one broker of a TransportURL.
type URLHost struct {
	Host     string // name or address (IPv6 without brackets)
	Port     int    // 5672 (5671 with ssl) when the URL has none
	Username string // "guest" when the URL has none
	password string
}

// Password returns the host's password, for the dialer only.
func (h URLHost) Password() string { return h.password }

// Addr is host:port with IPv6 brackets.
func (h URLHost) Addr() string { return net.JoinHostPort(h.Host, strconv.Itoa(h.Port)) }

// ParseTransportURL parses s as oslo.messaging does. Errors never contain
// the password.
func ParseTransportURL(s string) (TransportURL, error) {
	fail := func(why string) (TransportURL, error) {
		return TransportURL{}, fmt.Errorf("transport_url %s: %w: %s", redactRaw(s), errdefs.ErrInvalidArgument, why)
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || scheme == "" {
		return fail("no scheme")
	}
	switch scheme {
	case "rabbit", "amqp", "amqps", "kombu+amqp", "kombu+rabbit":
	default:
		return fail(fmt.Sprintf("scheme %q is not a RabbitMQ transport", scheme))
	}
	netloc, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		netloc, tail = rest[:i], rest[i:]
	}
	path, rawQuery := tail, ""
	if i := strings.IndexByte(tail, '?'); i >= 0 {
		path, rawQuery = tail[:i], tail[i+1:]
	}
	if i := strings.IndexByte(rawQuery, '#'); i >= 0 {
		rawQuery = rawQuery[:i]
	}
	if i := strings.IndexByte(path, '#'); i >= 0 {
		path = path[:i]
	}
	u := TransportURL{Scheme: scheme, VHost: "/", Query: map[string]string{}}
	if strings.HasPrefix(path, "/") && len(path) > 1 {
		vh, err := url.PathUnescape(path[1:])
		if err != nil {
			return fail("bad escape in the virtual host")
		}
		u.VHost = vh
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return fail("bad query")
	}
	for k, v := range q {
		u.Query[k] = strings.Join(v, ",")
	}
	defPort := 5672
	if u.TLS() {
		defPort = 5671
	}
	for _, part := range strings.Split(netloc, ",") {
		if part == "" {
			continue
		}
		h := URLHost{Username: "guest", password: "guest", Port: defPort}
		hostport := part
		if at := strings.LastIndexByte(part, '@'); at >= 0 {
			cred := part[:at]
			hostport = part[at+1:]
			user, pass, hasPass := strings.Cut(cred, ":")
			if user, err = url.PathUnescape(user); err != nil {
				return fail("bad escape in a user name")
			}
			if pass, err = url.PathUnescape(pass); err != nil {
				return fail("bad escape in a password")
			}
			if hasPass {
				h.Username, h.password = user, pass
			}
		}
		var port string
		switch {
		case strings.HasPrefix(hostport, "["):
			end := strings.IndexByte(hostport, ']')
			if end < 0 {
				return fail("invalid IPv6 host")
			}
			h.Host = hostport[1:end]
			if p := hostport[end+1:]; strings.HasPrefix(p, ":") {
				port = p[1:]
			}
		case strings.Contains(hostport, ":"):
			h.Host, port, _ = strings.Cut(hostport, ":")
		default:
			h.Host = hostport
		}
		if port != "" {
			n, err := strconv.Atoi(port)
			if err != nil || n <= 0 || n > 65535 {
				return fail(fmt.Sprintf("bad port %q", port))
			}
			h.Port = n
		}
		if h.Host == "" {
			h.Host = "localhost"
		}
		u.Hosts = append(u.Hosts, h)
	}
	if len(u.Hosts) == 0 {
		u.Hosts = []URLHost{{Host: "localhost", Port: defPort, Username: "guest", password: "guest"}}
	}
	return u, nil
}

// TLS reports whether the URL asks for TLS (amqps scheme or ssl=true).
func (u TransportURL) TLS() bool {
	if u.Scheme == "amqps" {
		return true
	}
	b, _ := u.Bool("ssl")
	return b
}

// Bool reads a boolean query option ("1", "true", "yes", "on").
func (u TransportURL) Bool(key string) (v, set bool) {
	s, ok := u.Query[key]
	if !ok {
		return false, false
	}
	switch strings.ToLower(s) {
	case "1", "true", "yes", "on":
		return true, true
	}
	return false, true
}

// String returns the URL with every password replaced by "***".
func (u TransportURL) String() string {
	var hosts []string
	for _, h := range u.Hosts {
		hosts = append(hosts, url.PathEscape(h.Username)+":***@"+h.Addr())
	}
	s := u.Scheme + "://" + strings.Join(hosts, ",") + "/"
	if u.VHost != "/" {
		s += url.PathEscape(u.VHost)
	}
	return s
}

// redactRaw hides anything between "://" or "," and "@" in a URL that did
// not parse.
func redactRaw(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		if strings.Contains(s, "@") {
			return "<unparsable URL>"
		}
		return s
	}
	netloc, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		netloc, tail = rest[:i], rest[i:]
	}
	parts := strings.Split(netloc, ",")
	for i, p := range parts {
		if at := strings.LastIndexByte(p, '@'); at >= 0 {
			user, _, _ := strings.Cut(p[:at], ":")
			parts[i] = user + ":***@" + p[at+1:]
		}
	}
	return scheme + "://" + strings.Join(parts, ",") + tail
}
