package virt

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"opendev.org/x/ferry/pkg/errdefs"
)

const residentUUID = "6a3e0000-0000-4000-8000-000000000001"

func fakeProc(t *testing.T, pids map[string][2]string) string {
	t.Helper()
	root := t.TempDir()
	for pid, f := range pids {
		dir := filepath.Join(root, pid)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "cmdline"), []byte(f[0]), 0o644)
		os.WriteFile(filepath.Join(dir, "smaps"), []byte(f[1]), 0o644)
	}
	os.MkdirAll(filepath.Join(root, "self"), 0o755)
	return root
}

// A QEMU's smaps: its binary, a heap, the TCG code buffer and the guest's
// 256 MiB of RAM, of which 90 MiB resident.
const qemuSmaps = `55d0c0000000-55d0c0a00000 r-xp 00000000 08:01 1234 /usr/bin/qemu-system-x86_64
Size:              10240 kB
Rss:                8000 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
KernelPageSize:        4 kB
Rss:               92160 kB
Pss:               92160 kB
7f1000000000-7f1040000000 rwxp 00000000 00:00 0
Size:            1048576 kB
Rss:              153600 kB
`

func TestResidentRAM(t *testing.T) {
	root := fakeProc(t, map[string][2]string{
		"41":   {"/usr/bin/qemu-system-x86_64\x00-name\x00guest=other\x00-uuid\x006a3e0000-0000-4000-8000-000000000002\x00", qemuSmaps},
		"4242": {"/usr/bin/qemu-system-x86_64\x00-name\x00guest=instance-1\x00-uuid\x00" + residentUUID + "\x00-smp\x001\x00", qemuSmaps},
		"7":    {"/bin/sh\x00-c\x00echo -uuid " + residentUUID + "\x00", ""},
	})
	for _, ram := range []uint64{256 << 20, 256<<20 + 8<<10} { // the XML's figure may be a few KiB off the block
		got, err := ResidentRAM(root, residentUUID, ram)
		if err != nil || got != 90<<20 {
			t.Errorf("ResidentRAM(%d) = %d MiB, %v; want 90 MiB (the guest RAM mapping only)", ram, got>>20, err)
		}
	}
	if _, err := ResidentRAM(root, "6a3e0000-0000-4000-8000-0000000000ff", 256<<20); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("no such QEMU: %v", err)
	}
	if _, err := ResidentRAM(root, residentUUID, 512<<20); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("no mapping of the guest's size: %v", err)
	}
	if _, err := ResidentRAM(root, residentUUID, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("RAM unknown: %v", err)
	}
}
