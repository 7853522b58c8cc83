package nova

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// inbound counts the migrations coming to this host. A pre-check reserves a
// slot for a while; pre_live_migration takes it for longer; post, rollback and
// drop_move_claim release it. Every slot expires, so a source that died
// between the calls cannot block inbound migrations for good, and the slots
// are saved (state_dir/inbound.json) so a restarted ferryd still counts
// them.
type inbound struct {
	mu         sync.Mutex
	max        int
	reserveFor time.Duration // a reservation's life
	takeFor    time.Duration // a taken slot's life
	path       string        // "" keeps them in memory only (tests)
	slots      map[string]time.Time
	now        func() time.Time
}

func newInbound(stateDir string, max int, hold, taken time.Duration) (*inbound, error) {
	in := &inbound{max: max, reserveFor: hold, takeFor: taken, slots: map[string]time.Time{}, now: time.Now}
	if stateDir == "" {
		return in, nil
	}
	in.path = filepath.Join(stateDir, "inbound.json")
	b, err := os.ReadFile(in.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return in, nil
	case err != nil:
		return nil, fmt.Errorf("inbound slots: %w", err)
	}
	if err := json.Unmarshal(b, &in.slots); err != nil {
		// A torn file loses the count, not a guest: start empty, say so.
		in.slots = map[string]time.Time{}
		return in, fmt.Errorf("inbound slots %s unreadable, starting empty: %w", in.path, err)
	}
	return in, nil
}

// reserve holds a slot for instance id; it fails when max are held by
// others. The count is what it returns.
func (in *inbound) reserve(id string) (int, bool) { return in.hold(id, in.reserveFor) }

// take turns a reservation (or nothing) into a taken slot.
func (in *inbound) take(id string) (int, bool) { return in.hold(id, in.takeFor) }

func (in *inbound) hold(id string, d time.Duration) (int, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	now := in.now()
	n := 0
	for k, exp := range in.slots {
		if now.After(exp) {
			delete(in.slots, k)
			continue
		}
		if k != id {
			n++
		}
	}
	if n >= in.max {
		in.saveLocked()
		return n, false
	}
	in.slots[id] = now.Add(d)
	in.saveLocked()
	return n + 1, true
}

// count is how many slots are held and not expired.
func (in *inbound) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	now, n := in.now(), 0
	for _, exp := range in.slots {
		if !now.After(exp) {
			n++
		}
	}
	return n
}

func (in *inbound) release(id string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, ok := in.slots[id]; ok {
		delete(in.slots, id)
		in.saveLocked()
	}
}

// saveLocked writes the slots; a failure only costs the count after a
// restart, so it is not an error of the call that changed them.
func (in *inbound) saveLocked() {
	if in.path == "" {
		return
	}
	b, _ := json.Marshal(in.slots)
	tmp := in.path + ".tmp"
	if os.WriteFile(tmp, b, 0o600) == nil {
		_ = os.Rename(tmp, in.path)
	}
}
