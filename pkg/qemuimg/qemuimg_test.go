package qemuimg

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	out := []byte(`[{"backing-filename-format":"raw","virtual-size":16777216,"filename":"top.qcow2","format":"qcow2",
	"actual-size":200704,"full-backing-filename":"/i/_base/b","backing-filename":"/i/_base/b"},
	{"virtual-size":8388608,"filename":"/i/_base/b","format":"raw","actual-size":4096}]`)
	got, err := parse(out)
	if err != nil {
		t.Fatal(err)
	}
	want := Info{Format: "qcow2", VirtualSize: 16 << 20, ActualSize: 200704, Backing: "/i/_base/b", BackingFormat: "raw", ChainDepth: 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{``, `[]`, `{}`, `not json`} {
		if _, err := parse([]byte(bad)); err == nil {
			t.Errorf("parse(%q) accepted", bad)
		}
	}
}

// TestCreateRead runs the real qemu-img when it is installed.
func TestCreateRead(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	ctx := context.Background()
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base"), filepath.Join(dir, "top")
	if err := Create(ctx, Spec{Path: base, Format: "raw", Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := Create(ctx, Spec{Path: top, Format: "qcow2", Size: 16 << 20, Backing: base, BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	got, err := Read(ctx, top, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if got.Format != "qcow2" || got.VirtualSize != 16<<20 || got.Backing != base || got.BackingFormat != "raw" || got.ChainDepth != 1 {
		t.Errorf("Read = %+v", got)
	}
	if err := Create(ctx, Spec{Path: top + "2", Format: "qcow2", Size: 1, Backing: "base", BackingFormat: "raw"}); err == nil {
		t.Error("a relative backing path was accepted")
	}
	if _, err := Read(ctx, filepath.Join(dir, "none"), "raw"); err == nil {
		t.Error("reading a missing image succeeded")
	}
}
