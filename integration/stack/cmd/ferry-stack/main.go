// Command ferry-stack is `make stack` and `make stack-down`, and how one CI
// run shares one stack between test packages:
//
//	ferry-stack up     start a stack owned by a background process, print how to use it
//	                   (exit status 3: one was running already, and still is)
//	ferry-stack down   tear the running stack down (or reap a killed one's leftovers)
//	ferry-stack serve  own a stack in the foreground until SIGINT/SIGTERM (what up runs)
//	ferry-stack boot   boot a server (idle guest) on lab-a in the running stack
//	ferry-stack compute stop|start HOST
//	                   stop or start a lab host's nova-compute, as systemctl does on a
//	                   compute host (start waits until its Service is up); what ferry's
//	                   cut-over command runs in the stack
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"opendev.org/x/ferry/integration/stack"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] == "compute") != (len(os.Args) == 4) || (os.Args[1] != "compute" && len(os.Args) != 2) {
		fmt.Fprintln(os.Stderr, "usage: ferry-stack up|down|serve|boot, or ferry-stack compute stop|start HOST")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "compute":
		err = compute(os.Args[2], os.Args[3])
	case "up":
		err = up()
	case "down":
		err = down()
	case "serve":
		err = serve()
	case "boot":
		err = boot()
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-stack:", err)
		os.Exit(1)
	}
}

// serveLog is the owner's output when up starts it.
var serveLog = stack.StateDir + "-serve.log"

// up starts `serve` in a new session (it outlives this command and the
// shell) and waits until the stack is ready or the owner failed.
func up() error {
	if s, err := stack.Attach(); err == nil {
		fmt.Printf("ferry-stack: already running (pid %d)\n%s\n", s.Owner, usage(s))
		os.Exit(3)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.Create(serveLog)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(self, "serve")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	fmt.Fprintf(os.Stderr, "ferry-stack: starting (pid %d, log %s)\n", cmd.Process.Pid, serveLog)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	limit := time.After(20 * time.Minute) // the start's own steps have shorter bounds; this covers a lab lock held meanwhile
	for {
		select {
		case <-limit:
			_ = cmd.Process.Signal(syscall.SIGTERM) // the owner tears down what it started
			<-exited
			return fmt.Errorf("the stack was not up after 20 minutes; see %s", serveLog)
		case err := <-exited:
			b, _ := os.ReadFile(serveLog)
			return fmt.Errorf("the stack did not start (%v):\n%s", err, b)
		case <-t.C:
			if s, err := stack.Attach(); err == nil && s.Owner == cmd.Process.Pid {
				if os.Getenv("FERRY_STACK_BOOT") != "" { // make stack: a server to look at
					sv, err := bootOne(context.Background(), s)
					if err != nil {
						return fmt.Errorf("the stack is up, but booting a server failed: %w", err)
					}
					fmt.Printf("server %s (%s) ACTIVE on %s; its console: %s\n", sv.Name, sv.ID, sv.Host, s.Host(sv.Host).ConsoleLog(sv.ID))
				}
				fmt.Println(usage(s))
				return nil
			}
		}
	}
}

func usage(s *stack.Stack) string {
	var b strings.Builder
	fmt.Fprintf(&b, "export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=%s\n", s.CloudsYAML, stack.Cloud)
	fmt.Fprintf(&b, "  openstack server list; openstack compute service list; openstack network agent list\n")
	fmt.Fprintf(&b, "  logs: %s (owner: %s)\n", s.Logs, serveLog)
	for _, h := range s.Hosts {
		fmt.Fprintf(&b, "  host %s: nova-compute and neutron-linuxbridge-agent in netns %s (nsenter -t %d -n -m -u); instances %s; libvirt %s\n",
			h.Hostname, h.Netns, h.NSPID, h.Instances, h.URI)
	}
	fmt.Fprintf(&b, "  firewall_driver: %s\n", s.Firewall)
	fmt.Fprintf(&b, "  take it down: make stack-down")
	return b.String()
}

// serve owns a stack until a signal; the stack's handler tears it down.
func serve() error {
	ctx := context.Background()
	s, err := stack.Start(ctx, stack.Options{})
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, usage(s))
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	<-ch // SIGINT/SIGTERM end the process through the stack's own handler
	s.Close()
	return nil
}

func bootOne(ctx context.Context, s *stack.Stack) (stack.Server, error) {
	return s.Boot(ctx, "demo", "idle", s.Flavors.Small, "lab-a")
}

func boot() error {
	s, err := stack.Attach()
	if err != nil {
		return err
	}
	sv, err := bootOne(context.Background(), s)
	if err != nil {
		return err
	}
	fmt.Printf("server %s (%s) ACTIVE on %s; its console: %s\n", sv.Name, sv.ID, sv.Host, s.Host(sv.Host).ConsoleLog(sv.ID))
	return nil
}

// down stops the owner and waits for it; with no live owner it reaps
// what a killed one left.
func down() error {
	owner := 0
	if s, err := stack.Attach(); err == nil {
		owner = s.Owner
	} else if owner = stack.Starting(); owner != 0 {
		fmt.Printf("ferry-stack: stopping the stack pid %d is starting\n", owner)
	} else {
		if errors.Is(err, os.ErrNotExist) {
			fmt.Println("ferry-stack: no stack running; reaping leftovers")
		}
		return stack.Reap()
	}
	if err := syscall.Kill(owner, syscall.SIGTERM); err != nil {
		return err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if syscall.Kill(owner, 0) != nil {
			fmt.Println("ferry-stack: down")
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("owner pid %s still running after 3 minutes", strconv.Itoa(owner))
}

// compute stops or starts a host's nova-compute in the running stack. A
// started nova-compute outlives this command (it has a process group of
// its own, recorded for the stack's teardown).
func compute(action, host string) error {
	s, err := stack.Attach()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	switch action {
	case "stop":
		return s.StopCompute(ctx, host)
	case "start":
		return s.StartCompute(ctx, host)
	}
	return fmt.Errorf("compute %q: want stop or start", action)
}
