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
// The query holds [oslo_messaging_rabbit] options that override the
// configured ones (TLSOptions reads the ssl ones). oslo itself has no
// amqps driver (amqp:// is its AMQP 1.0 driver, amqps:// fails to load);
// its spelling of TLS in the scheme is kombu+amqps://. ferry reads amqp and
// amqps as rabbit, amqps and kombu+amqps with TLS on.
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
	Port     int    // 5672 when the URL has none, with TLS too (oslo's default: "host.port or 5672")
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
	case "rabbit", "amqp", "amqps", "kombu+amqp", "kombu+amqps", "kombu+rabbit":
	default:
		return fail(fmt.Sprintf("scheme %q is not a RabbitMQ transport", scheme))
	}
	netloc, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		netloc, tail = rest[:i], rest[i:]
	}
	if strings.Contains(tail, "@") {
		// The host list ended early: a '/', '?' or '#' inside credentials.
		return fail("an '@' after the host list: a user name or password holds an unescaped '/', '?' or '#'; " +
			"percent-encode it (%2F, %3F, %23)")
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
	const defPort = 5672
	prevBare := false // the previous host had no credentials
	for i, part := range strings.Split(netloc, ",") {
		if part == "" {
			continue
		}
		h := URLHost{Username: "guest", password: "guest", Port: defPort}
		hostport := part
		at := strings.LastIndexByte(part, '@')
		if at >= 0 {
			cred := part[:at]
			hostport = part[at+1:]
			user, pass, hasPass := strings.Cut(cred, ":")
			if !hasPass && prevBare {
				// "user:pa,ss@host" splits into "user:pa" and "ss@host".
				return fail(fmt.Sprintf("host %d has a user but no password after a host without credentials: "+
					"a password holds an unescaped ','; percent-encode it (%%2C)", i+1))
			}
			if user, err = url.PathUnescape(user); err != nil {
				return fail("bad escape in a user name")
			}
			if pass, err = url.PathUnescape(pass); err != nil {
				return fail("bad escape in a password")
			}
			h.Username, h.password = user, pass
		}
		prevBare = at < 0
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
				// The "port" may be a piece of a password cut at an unescaped
				// '/', '?', '#' or ',': it is never repeated.
				return fail(fmt.Sprintf("host %d: the port is not a number from 1 to 65535 (an unescaped '/', '?', '#' "+
					"or ',' in a password cuts the URL there; percent-encode it)", i+1))
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

// redactRaw hides everything between "://" and the last "@" of a URL that
// did not parse: where it went wrong may be a password holding a '/', '?',
// '#' or ',', so no part of the credentials is trusted to end anywhere
// earlier.
func redactRaw(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	at := strings.LastIndexByte(rest, '@')
	switch {
	case !ok && strings.Contains(s, "@"):
		return "<unparsable URL>"
	case !ok || at < 0:
		return s
	}
	return scheme + "://***@" + rest[at+1:]
}
