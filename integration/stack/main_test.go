//go:build integration

package stack_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/stack"
)

// st is the machine's stack: the one `make test` started for every stack
// package (ferry-stack up), or one this package starts and tears down.
var st *stack.Stack

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t := time.Now()
	var err error
	st, err = stack.Acquire(ctx, stack.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "stack:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "stack: ready after %.1fs\n", time.Since(t).Seconds())
	for _, tm := range st.Timings {
		fmt.Fprintf(os.Stderr, "TIMING stack %s %.1fs\n", tm.Step, tm.Seconds)
	}
	code := m.Run()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Minute)
	if err := stockShape(ctx); err != nil { // as the package found the hosts
		fmt.Fprintln(os.Stderr, "stack:", err)
		code = 1
	}
	cancel()
	st.Close()
	os.Exit(code)
}

// heartbeating has the server deleted when the test ends and waits until
// its console on host shows n heartbeats.
func heartbeating(ctx context.Context, t *testing.T, a *stack.API, sv stack.Server, host string, n int, timeout time.Duration) {
	t.Helper()
	t.Cleanup(func() {
		if err := a.DeleteServer(context.Background(), sv.ID); err != nil {
			t.Errorf("delete server: %v", err)
		}
	})
	con, err := stack.OpenConsole(ctx, st.Host(host).ConsoleLog(sv.ID), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()
	if _, err := con.Wait(ctx, n, timeout); err != nil {
		t.Fatal(err)
	}
}
