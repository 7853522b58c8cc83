// Command benchrpc is `make bench-rpc`: the same python3-oslo.messaging
// client drives (a) a Python oslo.messaging server, (b) ferry's Go server
// (rpc/oslo), (c) a raw py-amqp floor that answers with a canned reply, (d)
// the Go floor, a raw amqp091-go server with ferry's semantics (an ack after
// a confirmed reply, gofloor.go), and (e) a call forwarded by ferry's
// companion-mode server to a Python oslo.messaging server, each a no-op
// endpoint in its own process on the same broker, as interleaved rounds of
// 2,000 sequential calls and of 8 concurrent callers. It prints calls/s,
// p50/p99 latency and server CPU per 1,000 calls (utime+stime from
// /proc/PID/stat; for (e), the forwarder's), medians over the rounds, and
// the ratios: cpu_ratio (Python server ÷ ferry), go_floor_ratio (ferry ÷ the
// Go floor) and what forwarding adds to a call's p50/p99. Not a test.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/integration/rabbit"
	"opendev.org/x/ferry/rpc/oslo"
)

func main() {
	serve := flag.String("serve-go", "", "internal: run the Go bench server on this transport URL")
	serveFwd := flag.String("serve-fwd", "", "internal: run the companion-mode forwarder on this transport URL")
	serveFloor := flag.Bool("serve-gofloor", false, "internal: run the Go floor (args: host user password vhost)")
	cpuprofile := flag.String("cpuprofile", "", "internal: write the Go server's CPU profile here")
	pairs := flag.Int("pairs", 3, "interleaved rounds")
	flag.Parse()
	if *serve != "" {
		if *cpuprofile != "" {
			f, err := os.Create(*cpuprofile)
			if err != nil {
				panic(err)
			}
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
		serveGo(*serve, nil)
		return
	}
	if *serveFwd != "" {
		serveGo(*serveFwd, &oslo.Forward{To: "compute.bench-fwd"})
		return
	}
	if *serveFloor {
		if err := serveGoFloor(flag.Arg(0), flag.Arg(1), flag.Arg(2), flag.Arg(3)); err != nil {
			fmt.Fprintln(os.Stderr, "gofloor:", err)
			os.Exit(1)
		}
		return
	}
	if err := bench(*pairs); err != nil {
		fmt.Fprintln(os.Stderr, "bench-rpc:", err)
		os.Exit(1)
	}
}

// serveGo runs ferry's server: on compute.bench-go with a no-op endpoint,
// or, with fwd, as companion mode's forwarder on ferry.compute.bench-fwd
// (owning nothing).
func serveGo(url string, fwd *oslo.Forward) {
	config.Default().ApplyMaxProcs() // as ferryd runs
	u, err := oslo.ParseTransportURL(url)
	if err != nil {
		panic(err)
	}
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	noop := oslo.HandlerFunc(func(context.Context, *oslo.Request) (any, error) { return nil, nil })
	o := oslo.ServerOptions{URL: u, Server: "bench-go", NoFanout: true, Log: logrus.NewEntry(l)}
	if fwd != nil {
		o.Server, o.Queue, o.Forward = "bench-fwd", "ferry.compute.bench-fwd", fwd
	}
	srv, err := oslo.NewServer(o,
		&oslo.Dispatcher{Endpoints: []oslo.Endpoint{{Version: "6.4", Methods: map[string]oslo.Handler{"noop": noop}}}})
	if err != nil {
		panic(err)
	}
	go func() { _ = srv.Serve(context.Background()) }()
	<-srv.Ready()
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = srv.Shutdown(context.Background())
}

func pyDir() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(self), "..", "oslo", "py")
}

type proc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
}

func start(name string, args ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(out)
	ready := make(chan bool, 1)
	go func() {
		ok := sc.Scan() && sc.Text() == "READY"
		ready <- ok
		for sc.Scan() {
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			return nil, fmt.Errorf("%s did not start", name)
		}
	case <-time.After(60 * time.Second):
		return nil, fmt.Errorf("%s: no READY within 60s", name)
	}
	return &proc{cmd: cmd, in: in}, nil
}

func (p *proc) stop() {
	p.in.Close()
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

type result struct {
	Target    string  `json:"target"`
	Mode      string  `json:"mode"`
	Calls     int     `json:"calls"`
	CallsPerS float64 `json:"calls_per_s"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	CPU       float64 `json:"cpu_s_per_1000"`
	Round     int     `json:"round"`
}

func bench(pairs int) error {
	ctx := context.Background()
	if err := rabbit.EnsureRunning(ctx); err != nil {
		return err
	}
	b, err := rabbit.FromEnv()
	if err != nil {
		return err
	}
	vh := fmt.Sprintf("ferry-bench-%d", os.Getpid())
	drop, err := rabbit.NewVHost(ctx, b, vh)
	if err != nil {
		return err
	}
	defer drop()
	url := b.URL(vh)
	self, _ := os.Executable()
	fmt.Printf("bench-rpc: broker %s vhost %s, %d interleaved rounds\n", b.Host, vh, pairs)
	py, err := start("/usr/bin/python3", filepath.Join(pyDir(), "peer.py"), "server", url, "bench-py")
	if err != nil {
		return err
	}
	defer py.stop()
	goSrv, err := start(self, append([]string{"-serve-go", url}, profileArg()...)...)
	if err != nil {
		return err
	}
	defer goSrv.stop()
	floor, err := start("/usr/bin/python3", filepath.Join(pyDir(), "floor.py"), b.Host, b.User, b.Password, vh)
	if err != nil {
		return err
	}
	defer floor.stop()
	gofloor, err := start(self, "-serve-gofloor", b.Host, b.User, b.Password, vh)
	if err != nil {
		return err
	}
	defer gofloor.stop()
	// Companion mode: the Python server's queue is bound to its own control
	// exchange only, so the client's calls reach it through ferry.
	pyTarget, err := start("/usr/bin/python3", filepath.Join(pyDir(), "peer.py"), "server", url, "bench-fwd", "ferry-bench-fwd")
	if err != nil {
		return err
	}
	defer pyTarget.stop()
	fwd, err := start(self, "-serve-fwd", url)
	if err != nil {
		return err
	}
	defer fwd.stop()

	cmd := exec.Command("/usr/bin/python3", filepath.Join(pyDir(), "bench.py"), url, strconv.Itoa(pairs),
		fmt.Sprintf("py=%d", py.cmd.Process.Pid), fmt.Sprintf("go=%d", goSrv.cmd.Process.Pid),
		fmt.Sprintf("floor=%d", floor.cmd.Process.Pid), fmt.Sprintf("gofloor=%d", gofloor.cmd.Process.Pid),
		fmt.Sprintf("fwd=%d", fwd.cmd.Process.Pid))
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return err
	}
	var rs []result
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("bench.py: %q", sc.Text())
		}
		fmt.Printf("  round %d %-7s %-4s %6.0f calls/s  p50 %6.2f ms  p99 %6.2f ms  cpu %7.3f s/1000 calls\n",
			r.Round, r.Target, r.Mode, r.CallsPerS, r.P50, r.P99, r.CPU)
		rs = append(rs, r)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("bench.py: %w", err)
	}
	med := func(target, mode string, f func(result) float64) float64 {
		var xs []float64
		for _, r := range rs {
			if r.Target == target && r.Mode == mode {
				xs = append(xs, f(r))
			}
		}
		if len(xs) == 0 {
			return 0
		}
		sort.Float64s(xs)
		return xs[len(xs)/2]
	}
	fmt.Println("medians:")
	fmt.Printf("  %-7s %-4s %10s %9s %9s %14s\n", "", "", "calls/s", "p50 ms", "p99 ms", "cpu s/1000")
	for _, t := range []string{"py", "go", "floor", "gofloor", "fwd"} {
		for _, m := range []string{"seq", "conc"} {
			fmt.Printf("  %-7s %-4s %10.0f %9.2f %9.2f %14.3f\n", t, m, med(t, m, func(r result) float64 { return r.CallsPerS }),
				med(t, m, func(r result) float64 { return r.P50 }), med(t, m, func(r result) float64 { return r.P99 }),
				med(t, m, func(r result) float64 { return r.CPU }))
		}
	}
	cpu := func(t string) float64 {
		return (med(t, "seq", func(r result) float64 { return r.CPU }) + med(t, "conc", func(r result) float64 { return r.CPU })) / 2
	}
	ratio := cpu("py") / max(cpu("go"), 1e-9)
	floorRatio := cpu("go") / max(cpu("gofloor"), 1e-9)
	p50 := func(t string) float64 { return med(t, "seq", func(r result) float64 { return r.P50 }) }
	p99 := func(t string) float64 { return med(t, "seq", func(r result) float64 { return r.P99 }) }
	fwdP50, fwdP99 := p50("fwd")-p50("py"), p99("fwd")-p99("py")
	fmt.Println("(fwd: a call forwarded by ferry's companion-mode server to a Python server; its cpu is the forwarder's)")
	fmt.Printf("targets: cpu_ratio >= 4 (%s), go_floor_ratio <= 1.5 (%s), Go p99 <= Python p99 (%s), forwarding adds <= 1 ms at p50 (%s)\n",
		verdict(ratio >= 4), verdict(floorRatio <= 1.5), verdict(p99("go") <= p99("py")), verdict(fwdP50 <= 1))
	fmt.Printf("bench-rpc: cpu_ratio=%.1f go_floor_ratio=%.2f p99_go_ms=%.2f p99_py_ms=%.2f p50_go_ms=%.2f p50_py_ms=%.2f "+
		"p50_floor_ms=%.2f p50_gofloor_ms=%.2f fwd_added_p50_ms=%.2f fwd_added_p99_ms=%.2f\n",
		ratio, floorRatio, p99("go"), p99("py"), p50("go"), p50("py"), p50("floor"), p50("gofloor"), fwdP50, fwdP99)
	return nil
}

func profileArg() []string {
	if p := os.Getenv("FERRY_BENCH_CPUPROFILE"); p != "" {
		return []string{"-cpuprofile", p}
	}
	return nil
}

func verdict(ok bool) string {
	return strings.ToUpper(map[bool]string{true: "met", false: "missed"}[ok])
}
