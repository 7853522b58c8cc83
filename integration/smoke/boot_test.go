//go:build integration

package smoke

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/lab"
)

func TestBoot(t *testing.T) {
	ctx := context.Background()
	a := theLab.Host("a")
	g, err := theLab.StartGuest(ctx, a, lab.GuestSpec{Name: "boot", WSMiB: 32, RateMiBps: 20})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	t.Log(g.VolumeTicks())
	out, _ := exec.Command("sh", "-c", "grep -v '^HB' "+g.SerialLog(a)+" | tail -30; tail -3 "+g.SerialLog(a)+"; ps aux | grep qemu-system | grep -v grep | tr ' ' '\n' | grep -A1 -E '^-m$|pc.ram'").CombinedOutput()
	os.Stdout.Write(out)
}
