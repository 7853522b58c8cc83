package hostnet

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
)

func TestFor(t *testing.T) {
	tests := []struct {
		name string
		d    Dest
		tls  bool
		want URIs
		err  bool
	}{
		{"IPv4 migration network", Dest{Host: "lab-b", Mgmt: "198.18.0.12", Migration: "198.19.0.12"}, false,
			URIs{Control: "qemu+tcp://198.18.0.12/system", Migrate: "tcp://198.19.0.12", Disks: "tcp://198.19.0.12"}, false},
		{"IPv6 is bracketed", Dest{Host: "c2", Mgmt: "fd00::2", Migration: "fd01::2"}, false,
			URIs{Control: "qemu+tcp://[fd00::2]/system", Migrate: "tcp://[fd01::2]", Disks: "tcp://[fd01::2]"}, false},
		{"TLS names the host, not the address", Dest{Host: "c2.example.org", Mgmt: "10.0.0.2", Migration: "10.1.0.2", Scheme: "tls"}, true,
			URIs{Control: "qemu+tls://10.0.0.2/system", Migrate: "tcp://10.1.0.2", Disks: "tcp://10.1.0.2", TLSDestination: "c2.example.org"}, false},
		{"certificate name from config", Dest{Host: "c2", Migration: "10.1.0.2", TLSName: "c2.mgmt.example.org"}, true,
			URIs{Control: "qemu+tcp://c2/system", Migrate: "tcp://10.1.0.2", Disks: "tcp://10.1.0.2", TLSDestination: "c2.mgmt.example.org"}, false},
		{"host name only", Dest{Host: "c3"}, false, URIs{Control: "qemu+tcp://c3/system", Migrate: "tcp://c3", Disks: "tcp://c3"}, false},
		{"nothing", Dest{}, false, URIs{}, true},
		{"bad scheme", Dest{Host: "c3", Scheme: "http"}, false, URIs{}, true},
		{"garbage address", Dest{Host: "c3", Migration: "10.0.0.1/24"}, false, URIs{}, true},
	}
	for _, tc := range tests {
		got, err := For(tc.d, tc.tls)
		if (err != nil) != tc.err {
			t.Errorf("%s: err = %v, want error %v", tc.name, err, tc.err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}

func TestCloseStreamsRefusesWhatIsNotAnAddress(t *testing.T) {
	for _, a := range []string{"", "198.19.0.12; reboot", "h/../x", "user@h"} {
		if _, err := CloseStreams(context.Background(), 1, a); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("CloseStreams(%q) = %v, want invalid argument", a, err)
		}
	}
	if _, err := CloseStreams(context.Background(), 0, "198.19.0.12"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("CloseStreams without a process = %v, want invalid argument", err)
	}
}

func TestClosedCountsSockets(t *testing.T) {
	out := "ESTAB 0 65564 198.19.0.11:37874 198.19.0.12:49153\nESTAB 0 0 198.19.0.11:37880 198.19.0.12:49152\n\n"
	if n := closed([]byte(out)); n != 2 {
		t.Errorf("closed = %d, want 2", n)
	}
	if n := closed(nil); n != 0 {
		t.Errorf("closed(nil) = %d", n)
	}
}

func TestMigrationAddr(t *testing.T) {
	for _, tt := range []struct {
		d    Dest
		want string
	}{{Dest{Host: "h"}, "h"}, {Dest{Host: "h", Mgmt: "198.18.0.12"}, "198.18.0.12"}, {Dest{Host: "h", Mgmt: "m", Migration: "198.19.0.12"}, "198.19.0.12"}} {
		if got := tt.d.MigrationAddr(); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.d, got, tt.want)
		}
	}
}
