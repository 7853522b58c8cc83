package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestContinuity(t *testing.T) {
	src := []Beat{{N: 10, Boot: "b1"}, {N: 11, Boot: "b1"}}
	tests := []struct {
		name string
		dst  []Beat
		ok   bool
	}{
		{"next beat", []Beat{{N: 12, Boot: "b1"}, {N: 13, Boot: "b1"}}, true},
		{"a line cut at the switch-over", []Beat{{N: 13, Boot: "b1"}, {N: 14, Boot: "b1"}}, true},
		{"rebooted", []Beat{{N: 0, Boot: "b2"}, {N: 1, Boot: "b2"}}, false},
		{"same boot but the counter went back", []Beat{{N: 5, Boot: "b1"}}, false},
		{"a long gap", []Beat{{N: 40, Boot: "b1"}}, false},
		{"destination skips beats", []Beat{{N: 12, Boot: "b1"}, {N: 20, Boot: "b1"}}, false},
		{"nothing on the destination", nil, false},
	}
	for _, tc := range tests {
		if err := Continuity(src, tc.dst); (err == nil) != tc.ok {
			t.Errorf("%s: Continuity = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestTCGWrapper runs the emulator wrapper with echo in QEMU's place.
func TestTCGWrapper(t *testing.T) {
	dir := t.TempDir()
	w := filepath.Join(dir, "wrap")
	if err := os.WriteFile(w, tcgWrapper, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		args  []string
		want  string
		fixed bool // FERRY_LAB_TCG_FIXED: a second pass
	}{
		{"tcg: both sizes grow by 8 KiB",
			[]string{"-accel", "tcg", "-m", "size=262144k", "-object", `{"qom-type":"memory-backend-ram","id":"pc.ram","size":268435456}`},
			`-accel tcg -m size=262152k -object {"qom-type":"memory-backend-ram","id":"pc.ram","size":268443648}`, false},
		{"tcg, a NUMA guest: the first node's backend grows with -m",
			[]string{"-accel", "tcg", "-m", "size=262144k", "-object", `{"qom-type":"memory-backend-ram","id":"ram-node0","size":134217728}`,
				"-object", `{"qom-type":"memory-backend-ram","id":"ram-node1","size":134217728}`},
			`-accel tcg -m size=262152k -object {"qom-type":"memory-backend-ram","id":"ram-node0","size":134225920} -object {"qom-type":"memory-backend-ram","id":"ram-node1","size":134217728}`, false},
		{"tcg: plain MiB form", []string{"-machine", "pc,accel=tcg", "-m", "512"}, "-machine pc,accel=tcg -m 524296k", false},
		{"kvm: untouched", []string{"-accel", "kvm", "-m", "size=262144k"}, "-accel kvm -m size=262144k", false},
		{"tcg, second pass: untouched", []string{"-accel", "tcg", "-m", "size=262152k"}, "-accel tcg -m size=262152k", true},
	}
	for _, tc := range tests {
		cmd := exec.Command(w, tc.args...)
		cmd.Env = append(os.Environ(), "FERRY_LAB_QEMU=/bin/echo", "FERRY_LAB_TCG_FIXED=")
		if tc.fixed {
			cmd.Env = append(cmd.Env, "FERRY_LAB_TCG_FIXED=1")
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}
