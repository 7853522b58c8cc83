package nova

import (
	"encoding/json"
	"fmt"

	"opendev.org/x/ferry/pkg/errdefs"
)

// State is one migration's Nova objects as the live_migration cast brought
// them, and the destination's answer to pre_live_migration: the one copy,
// journalled with the migration (migration.Request.State) and decoded by
// every step that talks to Nova. Its JSON keys are those of the journal's
// "extra" before the journal had a version, so an old entry reads as is.
type State struct {
	Instance    *Object `json:"instance"`
	Migration   *Object `json:"migration"`
	MigrateData *Object `json:"migrate_data"`
	BlockMig    any     `json:"block_migration"`
	Context     Context `json:"context"` // sanitized: no token
	NovaID      int64   `json:"nova_id"` // Migration.id
	Disk        *string `json:"disk"`    // pre_live_migration's disk argument
	// FlatDisk describes the same disks without their backing files: sent
	// when the destination cannot pre-create the overlays Disk asks for.
	FlatDisk *string `json:"flat_disk,omitempty"`
	// CopyWhy says why the copy is not incremental ("" when it may be).
	CopyWhy string `json:"copy_why,omitempty"`
}

// encode is the journal's form of s.
func (s *State) encode() (json.RawMessage, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("nova state: %w", err)
	}
	return b, nil
}

// decodeState reads a journalled state; one without the objects every step
// needs is an error, never a zero value to act on.
func decodeState(b json.RawMessage) (*State, error) {
	s := &State{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("nova state: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if s.Instance == nil || s.Migration == nil {
		return nil, fmt.Errorf("nova state: %w: no Instance or Migration", errdefs.ErrInvalidArgument)
	}
	if len(s.Context) == 0 {
		s.Context = AdminContext()
	}
	return s, nil
}

// UpgradeState converts the state of a journal entry written before the
// journal had a version: the same objects, with the request context's
// credentials dropped (that release journalled the token).
func UpgradeState(extra json.RawMessage) (json.RawMessage, error) {
	s, err := decodeState(extra)
	if err != nil {
		return nil, err
	}
	s.Context = s.Context.Sanitized()
	return s.encode()
}
