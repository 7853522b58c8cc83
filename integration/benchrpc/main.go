// Command benchrpc is `make bench-rpc`: the same python3-oslo.messaging
// client drives (a) a Python oslo.messaging server, (b) ferry's Go server
// (rpc/oslo) and (c) a raw-AMQP floor that answers with a canned reply, each
// a no-op endpoint in its own process on the same broker, as interleaved
// rounds of 2,000 sequential calls and of 8 concurrent callers. It prints
// calls/s, p50/p99 latency and server CPU per 1,000 calls (utime+stime from
// /proc/PID/stat), medians over the rounds, and the ratios. Not a test.
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
		serveGo(*serve)
		return
	}
	if err := bench(*pairs); err != nil {
		fmt.Fprintln(os.Stderr, "bench-rpc:", err)
		os.Exit(1)
	}
}

func serveGo(url string) {
	config.Default().ApplyMaxProcs() // as ferryd runs
	u, err := oslo.ParseTransportURL(url)
	if err != nil {
		panic(err)
	}
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	noop := oslo.HandlerFunc(func(context.Context, *oslo.Request) (any, error) { return nil, nil })
	srv, err := oslo.NewServer(oslo.ServerOptions{URL: u, Server: "bench-go", NoFanout: true, Log: logrus.NewEntry(l)},
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

	cmd := exec.Command("/usr/bin/python3", filepath.Join(pyDir(), "bench.py"), url, strconv.Itoa(pairs),
		fmt.Sprintf("py=%d", py.cmd.Process.Pid), fmt.Sprintf("go=%d", goSrv.cmd.Process.Pid),
		fmt.Sprintf("floor=%d", floor.cmd.Process.Pid))
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
		fmt.Printf("  round %d %-5s %-4s %6.0f calls/s  p50 %6.2f ms  p99 %6.2f ms  cpu %7.3f s/1000 calls\n",
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
	fmt.Printf("  %-5s %-4s %10s %9s %9s %14s\n", "", "", "calls/s", "p50 ms", "p99 ms", "cpu s/1000")
	for _, t := range []string{"py", "go", "floor"} {
		for _, m := range []string{"seq", "conc"} {
			fmt.Printf("  %-5s %-4s %10.0f %9.2f %9.2f %14.3f\n", t, m, med(t, m, func(r result) float64 { return r.CallsPerS }),
				med(t, m, func(r result) float64 { return r.P50 }), med(t, m, func(r result) float64 { return r.P99 }),
				med(t, m, func(r result) float64 { return r.CPU }))
		}
	}
	cpu := func(t string) float64 {
		return (med(t, "seq", func(r result) float64 { return r.CPU }) + med(t, "conc", func(r result) float64 { return r.CPU })) / 2
	}
	ratio := cpu("py") / max(cpu("go"), 1e-9)
	p99go, p99py := med("go", "seq", func(r result) float64 { return r.P99 }), med("py", "seq", func(r result) float64 { return r.P99 })
	fmt.Printf("targets: cpu_ratio >= 10 (%s), Go p99 <= Python p99 / 2 (%s)\n", verdict(ratio >= 10), verdict(p99go <= p99py/2))
	fmt.Printf("bench-rpc: cpu_ratio=%.1f p99_go_ms=%.2f p99_py_ms=%.2f p50_go_ms=%.2f p50_py_ms=%.2f p50_floor_ms=%.2f\n",
		ratio, p99go, p99py, med("go", "seq", func(r result) float64 { return r.P50 }),
		med("py", "seq", func(r result) float64 { return r.P50 }), med("floor", "seq", func(r result) float64 { return r.P50 }))
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
