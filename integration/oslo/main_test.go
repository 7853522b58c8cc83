//go:build integration

// Package oslo_test proves rpc/oslo against the real peers: RabbitMQ and
// Debian's python3-oslo.messaging / python3-nova run by /usr/bin/python3.
package oslo_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/integration/testlog"

	"opendev.org/x/ferry/integration/rabbit"
	"opendev.org/x/ferry/rpc/oslo"
)

var (
	broker rabbit.Broker
	vhost  string
)

func TestMain(m *testing.M) {
	ctx := context.Background()
	if err := rabbit.EnsureRunning(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var err error
	if broker, err = rabbit.FromEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	vhost = fmt.Sprintf("ferry-oslo-%d", os.Getpid())
	drop, err := rabbit.NewVHost(ctx, broker, vhost)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	drop()
	os.Exit(code)
}

func pyDir() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(self), "py")
}

func testLog(t *testing.T) *logrus.Entry { return testlog.New(t, logrus.DebugLevel) }

func mustURL(t *testing.T, vh string) oslo.TransportURL {
	t.Helper()
	u, err := oslo.ParseTransportURL(broker.URL(vh))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// pyPeer is a /usr/bin/python3 process running py/peer.py.
type pyPeer struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	mu  sync.Mutex
}

func startPy(t *testing.T, args ...string) *pyPeer {
	t.Helper()
	cmd := exec.Command("/usr/bin/python3", append([]string{filepath.Join(pyDir(), "peer.py")}, args...)...)
	cmd.Stderr = testlog.Writer(t)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("python peer: %v", err)
	}
	p := &pyPeer{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	p.out.Buffer(make([]byte, 1<<20), 64<<20)
	t.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return p
}

// line reads the next output line.
func (p *pyPeer) line(t *testing.T) string {
	t.Helper()
	if !p.out.Scan() {
		t.Fatalf("python peer ended: %v", p.out.Err())
	}
	return p.out.Text()
}

// do sends one command and decodes the answer.
func (p *pyPeer) do(t *testing.T, cmd map[string]any) pyAnswer {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := json.Marshal(cmd)
	if _, err := p.in.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
	var a pyAnswer
	if err := json.Unmarshal([]byte(p.line(t)), &a); err != nil {
		t.Fatal(err)
	}
	return a
}

type pyAnswer struct {
	Result  json.RawMessage   `json:"result"`
	Error   *pyError          `json:"error"`
	Replies []json.RawMessage `json:"replies"`
}

type pyError struct {
	Class   string   `json:"class"`
	Module  string   `json:"module"`
	Message string   `json:"message"`
	ExcType string   `json:"exc_type"`
	MRO     []string `json:"mro"`
}

func (p *pyPeer) rawCmd(vh string) map[string]any {
	return map[string]any{"op": "raw", "amqp": map[string]string{
		"host": broker.Host, "user": broker.User, "password": broker.Password, "vhost": vh}}
}
