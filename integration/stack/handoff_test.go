//go:build integration

package stack_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/stack"
)

// TestHandToFerryd hands lab-b to a native-mode ferryd (the stock
// nova-compute registered it, is stopped, ferryd takes compute.lab-b) and
// back. Later issues run native-mode records against the real conductor
// this way; here: ferryd consumes Nova's queue with the stack's transport
// and configuration, and the host returns to nova-compute afterwards.
func TestHandToFerryd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := stockShape(ctx); err != nil {
		t.Fatal(err)
	}
	f, err := st.HandToFerryd(ctx, "lab-b", stack.FerrydOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f.Log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"host":"lab-b"`) && !strings.Contains(string(b), "lab-b") {
		t.Errorf("ferryd's log does not name lab-b:\n%s", b)
	}
	out, err := exec.Command("ip", "netns", "pids", f.Host.Netns).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range strings.Fields(string(out)) {
		if c, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(c)) == "nova-compute" {
			t.Errorf("nova-compute (pid %s) still runs in lab-b beside ferryd", pid)
		}
	}
	f.Stop()
	if err := st.StartCompute(ctx, "lab-b"); err != nil {
		t.Fatalf("give lab-b back to nova-compute: %v", err)
	}
}
