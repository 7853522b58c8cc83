package virttest

import (
	"time"

	"opendev.org/x/ferry/pkg/virt"
)

// Model is QEMU's pre-copy migration as far as the convergence policy sees
// it: a disk mirror, then memory passes over a link of bandwidth BW while
// the guest dirties a working set WS at rate Dirty; QEMU switches over once
// the pending bytes fit BW × max downtime. Auto-converge throttles the
// guest after two passes that re-dirty more than half of what they sent;
// post-copy sends what is left with the guest on the destination. It is
// the one model of the fake hosts (World) and of the policy's simulator
// tests, so the two cannot disagree. It is pure: time moves only in
// Advance.
type Model struct {
	RAM, WS, Disk uint64  // bytes
	Dirty, BW     float64 // bytes/s
	// LinkUp tells whether bytes move at time t since the start; nil means
	// always.
	LinkUp                 func(t time.Duration) bool
	AutoConverge           bool
	ACInitial, ACIncrement int // percent; QEMU's defaults are 20 and 10

	t                time.Duration
	diskLeft         float64
	iter             uint64
	iterLeft         float64
	dirtyAcc         float64
	sentIter         float64
	processed        float64
	memProcessed     float64
	downtimeLimit    time.Duration
	throttle         int
	acTrigger        int
	paused, postcopy bool
	pausedAt         time.Duration
	pcLeft           float64
	done, aborted    bool
	downtime         time.Duration
	bpsNow           float64
}

const mib = float64(1 << 20)

// deviceState is what a switch-over costs besides the last pages: the
// devices' state and the handshake (the lab measured 44–207 ms in all).
const deviceState = 20 * time.Millisecond

// NewModel is a job of a guest with ramMiB of RAM dirtying wsMiB at
// dirtyMiBps, copying a diskMiB disk first, over a link of bwMiBps; its max
// downtime starts at libvirt's 300 ms.
func NewModel(ramMiB, wsMiB, diskMiB int, dirtyMiBps, bwMiBps float64) *Model {
	m := &Model{RAM: uint64(ramMiB) << 20, WS: uint64(wsMiB) << 20, Disk: uint64(diskMiB) << 20,
		Dirty: dirtyMiBps * mib, BW: bwMiBps * mib, downtimeLimit: 300 * time.Millisecond, ACInitial: 20, ACIncrement: 10}
	m.diskLeft = float64(m.Disk)
	if m.Disk == 0 {
		m.startMemory()
	}
	return m
}

func (m *Model) startMemory() { m.iter, m.iterLeft = 1, float64(m.RAM) }

// Advance runs the job for d in 10 ms steps.
func (m *Model) Advance(d time.Duration) {
	const step = 10 * time.Millisecond
	for end := m.t + d; m.t < end && !m.done && !m.aborted; m.t += step {
		b := 0.0
		if m.LinkUp == nil || m.LinkUp(m.t) {
			b = m.BW * step.Seconds()
		}
		m.bpsNow = b / step.Seconds()
		switch {
		case m.diskLeft > 0:
			x := min(b, m.diskLeft)
			m.diskLeft -= x
			m.processed += x
			if m.diskLeft == 0 {
				m.startMemory()
			}
		case m.postcopy:
			m.pcLeft -= b
			m.processed += b
			if m.pcLeft <= 0 {
				m.done = true
			}
		default:
			m.memoryStep(b, step)
		}
	}
}

func (m *Model) memoryStep(b float64, step time.Duration) {
	x := min(b, m.iterLeft)
	m.iterLeft -= x
	m.sentIter += x
	m.processed += x
	m.memProcessed += x
	if !m.paused {
		d := m.Dirty * (1 - float64(m.throttle)/100) * step.Seconds()
		m.dirtyAcc = min(float64(m.WS), m.dirtyAcc+d)
	}
	pending := m.iterLeft + m.dirtyAcc
	if m.iter >= 2 && m.bpsNow > 0 && pending <= m.bpsNow*m.downtimeLimit.Seconds() {
		m.done = true
		m.downtime = deviceState + time.Duration(pending/m.bpsNow*float64(time.Second))
		if m.paused {
			m.downtime += m.t - m.pausedAt
		}
		return
	}
	if m.iterLeft == 0 { // bitmap sync: the next pass resends what was dirtied
		if m.AutoConverge && m.dirtyAcc > 0.5*m.sentIter {
			if m.acTrigger++; m.acTrigger >= 2 {
				if m.throttle == 0 {
					m.throttle = m.ACInitial
				} else {
					m.throttle = min(99, m.throttle+m.ACIncrement)
				}
			}
		}
		m.iter++
		m.iterLeft, m.dirtyAcc, m.sentIter = m.dirtyAcc, 0, 0
	}
}

// Stats are the job statistics libvirt would report now.
func (m *Model) Stats() virt.JobStats {
	js := virt.JobStats{Type: virt.JobUnbounded, Elapsed: m.t, DataProcessed: uint64(m.processed),
		MemTotal: m.RAM, MemProcessed: uint64(m.memProcessed), MemRemaining: uint64(m.iterLeft),
		MemIteration: m.iter, DiskTotal: m.Disk, DiskProcessed: m.Disk - uint64(m.diskLeft),
		DiskRemaining: uint64(m.diskLeft), AutoConvergePct: m.throttle}
	if m.diskLeft == 0 && !m.postcopy {
		js.MemBps = uint64(m.bpsNow)
	} else {
		js.DiskBps = uint64(m.bpsNow)
	}
	if m.done {
		js.Type = virt.JobCompleted
		js.Downtime = m.downtime
	}
	if m.aborted {
		js.Type = virt.JobCancelled
	}
	return js
}

// SetDowntime sets the max downtime (virDomainMigrateSetMaxDowntime).
func (m *Model) SetDowntime(d time.Duration) { m.downtimeLimit = d }

// StartPostCopy switches to post-copy: the guest runs on the destination and
// what is left of the pass is sent after it.
func (m *Model) StartPostCopy() {
	m.postcopy = true
	m.pcLeft = m.iterLeft + m.dirtyAcc
	m.downtime = 50 * time.Millisecond // device state only
}

// Pause stops the guest's vCPUs: nothing is dirtied any more.
func (m *Model) Pause() { m.paused, m.pausedAt = true, m.t }

// Abort cancels the job.
func (m *Model) Abort() { m.aborted = true }

// Done, Aborted, PostCopy, Downtime and Throttle tell the job's state.
func (m *Model) Done() bool              { return m.done }
func (m *Model) Aborted() bool           { return m.aborted }
func (m *Model) PostCopy() bool          { return m.postcopy }
func (m *Model) Downtime() time.Duration { return m.downtime }
func (m *Model) Throttle() int           { return m.throttle }
func (m *Model) Elapsed() time.Duration  { return m.t }
