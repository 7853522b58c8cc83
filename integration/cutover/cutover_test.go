//go:build integration

// Package cutover_test proves `ferryd cutover` against the real peers:
// RabbitMQ (rabbitmqctl for the policy) and a stand-in nova-compute on
// Debian's python3-oslo.messaging that reads its control_exchange from the
// configuration file the cut-over edits, with least-privilege broker users
// for ferryd and for the cut-over.
package cutover_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/integration/testlog"

	"opendev.org/x/ferry/integration/rabbit"
	"opendev.org/x/ferry/rpc/oslo"
)

var broker rabbit.Broker

func TestMain(m *testing.M) {
	if err := rabbit.EnsureRunning(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var err error
	if broker, err = rabbit.FromEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func here() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Dir(self)
}

func novaPy() string { return filepath.Join(here(), "py", "novacompute.py") }

// env is one test's private vhost and its users: nova (everything in the
// vhost, as Nova's services have), ferryd and cutover (least privilege).
type env struct {
	vhost, host              string
	nova, ferryd, cut        rabbit.Broker
	dir, novaConf, ferrydCfg string
}

func ctl(t *testing.T, args ...string) {
	t.Helper()
	if _, err := rabbit.Ctl(context.Background(), append([]string{"-q"}, args...)...); err != nil {
		t.Fatal(err)
	}
}

func newEnv(t *testing.T, host string) *env {
	t.Helper()
	id := fmt.Sprintf("%d-%d", os.Getpid(), rand.IntN(1<<30))
	e := &env{vhost: "ferry-cut-" + id, host: host, dir: t.TempDir()}
	drop, err := rabbit.NewVHost(context.Background(), broker, e.vhost)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	q := regexp.QuoteMeta
	h := q(host)
	user := func(role, configure, write, read string) rabbit.Broker {
		name := "ferry-cut-" + role + "-" + id
		ctl(t, "add_user", name, "pw-"+id)
		t.Cleanup(func() { _, _ = rabbit.Ctl(context.Background(), "-q", "delete_user", name) })
		ctl(t, "set_permissions", "-p", e.vhost, name, configure, write, read)
		b := broker
		b.User, b.Password = name, "pw-"+id
		return b
	}
	e.nova = user("nova", ".*", ".*", ".*")
	// ferryd: its queue and the probe's, Nova's exchange (declared as oslo
	// does), publishing to the default exchange (forwards) and to
	// ferry-<host> (the probe); reading its queue and Nova's exchange
	// (bindings).
	e.ferryd = user("ferryd",
		`^(ferry\.compute\.`+h+`|ferry\.probe\..*|nova)$`,
		`^(ferry\.compute\.`+h+`|ferry\.probe\..*|amq\.default|ferry-`+h+`)$`,
		`^(ferry\.compute\.`+h+`|ferry\.probe\..*|nova)$`)
	// the cut-over: both host queues (declare, bind, unbind, move, delete)
	// and Nova's exchange.
	e.cut = user("cutover",
		`^(ferry\.compute\.`+h+`|compute\.`+h+`|nova)$`,
		`^(ferry\.compute\.`+h+`|compute\.`+h+`|amq\.default)$`,
		`^(ferry\.compute\.`+h+`|compute\.`+h+`|nova)$`)
	e.novaConf = filepath.Join(e.dir, "nova.conf")
	conf := fmt.Sprintf("# nova-compute, as the cut-over finds it\n[DEFAULT]\ntransport_url = %s\ndebug = false\n\n[oslo_messaging_rabbit]\n# kept\n",
		e.nova.URL(e.vhost))
	if err := os.WriteFile(e.novaConf, []byte(conf), 0o640); err != nil {
		t.Fatal(err)
	}
	e.ferrydCfg = filepath.Join(e.dir, "ferryd.yaml")
	cfg := fmt.Sprintf(`version: 1
host: %s
transport_url: %s
mode: companion
state_dir: %s
placement: {auth_type: none}
neutron: {auth_type: noauth, endpoint_override: "http://127.0.0.1:9"}
companion:
  cutover:
    nova_compute_config: %s
    stop: [/usr/bin/python3, %s, stop, %s]
    start: [/usr/bin/python3, %s, start, %s, %s, %s]
    transport_url: %s
`, host, e.ferryd.URL(e.vhost), filepath.Join(e.dir, "state"), e.novaConf, novaPy(), e.dir, novaPy(), e.dir, e.novaConf, host,
		e.cut.URL(e.vhost))
	if err := os.WriteFile(e.ferrydCfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) url(t *testing.T, b rabbit.Broker) oslo.TransportURL {
	t.Helper()
	u, err := oslo.ParseTransportURL(b.URL(e.vhost))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func py(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("/usr/bin/python3", append([]string{novaPy()}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("novacompute.py %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (e *env) startNova(t *testing.T) {
	t.Helper()
	t.Log(py(t, "start", e.dir, e.novaConf, e.host))
	t.Cleanup(func() { _, _ = exec.Command("/usr/bin/python3", novaPy(), "stop", e.dir).CombinedOutput() })
}

var ferrydBin string

func buildFerryd(t *testing.T) string {
	t.Helper()
	if ferrydBin != "" {
		return ferrydBin
	}
	out := filepath.Join(os.TempDir(), fmt.Sprintf("ferryd-cutover-test-%d", os.Getpid()))
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/ferryd")
	cmd.Dir = filepath.Join(here(), "..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build ferryd: %v\n%s", err, b)
	}
	ferrydBin = out
	t.Cleanup(func() { os.Remove(out) })
	return out
}

func (e *env) cutover(t *testing.T, direction string) {
	t.Helper()
	start := time.Now()
	out, err := exec.Command(buildFerryd(t), "cutover", "--config", e.ferrydCfg, direction).CombinedOutput()
	t.Logf("ferryd cutover %s (%s):\n%s", direction, time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("ferryd cutover %s: %v", direction, err)
	}
}

func testLog(t *testing.T) *logrus.Entry { return testlog.New(t, logrus.InfoLevel) }

// records reads what the stand-in nova-compute served.
func (e *env) records(t *testing.T) []record {
	t.Helper()
	f, err := os.Open(filepath.Join(e.dir, "record.jsonl"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rs []record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		rs = append(rs, r)
	}
	return rs
}

type record struct {
	Seq      int    `json:"seq"`
	Exchange string `json:"exchange"`
	PID      int    `json:"pid"`
}

func admin(t *testing.T, u oslo.TransportURL, exchange string) *oslo.Admin {
	t.Helper()
	a, err := oslo.DialAdmin(context.Background(), oslo.AdminOptions{URL: u, Exchange: exchange})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}
