package rabbit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// rabbitBin is where Debian keeps the scripts themselves: /usr/sbin's
// wrappers switch to the rabbitmq user, its home and its Erlang cookie,
// which a private node must not touch.
const rabbitBin = "/usr/lib/rabbitmq/bin"

// Node is a RabbitMQ node of a test's own, beside the shared broker:
// its own node name, data, logs, configuration, distribution port and
// Erlang cookie (HOME is a directory of the node's, so the system node's
// cookie is neither read nor written). It registers with the machine's
// epmd as any node does, and listens only where its rabbitmq.conf says.
// Nothing of the shared node is read or changed.
type Node struct {
	Name string // e.g. ferry-tls-1234@localhost
	Dir  string // everything of the node's lives here
	cmd  *exec.Cmd
	done chan struct{} // closed when the node's process has exited
	env  []string
}

// FreePort returns a loopback TCP port nothing listens on now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartNode starts a node named name@localhost in dir with conf as its
// rabbitmq.conf (which says where it listens) and no plugins, and waits
// until it serves. Stop stops it; the caller must call it.
func StartNode(ctx context.Context, dir, name, conf string) (*Node, error) {
	home := filepath.Join(dir, "home")
	for _, d := range []string{home, filepath.Join(dir, "mnesia"), filepath.Join(dir, "log")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	cookie := make([]byte, 16)
	_, _ = rand.Read(cookie)
	files := map[string]string{
		filepath.Join(home, ".erlang.cookie"):   strings.ToUpper(hex.EncodeToString(cookie)),
		filepath.Join(dir, "rabbitmq.conf"):     conf,
		filepath.Join(dir, "enabled_plugins"):   "[].\n", // no management listener beside the shared node's
		filepath.Join(dir, "rabbitmq-env.conf"): "",      // not /etc/rabbitmq's, which names the shared node
	}
	for f, content := range files {
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(filepath.Join(home, ".erlang.cookie"), 0o400); err != nil {
		return nil, err
	}
	dist, err := FreePort()
	if err != nil {
		return nil, err
	}
	n := &Node{Name: name + "@localhost", Dir: dir, done: make(chan struct{})}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RABBITMQ_") && !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "ERL_") {
			n.env = append(n.env, kv)
		}
	}
	n.env = append(n.env, "HOME="+home, "RABBITMQ_NODENAME="+n.Name,
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"), "RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", dist), "ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}")
	out, err := os.Create(filepath.Join(dir, "server.out"))
	if err != nil {
		return nil, err
	}
	n.cmd = exec.Command(filepath.Join(rabbitBin, "rabbitmq-server"))
	n.cmd.Env, n.cmd.Dir, n.cmd.Stdout, n.cmd.Stderr = n.env, dir, out, out
	// Its own process group, so that Stop can end all of it if it must;
	// SIGTERM to the script (which stops the node) if the test process
	// dies first, as it does on a go test timeout, where no deferred
	// Stop runs. (The signal follows the OS thread that started it: Go
	// ends threads only for goroutines that exit locked to one, which
	// nothing here does.)
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := n.cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start node %s: %w", n.Name, err)
	}
	go func() { _ = n.cmd.Wait(); out.Close(); close(n.done) }() // owner: Stop waits for done
	if err := n.await(ctx); err != nil {
		n.Stop()
		return nil, err
	}
	return n, nil
}

// await waits until the node has booted, or its process has ended.
func (n *Node) await(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		_, err := n.Ctl(ctx, "-q", "await_startup", "--timeout", "20")
		if err == nil {
			return nil
		}
		select {
		case <-n.done:
			log, _ := os.ReadFile(filepath.Join(n.Dir, "server.out"))
			return fmt.Errorf("node %s ended while starting: %s", n.Name, tail(log, 2000))
		case <-ctx.Done():
			return fmt.Errorf("node %s not up: %w (last: %w)", n.Name, ctx.Err(), err)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// Ctl runs rabbitmqctl against the node, with the node's HOME (cookie).
func (n *Node) Ctl(ctx context.Context, args ...string) (string, error) {
	c, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(c, filepath.Join(rabbitBin, "rabbitmqctl"), append([]string{"-n", n.Name}, args...)...)
	cmd.Env = n.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl -n %s %s: %w: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Stop stops the node (rabbitmqctl stop, then its process group if that
// did not end it within 30 s) and waits for its process.
func (n *Node) Stop() error {
	_, err := n.Ctl(context.Background(), "stop")
	select {
	case <-n.done:
		return nil
	case <-time.After(30 * time.Second):
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
	<-n.done
	return errors.Join(fmt.Errorf("node %s did not stop; killed", n.Name), err)
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
