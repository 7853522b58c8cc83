package virt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Timeouts bound every short libvirt call. go-libvirt has no deadlines of its
// own: a hung libvirtd or a half-open TCP link would block a caller forever.
// The zero value of a field means its default.
type Timeouts struct {
	Dial     time.Duration // connect + auth + open; default 20s
	Query    time.Duration // lookups, state, XML, job stats; default 10s
	Control  time.Duration // define, start, destroy, abort, downtime; default 30s
	Watchdog time.Duration // liveness ping period; default 5s (the ping gets Query)
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Dial, 20*time.Second)
	def(&t.Query, 10*time.Second)
	def(&t.Control, 30*time.Second)
	def(&t.Watchdog, 5*time.Second)
	return t
}

// Conn is one connection to one libvirtd. It is safe for concurrent use, but
// libvirtd serves at most max_client_requests (5) calls per client at once, so
// a long Migrate call gets a Conn of its own.
//
// A hung daemon (SIGSTOPped, wedged, or behind a half-open TCP link) never
// hangs a caller: every call has a deadline, and the watchdog and Close cut
// the socket itself instead of asking the daemon to close the connection
// (go-libvirt's Disconnect sends ConnectClose and waits for its answer with no
// deadline). Cutting the socket fails every pending call with ErrUnavailable.
type Conn struct {
	uri      string // as given, for messages (never carries a secret)
	l        *libvirt.Libvirt
	raw      *rawDialer
	timeouts Timeouts
	sem      chan struct{} // at most maxOutstanding calls at once (libvirtd serves 5 per client)
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	verMu    sync.Mutex
	ver      *[2]uint64 // libvirt's and the hypervisor's versions, once read
	obs      Observer
}

// maxOutstanding leaves one of libvirtd's max_client_requests (5) free for
// the watchdog's ping.
const maxOutstanding = 4

// Dial connects to the libvirtd named by uri: "qemu:///system",
// "qemu+unix:///system?socket=/path", "qemu+tcp://host[:port]/system" or
// "qemu+tls://host[:port]/system[?pkipath=dir]". A watchdog pings the daemon
// and cuts the connection when a ping does not return in time, so a hung
// daemon turns into ErrUnavailable instead of a hang. A connection that
// completes after the dial timed out is closed, never leaked.
func Dial(ctx context.Context, uri string, t Timeouts, opts ...DialOption) (*Conn, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("dial %q: %w: %w", uri, errdefs.ErrInvalidArgument, err)
	}
	d, err := dialerFor(u)
	if err != nil {
		return nil, fmt.Errorf("dial %q: %w: %w", uri, errdefs.ErrInvalidArgument, err)
	}
	o := dialOptions{obs: nopObserver{}}
	for _, f := range opts {
		f(&o)
	}
	return dialWith(ctx, uri, libvirt.RemoteURI(u), d, t, o.obs)
}

// dialWith connects through d; the seam the unit tests use.
func dialWith(ctx context.Context, uri string, remote libvirt.ConnectURI, d socket.Dialer, t Timeouts, obs Observer) (*Conn, error) {
	t = t.withDefaults()
	raw := &rawDialer{inner: d}
	l := libvirt.NewWithDialer(raw)
	start := time.Now()
	_, err := call(ctx, t.Dial, "dial "+uri, func() (struct{}, error) {
		return struct{}{}, l.ConnectToURI(remote)
	})
	obs.LibvirtCall("dial", time.Since(start), err)
	if err != nil {
		raw.cut() // a handshake still running is aborted, a late one closed
		return nil, err
	}
	c := &Conn{uri: uri, l: l, raw: raw, timeouts: t, sem: make(chan struct{}, maxOutstanding),
		stop: make(chan struct{}), done: make(chan struct{}), obs: obs}
	go c.watchdog() // owner: the Conn (Close waits)
	return c, nil
}

// dialerFor picks go-libvirt's dialer for the transports ferry uses.
func dialerFor(u *url.URL) (socket.Dialer, error) {
	transport := "unix"
	if _, t, ok := strings.Cut(u.Scheme, "+"); ok {
		transport = t
	} else if u.Host != "" {
		transport = "tls"
	}
	switch transport {
	case "unix":
		var o []dialers.LocalOption
		if s := u.Query().Get("socket"); s != "" {
			o = append(o, dialers.WithSocket(s))
		}
		return dialers.NewLocal(o...), nil
	case "tcp":
		var o []dialers.RemoteOption
		if p := u.Port(); p != "" {
			o = append(o, dialers.UsePort(p))
		}
		return dialers.NewRemote(u.Hostname(), o...), nil
	case "tls":
		var o []dialers.TLSOption
		if p := u.Port(); p != "" {
			o = append(o, dialers.UseTLSPort(p))
		}
		if pki := u.Query().Get("pkipath"); pki != "" {
			o = append(o, dialers.UsePKIPath(pki))
		}
		return dialers.NewTLS(u.Hostname(), o...), nil
	}
	return nil, fmt.Errorf("libvirt transport %q is not supported (unix, tcp, tls)", transport)
}

// rawDialer keeps the socket go-libvirt talks over, so that ferry can cut it.
type rawDialer struct {
	inner socket.Dialer
	mu    sync.Mutex
	conn  net.Conn
	dead  bool // cut: a socket dialled from now on is closed at once
}

func (d *rawDialer) Dial() (net.Conn, error) {
	c, err := d.inner.Dial()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		c.Close()
		return nil, errors.New("connection abandoned")
	}
	d.conn = c
	return c, nil
}

// cut closes the socket: go-libvirt's reader ends and every pending call
// returns ErrInterrupted.
func (d *rawDialer) cut() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dead = true
	if d.conn != nil {
		_ = d.conn.Close()
	}
}

// Close stops the watchdog and disconnects, within the Query timeout: a
// daemon that does not answer the goodbye has its socket cut. It never
// touches running jobs: a migration whose Perform call runs on this
// connection is not aborted by libvirt when the client goes away (see the
// package doc).
func (c *Conn) Close() error {
	c.stopOnce.Do(func() { close(c.stop) })
	<-c.done
	var err error
	if c.l.IsConnected() {
		_, err = call(context.Background(), c.timeouts.Query, "close "+c.uri, func() (struct{}, error) {
			return struct{}{}, c.l.Disconnect()
		})
	}
	c.raw.cut()
	t := time.NewTimer(c.timeouts.Query)
	defer t.Stop()
	select { // go-libvirt's reader notices the cut socket at once
	case <-c.l.Disconnected():
	case <-t.C:
	}
	return err
}

// Disconnected is closed when the connection is gone (daemon restart,
// network loss, watchdog verdict or Close). A Conn never reconnects; callers
// dial a fresh one.
func (c *Conn) Disconnected() <-chan struct{} { return c.l.Disconnected() }

// URI returns the URI the connection was dialled with.
func (c *Conn) URI() string { return c.uri }

func (c *Conn) watchdog() {
	defer close(c.done)
	t := time.NewTicker(c.timeouts.Watchdog)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-c.l.Disconnected():
			return
		case <-t.C:
			start := time.Now()
			_, err := call(context.Background(), c.timeouts.Query, "ping "+c.uri, func() (uint64, error) {
				return c.l.ConnectGetLibVersion()
			})
			c.obs.LibvirtCall("ping", time.Since(start), err)
			if errors.Is(err, errdefs.ErrTimeout) {
				c.obs.WatchdogTrip()
				c.raw.cut() // unblocks every pending call with ErrInterrupted
				return
			}
		}
	}
}

// Version returns libvirt's and the hypervisor's versions as
// major*1,000,000 + minor*1,000 + micro. The hypervisor's comes from the
// default emulator's capabilities, which libvirtd probes (it runs QEMU, for
// seconds, far longer on a loaded host) the first time it is asked after
// the emulator changed, as after a QEMU upgrade: the call gets the probing
// bound, and the answer is kept for the connection's life.
func (c *Conn) Version(ctx context.Context) (lib, hv uint64, err error) {
	c.verMu.Lock()
	defer c.verMu.Unlock()
	if c.ver != nil {
		return c.ver[0], c.ver[1], nil
	}
	lib, err = do(c, ctx, c.timeouts.Query, "lib-version", "lib version", c.l.ConnectGetLibVersion)
	if err != nil {
		return 0, 0, err
	}
	hv, err = do(c, ctx, 3*c.timeouts.Control, "hypervisor-version", "hypervisor version", c.l.ConnectGetVersion)
	if err == nil {
		c.ver = &[2]uint64{lib, hv}
	}
	return lib, hv, err
}

// DomainCapabilities returns the domain capabilities XML for an emulator
// binary; the first call for a binary makes libvirtd probe it.
func (c *Conn) DomainCapabilities(ctx context.Context, emulator, virtType string) (string, error) {
	return do(c, ctx, 3*c.timeouts.Control, "domain-capabilities", "domain capabilities "+emulator, func() (string, error) {
		return c.l.ConnectGetDomainCapabilities(libvirt.OptString{emulator}, libvirt.OptString{"x86_64"}, nil,
			libvirt.OptString{virtType}, 0)
	})
}

// do runs a call on c, waiting (within ctx and the timeout) for one of the
// connection's call slots first. name is the call's for the Observer (a
// fixed name: its time includes the wait for a slot), op the text errors
// carry.
func do[T any](c *Conn, ctx context.Context, timeout time.Duration, name, op string, f func() (T, error)) (v T, err error) {
	start := time.Now()
	defer func() { c.obs.LibvirtCall(name, time.Since(start), err) }()
	var zero T
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case c.sem <- struct{}{}:
	case <-t.C:
		return zero, fmt.Errorf("%s: %w: %d calls already outstanding on %s", op, errdefs.ErrTimeout, maxOutstanding, c.uri)
	case <-ctx.Done():
		return zero, fmt.Errorf("%s: %w", op, context.Cause(ctx))
	}
	defer func() { <-c.sem }()
	return call(ctx, timeout, op, f)
}

// call runs f with a deadline. f runs in its own goroutine with a result
// channel of size one, so a reply that comes after the deadline is dropped
// without leaking the goroutine. The op name goes into every error.
func call[T any](ctx context.Context, timeout time.Duration, op string, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	var zero T
	select {
	case r := <-ch:
		if r.err != nil {
			return zero, fmt.Errorf("%s: %w", op, classify(r.err))
		}
		return r.v, nil
	case <-t.C:
		return zero, fmt.Errorf("%s: %w after %s", op, errdefs.ErrTimeout, timeout)
	case <-ctx.Done():
		return zero, fmt.Errorf("%s: %w", op, context.Cause(ctx))
	}
}

// classify wraps a go-libvirt error into an errdefs class, keeping the
// original for errors.As (libvirt.Error carries the code).
func classify(err error) error {
	var le libvirt.Error
	switch {
	case errors.Is(err, libvirt.ErrInterrupted), errors.Is(err, syscall.EINVAL),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
	case libvirt.IsNotFound(err):
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case errors.As(err, &le):
		switch libvirt.ErrorNumber(le.Code) {
		case libvirt.ErrOperationAborted:
			return fmt.Errorf("%w: %w", errdefs.ErrAborted, err)
		case libvirt.ErrOperationInvalid, libvirt.ErrOperationFailed:
			return fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err)
		case libvirt.ErrInvalidArg, libvirt.ErrNoSupport, libvirt.ErrArgumentUnsupported,
			libvirt.ErrConfigUnsupported, libvirt.ErrXMLError:
			return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
		case libvirt.ErrOperationTimeout:
			return fmt.Errorf("%w: %w", errdefs.ErrTimeout, err)
		case libvirt.ErrDomExist:
			return fmt.Errorf("%w: %w", errdefs.ErrConflict, err)
		}
	}
	return err
}

// noTimeout is for the one call that must not have a deadline: Migrate, whose
// end the monitor decides.
const noTimeout = time.Duration(1<<63 - 1)

// isCode reports whether err carries the libvirt error code.
func isCode(err error, code libvirt.ErrorNumber) bool {
	var le libvirt.Error
	return errors.As(err, &le) && le.Code == uint32(code)
}
