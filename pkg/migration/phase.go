package migration

import (
	"errors"
	"fmt"
	"slices"
)

// Phase is a migration's status, spelled as Nova spells Migration.status.
type Phase string

// The phases of a live migration.
const (
	// PhaseNew is where every migration comes from: not yet queued.
	PhaseNew       Phase = ""
	PhaseQueued    Phase = "queued"
	PhasePreparing Phase = "preparing"
	PhaseRunning   Phase = "running"
	PhasePostCopy  Phase = "running (post-copy)"
	PhaseCompleted Phase = "completed"
	PhaseFailed    Phase = "failed"    // the guest is verified running on the source
	PhaseCancelled Phase = "cancelled" // aborted on request; the guest runs on the source
	PhaseError     Phase = "error"     // ferry cannot verify where the guest runs
)

// next is the one transition table.
var next = map[Phase][]Phase{
	PhaseQueued:    {PhasePreparing, PhaseCancelled, PhaseFailed, PhaseError},
	PhasePreparing: {PhaseRunning, PhaseFailed, PhaseCancelled, PhaseError},
	PhaseRunning:   {PhasePostCopy, PhaseCompleted, PhaseFailed, PhaseCancelled, PhaseError},
	PhasePostCopy:  {PhaseCompleted, PhaseError},
}

// ErrInvalidTransition is returned for a move the table does not allow.
var ErrInvalidTransition = errors.New("invalid phase transition")

// Terminal reports whether the migration has ended.
func (p Phase) Terminal() bool {
	return p == PhaseCompleted || p == PhaseFailed || p == PhaseCancelled || p == PhaseError
}

// Active reports whether a libvirt job may be running in this phase.
func (p Phase) Active() bool { return p == PhaseRunning || p == PhasePostCopy }

func checkTransition(from, to Phase) error {
	if !slices.Contains(next[from], to) {
		return fmt.Errorf("%w: %s → %s", ErrInvalidTransition, from, to)
	}
	return nil
}
