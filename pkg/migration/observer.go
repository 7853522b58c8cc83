package migration

import "github.com/sirupsen/logrus"

// Observer learns what the engine does, for metrics: every phase a
// migration enters and every action the monitor takes, in order for each
// migration, after the change is journalled. Its methods run on the
// engine's goroutines, the admission's under the Manager's lock: they must
// return at once and must not call the Manager.
type Observer interface {
	// Phase: m has moved from one phase to m.Phase. from is PhaseNew for a
	// migration just admitted: queued, or refused (error) before it was.
	Phase(m Migration, from Phase)
	// Action: the monitor took a, or tried to (err says why it failed).
	Action(m Migration, a ActionRecord, err error)
}

type nopObserver struct{}

func (nopObserver) Phase(Migration, Phase)                {}
func (nopObserver) Action(Migration, ActionRecord, error) {}

// LogFields are the fields every log line about the migration carries:
// its ids and the request that started it (Nova's request_id and
// global_request_id, never its token).
func (r Request) LogFields() logrus.Fields {
	f := logrus.Fields{"migration_id": r.ID, "instance_uuid": r.InstanceUUID}
	if r.RequestID != "" {
		f["request_id"] = r.RequestID
	}
	if r.GlobalRequestID != "" {
		f["global_request_id"] = r.GlobalRequestID
	}
	return f
}
