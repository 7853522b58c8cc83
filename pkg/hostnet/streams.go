package hostnet

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"opendev.org/x/ferry/pkg/errdefs"
)

// MigrationAddr is the address the migration streams go to, as For builds
// the URIs: the migration address, else the management one, else the host.
func (d Dest) MigrationAddr() string { return first(d.Migration, d.Mgmt, d.Host) }

// CloseStreams closes the TCP connections to addr (a destination's
// migration address; a host name is resolved first) in the network
// namespace of process pid (the guest's QEMU: on a compute host the host's
// own) through the kernel's socket destroy, as `ss -K` does, and says how
// many it closed. It needs CAP_NET_ADMIN and a kernel built with
// INET_DIAG_DESTROY; nsenter and ss come with util-linux and iproute2.
func CloseStreams(ctx context.Context, pid int, addr string) (int, error) {
	if err := CheckHost(addr); err != nil {
		return 0, err
	}
	if pid <= 0 {
		return 0, fmt.Errorf("close streams to %s: %w: process %d", addr, errdefs.ErrInvalidArgument, pid)
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(addr); err == nil {
		ips = []netip.Addr{ip}
	} else if ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", addr); err != nil {
		return 0, fmt.Errorf("close streams to %s: %w: %v", addr, errdefs.ErrUnavailable, err)
	}
	n := 0
	for _, ip := range ips {
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, "nsenter", "--net=/proc/"+strconv.Itoa(pid)+"/ns/net", "--",
			"ss", "-K", "-t", "-n", "-H", "dst", ip.Unmap().String())
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return n, fmt.Errorf("close streams to %s: ss: %w: %s", ip, err, strings.TrimSpace(stderr.String()))
		}
		n += closed(out)
	}
	return n, nil
}

// closed counts the sockets `ss -K -H` printed (one line each).
func closed(out []byte) int {
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}
