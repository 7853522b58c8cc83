package migration

import "sync"

// slots bounds the outbound migrations that run at once and hands the
// slots out in the order the migrations were queued (Nova's executor is
// first come, first served too).
type slots struct {
	mu      sync.Mutex
	free    int
	waiters []chan struct{}
}

func newSlots(n int) *slots { return &slots{free: n} }

// wait queues for a slot: the channel is closed when it is granted. cancel
// leaves the queue, giving back a slot granted meanwhile.
func (s *slots) wait() (granted <-chan struct{}, cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	if s.free > 0 && len(s.waiters) == 0 {
		s.free--
		close(ch)
	} else {
		s.waiters = append(s.waiters, ch)
	}
	return ch, func() {
		s.mu.Lock()
		for i, w := range s.waiters {
			if w == ch {
				s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
				s.mu.Unlock()
				return
			}
		}
		s.mu.Unlock()
		select {
		case <-ch:
			s.release()
		default:
		}
	}
}

// try takes a free slot without queueing.
func (s *slots) try() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.free > 0 && len(s.waiters) == 0 {
		s.free--
		return true
	}
	return false
}

func (s *slots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiters) > 0 {
		close(s.waiters[0])
		s.waiters = s.waiters[1:]
		return
	}
	s.free++
}
