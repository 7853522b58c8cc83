package disks

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"opendev.org/x/ferry/pkg/errdefs"
)

func TestValidUUID(t *testing.T) {
	for _, ok := range []string{"6a3e0000-0000-4000-8000-000000000001", "c0ffee00-0000-4000-8000-00000000a11e"} {
		if err := ValidUUID(ok); err != nil {
			t.Errorf("ValidUUID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "42", "../victim", "6A3E0000-0000-4000-8000-000000000001", "6a3e0000000040008000000000000001",
		"6a3e0000-0000-4000-8000-00000000000/", "6a3e0000-0000-4000-8000-000000000001/..", "{6a3e0000-0000-4000-8000-000000000001}",
		"6a3e0000-0000-4000-8000_000000000001", "../../../../../../../../../../etc/x"} {
		if err := ValidUUID(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidUUID(%q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

func TestInstanceDirAndChildOf(t *testing.T) {
	if d, err := InstanceDir("/var/lib/nova/instances/", "6a3e0000-0000-4000-8000-000000000001"); err != nil ||
		d != "/var/lib/nova/instances/6a3e0000-0000-4000-8000-000000000001" {
		t.Errorf("InstanceDir = %q, %v", d, err)
	}
	for _, u := range []string{"", "../victim", "."} {
		if _, err := InstanceDir("/i", u); err == nil {
			t.Errorf("InstanceDir(/i, %q) accepted", u)
		}
	}
	if _, err := InstanceDir("relative", "6a3e0000-0000-4000-8000-000000000001"); err == nil {
		t.Error("a relative instances path was accepted")
	}
	for _, tc := range []struct {
		dir, path string
		ok        bool
	}{
		{"/i/u", "/i/u/disk", true},
		{"/i/u/", "/i/u/./disk.config", true},
		{"/i/u", "/i/u", false},
		{"/i/u", "/i/u/a/b", false},
		{"/i/u", "/i/u/../v", false},
		{"/i/u", "/i/u/..", false},
		{"/i/u", "/i", false},
		{"/i/u", "/etc/passwd", false},
	} {
		if err := ChildOf(tc.dir, tc.path); (err == nil) != tc.ok {
			t.Errorf("ChildOf(%q, %q) = %v, want ok=%v", tc.dir, tc.path, err, tc.ok)
		}
	}
}

func TestRealDir(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	os.Mkdir(real, 0o755)
	link := filepath.Join(dir, "link")
	os.Symlink(real, link)
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if err := RealDir(real); err != nil {
		t.Errorf("RealDir(dir) = %v", err)
	}
	if err := RealDir(link); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("RealDir(symlink) = %v", err)
	}
	if err := RealDir(file); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("RealDir(file) = %v", err)
	}
	if err := RealDir(filepath.Join(dir, "none")); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("RealDir(missing) = %v", err)
	}
}
