package nova

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
)

// HostMethods are the host-level calls a native-mode ferryd answers as the
// host's compute service: get_host_uptime, which nova-api calls for every
// hypervisor in GET /os-hypervisors/detail from microversion 2.88 (an
// unanswered one fails the whole listing with a 500).
func HostMethods() map[string]oslo.HandlerFunc {
	return map[string]oslo.HandlerFunc{"get_host_uptime": hostUptime}
}

// hostUptime answers what the libvirt driver answers: the output of
// `env LANG=C uptime` on the host.
func hostUptime(ctx context.Context, _ *oslo.Request) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "uptime")
	cmd.Env = append(os.Environ(), "LANG=C", "LC_ALL=C")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("get_host_uptime: uptime: %w: %w", errdefs.ErrUnavailable, err)
	}
	return string(out), nil
}
