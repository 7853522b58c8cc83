// Package ferrylab runs ferryd on the lab's hosts with Nova's conductor
// played by python3-nova (py/conductor.py): the environment of the ferryd
// integration tests and of `make demo`. Each ferryd runs in its host's mount
// and UTS namespaces (so it sees that host's libvirtd socket and instances
// directory) but in the root network namespace, where RabbitMQ listens.
package ferrylab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"opendev.org/x/ferry/integration/lab"
	"opendev.org/x/ferry/integration/rabbit"
)

// Options tune the ferryd configuration the environment writes.
type Options struct {
	Migration string // extra lines under "migration:" (indented two spaces), e.g. "  live_migration_downtime: 2000"
	Logf      func(string, ...any)
}

// Env is a running environment.
type Env struct {
	Lab       *lab.Lab
	URL       string // transport_url of the environment's vhost
	Ferryd    map[string]*Ferryd
	Conductor *Conductor
	Placement *Placement
	o         Options
	bin       string
	drop      func()
	broker    rabbit.Broker
	vhost     string
}

// Secrets the environment plants: the ferryds' broker password and the
// token in every request context the conductor stand-in sends. Neither may
// appear in any log, journal or CLI output.
const (
	TestPassword = "s3cr/t?#pw,@x"
	TestToken    = "gAAAAAferry-test-token-9f8e7d"
)

// CheckSecrets reads every file the environment's processes wrote (logs,
// journals, the conductor's log) and returns the places where a planted
// secret appears.
func (e *Env) CheckSecrets() []string {
	var leaks []string
	paths := []string{filepath.Join(lab.WorkDir, "conductor.log"), cliLog()}
	for _, f := range e.Ferryd {
		paths = append(paths, f.Log)
		filepath.Walk(f.StateDir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				paths = append(paths, p)
			}
			return nil
		})
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, s := range []string{TestPassword, url.QueryEscape(TestPassword), url.PathEscape(TestPassword), TestToken} {
			if strings.Contains(string(b), s) {
				leaks = append(leaks, fmt.Sprintf("%s contains %q", p, s))
			}
		}
	}
	return leaks
}

// Ferryd is one host's daemon.
type Ferryd struct {
	Host     *lab.Host
	Config   string // path
	StateDir string
	Log      string // path of its log
	// Broker is this ferryd's own way to RabbitMQ: cutting it partitions
	// this ferryd from the broker, and no other process.
	Broker *Proxy
	env    *Env
	proc   *lab.Proc
	start  int64 // the log's size when the daemon last started
}

func srcDir() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Dir(self)
}

// Start builds ferryd, writes a configuration per host, and starts every
// ferryd and the conductor stand-in, with a real Placement.
func Start(ctx context.Context, l *lab.Lab, o Options) (*Env, error) {
	if o.Logf == nil {
		o.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	}
	if err := rabbit.EnsureRunning(ctx); err != nil {
		return nil, err
	}
	b, err := rabbit.FromEnv()
	if err != nil {
		return nil, err
	}
	vh := fmt.Sprintf("ferry-ferryd-%d", os.Getpid())
	drop, err := rabbit.NewVHost(ctx, b, vh)
	if err != nil {
		return nil, err
	}
	// The ferryds log in as a user of their own whose password has every
	// character a transport URL must escape: no log line, journal or CLI
	// output may ever show it (CheckSecrets).
	fb, dropUser, err := rabbit.NewUser(ctx, b, vh, fmt.Sprintf("ferryd-%d", os.Getpid()), TestPassword)
	if err != nil {
		drop()
		return nil, err
	}
	e := &Env{Lab: l, URL: b.URL(vh), Ferryd: map[string]*Ferryd{}, o: o, bin: filepath.Join(lab.WorkDir, "ferryd"),
		broker: fb, vhost: vh, drop: func() { dropUser(); drop() }}
	ok := false
	defer func() {
		if !ok {
			e.Close()
		}
	}()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	for _, b := range []struct{ out, pkg string }{{e.bin, "./cmd/ferryd"}, {filepath.Join(lab.WorkDir, "ferry"), "./cmd/ferry"}} {
		build := exec.CommandContext(ctx, goBin, "build", "-o", b.out, b.pkg)
		build.Dir = filepath.Join(srcDir(), "..", "..")
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %w: %s", b.pkg, err, out)
		}
	}
	if e.Placement, err = startPlacement(ctx, l); err != nil {
		return nil, err
	}
	for _, h := range l.Hosts {
		f := &Ferryd{Host: h, env: e, StateDir: filepath.Join(lab.WorkDir, "ferryd-"+h.Name),
			Config: filepath.Join(lab.WorkDir, "ferryd-"+h.Name+".yaml"), Log: filepath.Join(lab.WorkDir, "ferryd-"+h.Name+".log")}
		if f.Broker, err = NewProxy(b.Host); err != nil {
			return nil, err
		}
		e.Ferryd[h.Name] = f
		if err := os.WriteFile(f.Config, []byte(e.config(h, f.Broker.Addr())), 0o600); err != nil {
			return nil, err
		}
		if err := f.Start(ctx); err != nil {
			return nil, err
		}
	}
	if e.Conductor, err = startConductor(ctx, e.URL, o.Logf); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

func (e *Env) config(h *lab.Host, broker string) string {
	b := e.broker
	b.Host = broker
	var sb strings.Builder
	fmt.Fprintf(&sb, "version: 1\nhost: %s\ntransport_url: %q\nlibvirt_uri: qemu:///system\n", h.Hostname, b.URL(e.vhost))
	fmt.Fprintf(&sb, "live_migration_inbound_addr: %s\ninstances_path: %s\nstate_dir: %s\n", h.Mig, lab.InstancesPath,
		filepath.Join(lab.WorkDir, "ferryd-"+h.Name))
	sb.WriteString("peers:\n")
	for _, p := range e.Lab.Hosts {
		if p != h {
			fmt.Fprintf(&sb, "  %s:\n    management: %s\n    libvirt_uri: %q\n", p.Hostname, p.Mgmt, p.URI())
		}
	}
	sb.WriteString("oslo_messaging_rabbit:\n  rpc_response_timeout: 60s\n  long_rpc_timeout: 600s\n")
	sb.WriteString("migration:\n" + e.o.Migration + "\n")
	fmt.Fprintf(&sb, "placement:\n  auth_type: noauth\n  endpoint_override: %s\n", e.Placement.URL)
	sb.WriteString("log:\n  level: debug\n  format: json\n")
	// The lab's ferryds share the machine's network namespace: each takes a
	// free loopback port for its status API (StatusURL reads it).
	sb.WriteString("status:\n  listen: 127.0.0.1:0\n")
	return sb.String()
}

// Start starts the daemon and waits until it consumes its queues; a daemon
// that runs already is left as it is.
func (f *Ferryd) Start(ctx context.Context) error {
	if f.proc != nil {
		select {
		case <-f.proc.Done():
		default:
			return nil
		}
	}
	return f.startUntil(ctx, `"msg":"serving: every queue consumed"`)
}

// StartUnserved starts the daemon while its broker is unreachable and
// returns once its engine resumed a journalled migration (it serves no RPC
// until the broker answers).
func (f *Ferryd) StartUnserved(ctx context.Context) error {
	return f.startUntil(ctx, `"msg":"resuming journalled migration"`)
}

// startUntil starts the daemon and waits for a log line containing mark.
func (f *Ferryd) startUntil(ctx context.Context, mark string) error {
	off := FileSize(f.Log)
	f.start = off
	p, err := f.env.Lab.StartIn(f.Host, f.Log, f.env.bin, "--config", f.Config)
	if err != nil {
		return err
	}
	f.proc = p
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(Tail(f.Log, off), mark) {
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("ferryd on %s exited: %s", f.Host.Name, Tail(f.Log, off))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("ferryd on %s: no %s after 60s: %s", f.Host.Name, mark, Tail(f.Log, off))
}

// Kill sends a signal and waits for the daemon to end.
func (f *Ferryd) Kill(sig syscall.Signal) error {
	if err := f.proc.Signal(sig); err != nil {
		return err
	}
	err := f.proc.Wait(60 * time.Second)
	if sig == syscall.SIGKILL || err == nil {
		return nil
	}
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 0 {
		return nil
	}
	return err
}

// CLI runs the ferry command against this daemon's state directory.
func (f *Ferryd) CLI(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(lab.WorkDir, "ferry"), append(args, "--state-dir", f.StateDir)...).CombinedOutput()
	if l, lerr := os.OpenFile(cliLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); lerr == nil {
		fmt.Fprintf(l, "$ ferry %s\n%s\n", strings.Join(args, " "), out)
		l.Close()
	}
	return string(out), err
}

// cliLog keeps every CLI output of the run, for CheckSecrets.
func cliLog() string { return filepath.Join(lab.WorkDir, "cli.log") }

// Journal reads the engine's journal entry of a migration (ferry's record).
func (f *Ferryd) Journal(id string) (map[string]any, error) {
	b, err := os.ReadFile(filepath.Join(f.StateDir, "migrations", id+".json"))
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(b, &m)
}

// Close stops the conductor and the daemons and drops the vhost.
func (e *Env) Close() {
	if e.Conductor != nil {
		e.Conductor.Close()
	}
	for _, f := range e.Ferryd {
		if f.proc != nil {
			select {
			case <-f.proc.Done():
			default:
				_ = f.Kill(syscall.SIGTERM)
			}
		}
	}
	for _, f := range e.Ferryd {
		if f.Broker != nil {
			f.Broker.Close()
		}
	}
	if e.Placement != nil {
		e.Placement.Close()
	}
	if e.drop != nil {
		e.drop()
	}
}

// FileSize is a file's size, 0 when it is missing.
func FileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Tail is a file from offset off on.
func Tail(p string, off int64) string {
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	f.Seek(off, 0)
	b, _ := io.ReadAll(f)
	return string(b)
}

// StatusURL is where the running daemon serves its status API and
// /metrics, as its log's "status API serving" line says.
func (f *Ferryd) StatusURL() (string, error) {
	for range 50 {
		for _, l := range strings.Split(Tail(f.Log, f.start), "\n") {
			var e struct{ Msg, Listen string }
			if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "status API serving" && e.Listen != "" {
				return "http://" + e.Listen, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", fmt.Errorf("ferryd on %s: no \"status API serving\" line in its log", f.Host.Name)
}

// Event is one line the conductor stand-in printed.
type Event map[string]any

// Str returns a string value.
func (e Event) Str(k string) string { s, _ := e[k].(string); return s }

// Conductor is the python3-nova conductor stand-in and driver.
type Conductor struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	events chan Event
	mu     sync.Mutex
	seen   []Event
	done   chan struct{}
}

func startConductor(ctx context.Context, url string, logf func(string, ...any)) (*Conductor, error) {
	cmd := exec.Command("/usr/bin/python3", filepath.Join(srcDir(), "py", "conductor.py"), url, TestToken)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	stderr, err := os.Create(filepath.Join(lab.WorkDir, "conductor.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &Conductor{cmd: cmd, in: in, events: make(chan Event, 1024), done: make(chan struct{})}
	go func() { // owner: Conductor (Close waits)
		defer close(c.done)
		defer close(c.events)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			var e Event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				c.events <- e
			} else {
				logf("conductor: %s", sc.Text())
			}
		}
	}()
	if _, err := c.Next(ctx, 2*time.Minute, func(e Event) bool { return e.Str("event") == "ready" }); err != nil {
		return nil, fmt.Errorf("conductor stand-in: %w (see %s)", err, stderr.Name())
	}
	return c, nil
}

// Send writes one command.
func (c *Conductor) Send(cmd map[string]any) error {
	b, _ := json.Marshal(cmd)
	_, err := c.in.Write(append(b, '\n'))
	return err
}

// Next returns the next event matching pred, keeping every event it passes.
func (c *Conductor) Next(ctx context.Context, timeout time.Duration, pred func(Event) bool) (Event, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case e, ok := <-c.events:
			if !ok {
				return nil, fmt.Errorf("conductor stand-in exited")
			}
			c.mu.Lock()
			c.seen = append(c.seen, e)
			c.mu.Unlock()
			if e.Str("event") == "driver_error" {
				return e, fmt.Errorf("conductor driver: %s: %s", e.Str("class"), e.Str("message"))
			}
			if pred(e) {
				return e, nil
			}
		case <-t.C:
			return nil, fmt.Errorf("no matching event within %s", timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Seen returns every event read so far.
func (c *Conductor) Seen() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Event(nil), c.seen...)
}

// Statuses lists the statuses saved for Migration id through the
// conductor, in order (a progress save carries no status).
func (c *Conductor) Statuses(id int) []string {
	var out []string
	for _, e := range c.Seen() {
		if e.Str("object") != "Migration" || e.Str("method") != "save" || e["id"] != float64(id) {
			continue
		}
		if f, _ := e["fields"].(map[string]any); f != nil {
			if s, ok := f["status"].(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// Close ends the stand-in.
func (c *Conductor) Close() {
	c.in.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	_ = c.cmd.Wait()
}
