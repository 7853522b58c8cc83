package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// setupNetworks builds the switch namespace with two bridges (management
// 198.18.0.0/24, migration 198.19.0.0/24) and plugs every host into both.
// Nothing is added to the root network namespace unless Options.RootMgmt
// asks for its management address (a veth whose peer is in the switch
// namespace, so it goes when that namespace is deleted).
func (l *Lab) setupNetworks(ctx context.Context) error {
	nss := []string{switchNetns}
	for _, h := range l.Hosts {
		nss = append(nss, h.Netns)
	}
	if err := l.rec.add(func(r *record) { r.Netns = append(r.Netns, nss...) }); err != nil {
		return err
	}
	var cmds [][]string
	for _, ns := range nss {
		cmds = append(cmds, []string{"ip", "netns", "add", ns}, []string{"ip", "-n", ns, "link", "set", "lo", "up"})
	}
	sw := []string{"ip", "-n", switchNetns}
	cmds = append(cmds,
		append(sw, "link", "add", "br-mgmt", "type", "bridge"),
		append(sw, "link", "add", "br-mig", "type", "bridge"),
		append(sw, "addr", "add", storageAddr+"/24", "dev", "br-mgmt"),
		append(sw, "link", "set", "br-mgmt", "up"),
		append(sw, "link", "set", "br-mig", "up"),
	)
	for _, h := range l.Hosts {
		hn := []string{"ip", "-n", h.Netns}
		for _, n := range []struct{ br, port, inner, addr string }{
			{"br-mgmt", h.Name + "-mgmt", "mgmt0", h.Mgmt.String()},
			{"br-mig", h.Name + "-mig", "mig0", h.Mig.String()},
		} {
			cmds = append(cmds,
				append(sw, "link", "add", n.port, "type", "veth", "peer", "name", n.inner, "netns", h.Netns),
				append(sw, "link", "set", n.port, "master", n.br),
				append(sw, "link", "set", n.port, "up"),
				append(hn, "addr", "add", n.addr+"/24", "dev", n.inner),
				append(hn, "link", "set", n.inner, "up"),
			)
		}
	}
	if l.opts.RootMgmt {
		cmds = append(cmds,
			[]string{"ip", "link", "add", RootMgmtIface, "type", "veth", "peer", "name", "root-mgmt", "netns", switchNetns},
			append(sw, "link", "set", "root-mgmt", "master", "br-mgmt"),
			append(sw, "link", "set", "root-mgmt", "up"),
			[]string{"ip", "addr", "add", RootMgmtAddr.String() + "/24", "dev", RootMgmtIface},
			[]string{"ip", "link", "set", RootMgmtIface, "up"},
		)
	}
	for _, c := range cmds {
		if _, err := run(ctx, c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// netnsPIDs lists the processes inside a network namespace.
func netnsPIDs(ns string) []int {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// IfaceBytes are an interface's byte counters.
type IfaceBytes struct{ TX, RX uint64 }

// Counters returns the byte counters of the host's interfaces (mgmt0, mig0).
func (h *Host) Counters(ctx context.Context) (map[string]IfaceBytes, error) {
	out, err := run(ctx, "ip", "-n", h.Netns, "-s", "-j", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		Name  string `json:"ifname"`
		Stats struct {
			RX struct{ Bytes uint64 } `json:"rx"`
			TX struct{ Bytes uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("counters of %s: %w", h.Name, err)
	}
	m := map[string]IfaceBytes{}
	for _, k := range links {
		m[k.Name] = IfaceBytes{TX: k.Stats.TX.Bytes, RX: k.Stats.RX.Bytes}
	}
	return m, nil
}

// SetLink brings one of the host's interfaces (mgmt0, mig0) up or down, as a
// cable pull would.
func (h *Host) SetLink(ctx context.Context, iface string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	_, err := run(ctx, "ip", "-n", h.Netns, "link", "set", iface, state)
	return err
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
