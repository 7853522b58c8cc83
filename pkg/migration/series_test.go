package migration

import (
	"testing"
	"time"
)

func TestSeriesBoundedAndEven(t *testing.T) {
	for _, n := range []int{0, 1, 2, MaxPoints - 1, MaxPoints, MaxPoints + 1, 1000, 10007} {
		var s series
		for i := range n {
			s.add(Point{At: time.Duration(i) * 500 * time.Millisecond, MemRemaining: uint64(n - i)})
		}
		pts := s.points()
		if len(pts) > MaxPoints {
			t.Errorf("%d samples: %d points, more than %d", n, len(pts), MaxPoints)
		}
		if n <= MaxPoints && len(pts) != n {
			t.Errorf("%d samples: %d points, want all of them", n, len(pts))
		}
		if n == 0 {
			continue
		}
		if pts[0].At != 0 || pts[len(pts)-1].At != time.Duration(n-1)*500*time.Millisecond {
			t.Errorf("%d samples: from %v to %v, want the first and the latest", n, pts[0].At, pts[len(pts)-1].At)
		}
		if n > 2*MaxPoints && len(pts) < MaxPoints/2 {
			t.Errorf("%d samples: only %d points", n, len(pts))
		}
		// Evenly spaced, but for the latest.
		for i := 2; i < len(pts)-1; i++ {
			if d, d0 := pts[i].At-pts[i-1].At, pts[1].At-pts[0].At; d != d0 {
				t.Errorf("%d samples: gap %v at %d, want %v", n, d, i, d0)
				break
			}
		}
	}
}
