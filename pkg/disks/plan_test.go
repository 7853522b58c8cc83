package disks

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
)

func TestOffer(t *testing.T) {
	flat := Image{Path: "/i/u/disk.config", Format: "raw", VirtualSize: 1 << 20}
	overlay := Image{Path: "/i/u/disk", Format: "qcow2", VirtualSize: 1 << 30, Backing: "abc123", BackingPath: "/i/_base/abc123", ChainDepth: 1}
	deep := Image{Path: "/i/u/disk.eph0", Format: "qcow2", VirtualSize: 1 << 30, Backing: "mid", BackingPath: "/i/_base/mid", ChainDepth: 2}
	elsewhere := Image{Path: "/i/u/disk.eph0", Format: "qcow2", VirtualSize: 1 << 30, Backing: "img", BackingPath: "/srv/images/img", ChainDepth: 1}
	tests := []struct {
		name string
		in   []Image
		want []Image
		inc  bool
		why  string
	}{
		{name: "flat images: a full copy", in: []Image{flat}, want: []Image{flat}, why: "no copied disk has a backing file"},
		{name: "an overlay on its base: incremental", in: []Image{overlay}, want: []Image{overlay}, inc: true},
		{name: "an overlay beside a flat image: incremental (sync=top copies a flat image whole)",
			in: []Image{overlay, flat}, want: []Image{overlay, flat}, inc: true},
		{name: "a deeper chain: every disk flat, full copy",
			in: []Image{overlay, deep}, want: Flat([]Image{overlay, deep}), why: "/i/u/disk.eph0 has a backing chain 2 layers deep"},
		{name: "a base outside the image cache: its name means nothing on another host, full copy",
			in: []Image{overlay, elsewhere}, want: Flat([]Image{overlay, elsewhere}),
			why: "/i/u/disk.eph0 is backed by /srv/images/img, outside the image cache /i/_base"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, inc, why := Offer(tt.in, "/i/_base")
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("images (-want +got):\n%s", diff)
			}
			if inc != tt.inc || why != tt.why {
				t.Errorf("incremental, why = %v, %q; want %v, %q", inc, why, tt.inc, tt.why)
			}
		})
	}
	if in := []Image{overlay}; Flat(in)[0].Backing != "" || in[0].Backing == "" {
		t.Error("Flat must copy, not modify its input")
	}
}

func TestPrecreate(t *testing.T) {
	bases := func(name string) (string, bool) {
		f, ok := map[string]string{"abc123": "raw", "q1": "qcow2"}[name]
		return f, ok
	}
	tests := []struct {
		name    string
		in      []Image
		want    []Create
		wantErr error
		errHas  []string
	}{
		{
			name: "flat qcow2 and raw, same format and size",
			in: []Image{{Path: "/i/u/disk", Format: "qcow2", VirtualSize: 64 << 20},
				{Path: "/i/u/disk.config", Format: "raw", VirtualSize: 1 << 20}},
			want: []Create{{Path: "/i/u/disk", Format: "qcow2", Size: 64 << 20}, {Path: "/i/u/disk.config", Format: "raw", Size: 1 << 20}},
		},
		{
			name: "an overlay on the local base, with the base's format",
			in:   []Image{{Path: "/i/u/disk", Format: "qcow2", VirtualSize: 1 << 30, Backing: "abc123"}, {Path: "/i/u/disk.eph0", Format: "qcow2", VirtualSize: 1 << 30, Backing: "q1"}},
			want: []Create{{Path: "/i/u/disk", Format: "qcow2", Size: 1 << 30, Backing: "/i/_base/abc123", BackingFormat: "raw"},
				{Path: "/i/u/disk.eph0", Format: "qcow2", Size: 1 << 30, Backing: "/i/_base/q1", BackingFormat: "qcow2"}},
		},
		{
			name:    "a missing base: refused as a precondition, naming it",
			in:      []Image{{Path: "/i/u/disk", Format: "qcow2", VirtualSize: 1 << 30, Backing: "gone"}, {Path: "/i/u/disk.eph0", Format: "qcow2", VirtualSize: 1 << 30, Backing: "gone2"}},
			wantErr: errdefs.ErrFailedPrecondition,
			errHas:  []string{"backing files not in the image cache /i/_base on this host: gone, gone2"},
		},
		{
			name: "bad input: every problem named, invalid argument",
			in: []Image{
				{Path: "/etc/passwd", Format: "raw", VirtualSize: 1},
				{Path: "/i/u/../../etc/shadow", Format: "raw", VirtualSize: 1},
				{Path: "/i/_base/abc123", Format: "raw", VirtualSize: 1},
				{Path: "/i/other-instance/disk", Format: "raw", VirtualSize: 1},
				{Path: "/i/u", Format: "raw", VirtualSize: 1},
				{Path: "/i/u/.ferry-prepared", Format: "raw", VirtualSize: 1},
				{Path: "/i/u/disk", Format: "vmdk", VirtualSize: 1},
				{Path: "/i/u/disk2", Format: "qcow2", VirtualSize: 1, Backing: "../../etc/x"},
				{Path: "/i/u/disk3", Format: "raw", VirtualSize: 1, Backing: "abc123"},
				{Path: "/i/u/disk4", Format: "qcow2"},
				{Path: "/i/u/disk5", Format: "qcow2", VirtualSize: 1, Backing: "gone"},
			},
			wantErr: errdefs.ErrInvalidArgument,
			errHas: []string{"/etc/passwd is not a file of the instance directory /i/u", "/i/u/../../etc/shadow is not a file",
				"/i/_base/abc123 is not a file", "/i/other-instance/disk is not a file", "disk /i/u is not a file",
				"/i/u/.ferry-prepared is not a file",
				`format "vmdk"`, `"../../etc/x", not a base name`, "disk3 is raw with a backing file", "disk4 has no virtual size",
				"not in the image cache /i/_base on this host: gone"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Precreate(tt.in, "/i/u", "/i/_base", bases)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				for _, s := range tt.errHas {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
