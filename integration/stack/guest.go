package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/pkg/virt"
)

// ConsoleLog is where Nova's libvirt driver has QEMU write a server's
// serial console on a host (root-namespace path).
func (h *HostInfo) ConsoleLog(server string) string {
	return filepath.Join(h.Instances, server, "console.log")
}

// Dial opens a libvirt connection to the host's libvirtd.
func (h *HostInfo) Dial(ctx context.Context) (*virt.Conn, error) {
	return virt.Dial(ctx, h.URI, virt.Timeouts{})
}

// Run runs a command inside the host's network, mount and UTS namespaces.
func (h *HostInfo) Run(ctx context.Context, args ...string) (string, error) {
	return runIn(ctx, h.NSPID, args...)
}

// Counters returns the TX byte counters of the host's interfaces.
func (h *HostInfo) Counters(ctx context.Context) (map[string]uint64, error) {
	out, err := exec.CommandContext(ctx, "ip", "-n", h.Netns, "-s", "-j", "link", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("counters of %s: %w", h.Netns, err)
	}
	var links []struct {
		Name  string `json:"ifname"`
		Stats struct {
			TX struct{ Bytes uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, err
	}
	m := map[string]uint64{}
	for _, l := range links {
		m[l.Name] = l.Stats.TX.Bytes
	}
	return m, nil
}

// Console follows a console log from its first byte. It keeps the file
// open, so it reads to the end even after Nova deletes the source's
// instance directory at the end of a live migration.
type Console struct {
	f       *os.File
	partial []byte
	beats   []lab.Beat
}

// OpenConsole opens a console log, waiting up to timeout for it to appear.
func OpenConsole(ctx context.Context, path string, timeout time.Duration) (*Console, error) {
	deadline := time.Now().Add(timeout)
	for {
		f, err := os.Open(path)
		if err == nil {
			return &Console{f: f}, nil
		}
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return nil, fmt.Errorf("console log: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Beats reads what was written since the last call and returns every
// heartbeat so far.
func (c *Console) Beats() ([]lab.Beat, error) {
	b, err := io.ReadAll(c.f)
	if err != nil {
		return c.beats, err
	}
	c.partial = append(c.partial, b...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		if beat, ok := lab.ParseBeat(string(c.partial[:i])); ok {
			c.beats = append(c.beats, beat)
		}
		c.partial = c.partial[i+1:]
	}
	return c.beats, nil
}

// Wait waits until the console shows at least n heartbeats.
func (c *Console) Wait(ctx context.Context, n int, timeout time.Duration) ([]lab.Beat, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := c.Beats()
		if err != nil {
			return b, err
		}
		if len(b) >= n {
			return b, nil
		}
		if time.Now().After(deadline) {
			return b, fmt.Errorf("%s: %d of %d heartbeats after %s; last bytes: %q", c.f.Name(), len(b), n, timeout, lastBytes(c.f.Name(), 600))
		}
		select {
		case <-ctx.Done():
			return b, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close closes the log.
func (c *Console) Close() error { return c.f.Close() }

func lastBytes(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Continuous checks that heartbeats come from one boot, each the next.
func Continuous(beats []lab.Beat) error {
	for i := 1; i < len(beats); i++ {
		if beats[i].Boot != beats[0].Boot {
			return fmt.Errorf("heartbeat: boot id %s after %s: the guest rebooted", beats[i].Boot, beats[0].Boot)
		}
		if beats[i].N != beats[i-1].N+1 {
			return fmt.Errorf("heartbeat: n=%d after n=%d", beats[i].N, beats[i-1].N)
		}
	}
	return nil
}
