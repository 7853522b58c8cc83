package virt

import (
	"context"
	"fmt"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"

	"opendev.org/x/ferry/pkg/errdefs"
)

// DirtyRate is how fast a guest dirties its memory, as QEMU measured it
// (libvirt's virDomainStartDirtyRateCalc, read back from the dirtyrate
// stats group), and how much of its RAM is in use.
type DirtyRate struct {
	Bps    uint64        // bytes dirtied per second over Period
	Period time.Duration // how long QEMU sampled
	// Mode is QEMU's calculation mode (page-sampling here, which works
	// under TCG; dirty-bitmap and dirty-ring need KVM); "" when libvirt
	// does not say (before 8.1).
	Mode string
	// RSS is the QEMU process's resident memory (balloon.rss), an upper
	// bound of the guest pages ever touched, which are what a first pass
	// sends at full cost; 0 when libvirt does not report it.
	RSS uint64
}

// dirtyStats are the stats groups DirtyRate reads.
const dirtyStats = uint32(libvirt.DomainStatsDirtyrate | libvirt.DomainStatsBalloon)

// DirtyRate measures the named domain's dirty rate over a period of whole
// seconds (1 to 60, QEMU's bounds; over is rounded up), in page-sampling
// mode, and waits for the result: over, then polls of the stats until QEMU
// says measured, for at most the Query timeout more. ErrNotFound: no such
// domain; ErrFailedPrecondition: it is not running, or libvirt reported no
// dirty rate; ErrInvalidArgument: a period out of bounds, or a libvirt
// without the call (before 7.2).
func (c *Conn) DirtyRate(ctx context.Context, dom string, over time.Duration) (DirtyRate, error) {
	secs := int32((over + time.Second - 1) / time.Second)
	if secs < 1 || secs > 60 {
		return DirtyRate{}, fmt.Errorf("dirty rate of %s: %w: period %s is not 1s to 60s", dom, errdefs.ErrInvalidArgument, over)
	}
	d, err := c.lookup(ctx, dom)
	if err != nil {
		return DirtyRate{}, err
	}
	stats := func() ([]libvirt.TypedParam, error) {
		recs, err := do(c, ctx, c.timeouts.Query, "domain-stats", "stats of "+dom, func() ([]libvirt.DomainStatsRecord, error) {
			return c.l.ConnectGetAllDomainStats([]libvirt.Domain{d}, dirtyStats, 0)
		})
		if err != nil || len(recs) == 0 {
			return nil, err
		}
		return recs[0].Params, nil
	}
	start := func() error {
		_, err := do(c, ctx, c.timeouts.Control, "dirty-rate-start", "start dirty rate calculation of "+dom, func() (struct{}, error) {
			return struct{}{}, c.l.DomainStartDirtyRateCalc(d, secs, uint32(libvirt.DomainDirtyrateModePageSampling))
		})
		return err
	}
	m := dirtyMeasure{period: time.Duration(secs) * time.Second, poll: 250 * time.Millisecond, grace: c.timeouts.Query,
		start: start, stats: stats}
	r, err := m.run(ctx)
	if err != nil {
		return DirtyRate{}, fmt.Errorf("dirty rate of %s: %w", dom, err)
	}
	return r, nil
}

// dirtyMeasure is DirtyRate's wait, apart from the connection: start the
// calculation, let the period pass, poll until a result newer than the one
// before (QEMU keeps the last result; a calculation already running is
// joined, not restarted).
type dirtyMeasure struct {
	period, poll, grace time.Duration
	start               func() error
	stats               func() ([]libvirt.TypedParam, error)
}

func (m dirtyMeasure) run(ctx context.Context) (DirtyRate, error) {
	before, err := m.stats()
	if err != nil {
		return DirtyRate{}, err
	}
	prev := decodeDirtyRate(before)
	if !prev.present {
		return DirtyRate{}, fmt.Errorf("%w: libvirt reports no dirtyrate stats for the domain", errdefs.ErrFailedPrecondition)
	}
	if err := m.start(); err != nil {
		return DirtyRate{}, err
	}
	wait := time.NewTimer(m.period)
	defer wait.Stop()
	select {
	case <-wait.C:
	case <-ctx.Done():
		return DirtyRate{}, context.Cause(ctx)
	}
	deadline := time.NewTimer(m.grace)
	defer deadline.Stop()
	tick := time.NewTicker(m.poll)
	defer tick.Stop()
	for {
		ps, err := m.stats()
		if err != nil {
			return DirtyRate{}, err
		}
		cur := decodeDirtyRate(ps)
		if cur.status == libvirt.DomainDirtyrateMeasured && (prev.status != libvirt.DomainDirtyrateMeasured || cur.startTime != prev.startTime) {
			return cur.DirtyRate, nil
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return DirtyRate{}, fmt.Errorf("%w: not measured %s after the %s period (status %d)", errdefs.ErrTimeout, m.grace, m.period, cur.status)
		case <-ctx.Done():
			return DirtyRate{}, context.Cause(ctx)
		}
	}
}

type dirtyReading struct {
	DirtyRate
	present   bool // the record has dirtyrate.calc_status
	status    libvirt.DomainDirtyRateStatus
	startTime int64
}

// decodeDirtyRate reads the dirtyrate and balloon groups of one domain's
// stats record. Field names and types are libvirt's
// (VIR_DOMAIN_STATS_DIRTYRATE_*, libvirt-domain.h; go-libvirt's
// DomainStatsDirtyrate* constants): calc_status int, calc_start_time
// llong, calc_period int (seconds), megabytes_per_second llong (MiB/s),
// calc_mode string; balloon.rss ullong KiB.
func decodeDirtyRate(ps []libvirt.TypedParam) dirtyReading {
	var r dirtyReading
	for _, p := range ps {
		switch p.Field {
		case libvirt.DomainStatsDirtyrateCalcStatus:
			if v, ok := asInt64(p.Value.I); ok {
				r.present, r.status = true, libvirt.DomainDirtyRateStatus(v)
			}
		case libvirt.DomainStatsDirtyrateCalcStartTime:
			r.startTime, _ = asInt64(p.Value.I)
		case libvirt.DomainStatsDirtyrateCalcPeriod:
			if v, ok := asInt64(p.Value.I); ok && v > 0 {
				r.Period = time.Duration(v) * time.Second
			}
		case libvirt.DomainStatsDirtyrateMegabytesPerSecond:
			if v, ok := asInt64(p.Value.I); ok && v > 0 {
				r.Bps = uint64(v) << 20
			}
		case libvirt.DomainStatsDirtyrateCalcMode:
			r.Mode, _ = p.Value.I.(string)
		case "balloon.rss":
			if v, ok := asInt64(p.Value.I); ok && v > 0 {
				r.RSS = uint64(v) << 10
			}
		}
	}
	return r
}

// asInt64 reads any of libvirt's integer typed-parameter values.
func asInt64(v any) (int64, bool) {
	switch n := v.(type) {
	case int32:
		return int64(n), true
	case uint32:
		return int64(n), true
	case int64:
		return n, true
	case uint64:
		return int64(n), true
	}
	return 0, false
}
