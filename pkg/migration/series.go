package migration

import "time"

// Point is one sample of a migration's series, as the record keeps it for
// the picture of the migration (`ferry migration show --svg`).
type Point struct {
	At            time.Duration `json:"at"` // since the job started (or the engine re-attached)
	MemRemaining  uint64        `json:"memory_remaining"`
	DiskRemaining uint64        `json:"disk_remaining,omitempty"`
	Bps           uint64        `json:"bps"`                    // memory and disk, as libvirt measured them
	MaxDowntime   time.Duration `json:"max_downtime,omitempty"` // the max downtime set at that time
}

// MaxPoints bounds a record's series: a migration of any length keeps at
// most this many points, evenly spaced over its whole run.
const MaxPoints = 240

// series downsamples a migration's samples into at most MaxPoints: it keeps
// every stride-th sample and, when full, drops every other point it holds
// and doubles the stride, so the points stay evenly spaced from the first
// sample to the latest, whatever the length. The latest sample is always
// shown (last), so the series ends where the job did.
type series struct {
	pts    []Point
	stride int
	seen   int
	last   Point // the latest sample
}

func (s *series) add(p Point) {
	if s.stride == 0 {
		s.stride = 1
	}
	s.last = p
	if s.seen%s.stride == 0 && len(s.pts) == MaxPoints {
		kept := s.pts[:0]
		for i := 0; i < len(s.pts); i += 2 {
			kept = append(kept, s.pts[i])
		}
		s.pts = kept
		s.stride *= 2
	}
	if s.seen%s.stride == 0 {
		s.pts = append(s.pts, p)
	}
	s.seen++
}

// points is the series to record: the kept points, the latest sample last.
func (s *series) points() []Point {
	out := append([]Point(nil), s.pts...)
	if n := len(out); n > 0 && out[n-1] != s.last {
		if n == MaxPoints {
			out = out[:n-1]
		}
		out = append(out, s.last)
	}
	return out
}
