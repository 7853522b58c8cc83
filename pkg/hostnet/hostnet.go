// Package hostnet turns a destination host's addresses into the URIs a
// live migration uses: the control connection (source libvirtd to
// destination libvirtd) stays on the management network; RAM and the NBD
// disk mirror go to the destination's migration address; TLS verifies the
// name in the destination's certificate (its host name by default), so
// certificates need no IP entries.
package hostnet

import (
	"fmt"
	"net/netip"
	"strings"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Dest is what the source knows about a destination host.
type Dest struct {
	Host      string // Nova host name
	Mgmt      string // management address or name (libvirt control); default Host
	Migration string // migration address (target_connect_addr / live_migration_inbound_addr); default Mgmt
	TLSName   string // name in the destination's certificate; default Host
	Scheme    string // libvirt transport: tcp (default), tls, ssh
}

// URIs are the addresses of one migration.
type URIs struct {
	Control        string // qemu+<scheme>://<mgmt>/system, opened by the source libvirtd
	Migrate        string // tcp://<migration addr>
	Disks          string // tcp://<migration addr> (NBD mirror)
	TLSDestination string // set only with TLS
}

// For builds the URIs for a destination; tls says whether the data streams
// use QEMU's native TLS.
func For(d Dest, tls bool) (URIs, error) {
	if d.Host == "" && d.Mgmt == "" {
		return URIs{}, fmt.Errorf("destination: %w: no host name or management address", errdefs.ErrInvalidArgument)
	}
	mgmt := first(d.Mgmt, d.Host)
	mig := first(d.Migration, mgmt)
	scheme := first(d.Scheme, "tcp")
	switch scheme {
	case "tcp", "tls", "ssh", "libssh", "libssh2":
	default:
		return URIs{}, fmt.Errorf("destination %s: %w: libvirt scheme %q", d.Host, errdefs.ErrInvalidArgument, scheme)
	}
	for _, a := range []string{mgmt, mig} {
		if err := CheckHost(a); err != nil {
			return URIs{}, fmt.Errorf("destination %s: %w", d.Host, err)
		}
	}
	u := URIs{
		Control: fmt.Sprintf("qemu+%s://%s/system", scheme, hostPart(mgmt)),
		Migrate: "tcp://" + hostPart(mig),
		Disks:   "tcp://" + hostPart(mig),
	}
	if tls {
		u.TLSDestination = first(d.TLSName, d.Host, mgmt)
	}
	return u, nil
}

// hostPart brackets IPv6 addresses.
func hostPart(a string) string {
	if ip, err := netip.ParseAddr(a); err == nil && ip.Is6() && !ip.Is4In6() {
		return "[" + ip.String() + "]"
	}
	return a
}

// CheckHost accepts an IP address or a host name, nothing that could smuggle a
// URI part (a user, a port, a path) into the URIs built from it.
func CheckHost(a string) error {
	if _, err := netip.ParseAddr(a); err == nil {
		return nil
	}
	if a == "" || strings.ContainsAny(a, "/:@?# []") || len(a) > 253 {
		return fmt.Errorf("%w: %q is neither an IP address nor a host name", errdefs.ErrInvalidArgument, a)
	}
	return nil
}

func first(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
