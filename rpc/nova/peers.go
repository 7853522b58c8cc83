package nova

import (
	"context"
	"fmt"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/hostnet"
)

// Peer is what this host knows about another compute host from its
// configuration.
type Peer struct {
	Management string // libvirt control address; default the host name
	TLSName    string // name in its certificate; default the host name
	LibvirtURI string // how ferry itself reaches its libvirtd; default the control URI
}

// Peers decides which other hosts ferry may reach, and how. A host name
// from a message is never dialled as it is: it must be a configured peer,
// or Nova's own records (the conductor's answer, not the message) must name
// it for that migration. That keeps a forged message from making ferryd
// connect anywhere.
type Peers struct {
	Host       string          // this host
	Configured map[string]Peer // by Nova host name
	Scheme     string          // libvirt transport to peers: tcp, tls
}

// dest is the description of a verified host: how the source libvirtd's
// control connection, the data streams and TLS reach it.
func (p Peers) dest(host string) hostnet.Dest {
	c := p.Configured[host]
	return hostnet.Dest{Host: host, Mgmt: c.Management, TLSName: c.TLSName, Scheme: p.Scheme}
}

// libvirtURI is how ferry reaches a verified host's libvirtd.
func (p Peers) libvirtURI(host string) (string, error) {
	if c := p.Configured[host]; c.LibvirtURI != "" {
		return c.LibvirtURI, nil
	}
	u, err := hostnet.For(p.dest(host), false)
	return u.Control, err
}

// verify checks that host may be reached for this request: a configured
// peer, or the host Nova's records name (record, read from the conductor).
func (p Peers) verify(host, role, record string) error {
	switch {
	case host == "":
		return fmt.Errorf("%w: no %s host", errdefs.ErrInvalidArgument, role)
	case host == p.Host:
		return fmt.Errorf("%w: the %s is this host (%s)", errdefs.ErrInvalidArgument, role, host)
	}
	if _, ok := p.Configured[host]; ok {
		return nil
	}
	if record != host {
		return fmt.Errorf("%w: %s %q is not a configured peer and Nova's records name %q", errdefs.ErrInvalidArgument, role, host, record)
	}
	return nil
}

// needsRecord tells whether verifying host takes a look at Nova's records.
func (p Peers) needsRecord(host string) bool {
	_, ok := p.Configured[host]
	return !ok
}

// sourceOf returns the source host of an instance as Nova's records have
// it, when the message's host is not a configured peer.
func sourceOf(ctx context.Context, p Peers, c *Conductor, rctx Context, uuid, host string) error {
	record := ""
	if p.needsRecord(host) {
		inst, err := c.InstanceByUUID(ctx, rctx, uuid)
		if err != nil {
			return fmt.Errorf("verify the source host %q with Nova's records: %w", host, err)
		}
		if record, err = Need[string](inst, "host"); err != nil {
			return err
		}
	}
	return p.verify(host, "source", record)
}
