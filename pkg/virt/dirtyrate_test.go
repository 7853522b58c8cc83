package virt

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
)

func dirtyParams(status, start int64, mibs int64) []libvirt.TypedParam {
	p := func(k string, v *libvirt.TypedParamValue) libvirt.TypedParam {
		return libvirt.TypedParam{Field: k, Value: *v}
	}
	ps := []libvirt.TypedParam{
		p("balloon.current", libvirt.NewTypedParamValueUllong(262144)),
		p("balloon.rss", libvirt.NewTypedParamValueUllong(131072)),
		p("dirtyrate.calc_status", libvirt.NewTypedParamValueInt(int32(status))),
		p("dirtyrate.calc_start_time", libvirt.NewTypedParamValueLlong(start)),
		p("dirtyrate.calc_period", libvirt.NewTypedParamValueInt(5)),
		p("dirtyrate.calc_mode", libvirt.NewTypedParamValueString("page-sampling")),
	}
	if status == int64(libvirt.DomainDirtyrateMeasured) {
		ps = append(ps, p("dirtyrate.megabytes_per_second", libvirt.NewTypedParamValueLlong(mibs)))
	}
	return ps
}

func TestDecodeDirtyRate(t *testing.T) {
	got := decodeDirtyRate(dirtyParams(2, 1700, 12)).DirtyRate
	want := DirtyRate{Bps: 12 << 20, Period: 5 * time.Second, Mode: "page-sampling", RSS: 128 << 20}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decodeDirtyRate mismatch (-want +got):\n%s", diff)
	}
	if r := decodeDirtyRate(nil); r.present {
		t.Error("no stats read as present")
	}
}

// The measurement waits out the period, then polls until a result newer
// than the one QEMU held before; one that never comes is a timeout.
func TestDirtyMeasure(t *testing.T) {
	tests := []struct {
		name    string
		replies [][]libvirt.TypedParam // the stats answers, the first before the start; the last repeats
		want    uint64
		err     error
	}{
		{"first ever", [][]libvirt.TypedParam{dirtyParams(0, 0, 0), dirtyParams(1, 100, 0), dirtyParams(2, 100, 30)}, 30 << 20, nil},
		{"an old result is not taken", [][]libvirt.TypedParam{dirtyParams(2, 50, 99), dirtyParams(2, 50, 99), dirtyParams(1, 100, 0),
			dirtyParams(2, 100, 4)}, 4 << 20, nil},
		{"idle guest", [][]libvirt.TypedParam{dirtyParams(0, 0, 0), dirtyParams(2, 100, 0)}, 0, nil},
		{"never measured", [][]libvirt.TypedParam{dirtyParams(0, 0, 0), dirtyParams(1, 100, 0)}, 0, errdefs.ErrTimeout},
		{"no dirtyrate group", [][]libvirt.TypedParam{nil}, 0, errdefs.ErrFailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				began := time.Now()
				var startedAt time.Time
				n := 0
				m := dirtyMeasure{period: 5 * time.Second, poll: 250 * time.Millisecond, grace: 10 * time.Second,
					start: func() error { startedAt = time.Now(); return nil },
					stats: func() ([]libvirt.TypedParam, error) {
						r := tc.replies[min(n, len(tc.replies)-1)]
						n++
						return r, nil
					}}
				got, err := m.run(context.Background())
				if !errors.Is(err, tc.err) || (err == nil && got.Bps != tc.want) {
					t.Fatalf("run() = %+v, %v; want %d B/s, %v", got, err, tc.want, tc.err)
				}
				if err == nil && time.Since(startedAt) < 5*time.Second {
					t.Errorf("result after %s, before the period ended", time.Since(began))
				}
			})
		})
	}
}

func TestDirtyRatePeriodBounds(t *testing.T) {
	c := &Conn{}
	for _, d := range []time.Duration{0, 61 * time.Second} {
		if _, err := c.DirtyRate(context.Background(), "x", d); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("DirtyRate(over %s) = %v, want ErrInvalidArgument", d, err)
		}
	}
}

func TestParseGuestMemory(t *testing.T) {
	for xml, want := range map[string]uint64{
		`<domain type="qemu"><memory unit="KiB">262144</memory></domain>`:                                         256 << 20,
		`<domain type="qemu"><memory unit="GiB">2</memory><currentMemory unit="MiB">512</currentMemory></domain>`: 512 << 20,
		`<domain type="qemu"><memory>1024</memory></domain>`:                                                      1 << 20,
		`<domain type="qemu"></domain>`:                                                                           0,
	} {
		g, err := ParseGuest(xml)
		if err != nil || g.Memory != want {
			t.Errorf("ParseGuest(%s).Memory = %d, %v; want %d", xml, g.Memory, err, want)
		}
	}
}
