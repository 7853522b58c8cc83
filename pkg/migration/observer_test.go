package migration

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/virt/virttest"
)

// recordingObserver keeps what the engine reported.
type recordingObserver struct {
	mu      sync.Mutex
	moves   []string // from→to
	actions []ActionRecord
	ended   []Migration
}

func (o *recordingObserver) Phase(m Migration, from Phase) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.moves = append(o.moves, string(from)+"→"+string(m.Phase))
	if m.Phase.Terminal() {
		o.ended = append(o.ended, m)
	}
}

func (o *recordingObserver) Action(m Migration, a ActionRecord, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.actions = append(o.actions, a)
}

// The Observer hears every phase a migration enters, a refusal included,
// and every action the record keeps; the ended migration it is shown
// carries the record's figures.
func TestObserverSeesPhasesAndActions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		obs := &recordingObserver{}
		f.obs = obs
		m := f.running(t)
		start(t, m, req("m1", vm1, Policy{}))
		s := waitDelivered(t, m, "m1")
		if _, err := m.Refuse(t.Context(), req("m2", vm2, Policy{}), "not here"); err != nil {
			t.Fatal(err)
		}
		waitDelivered(t, m, "m2")
		obs.mu.Lock()
		defer obs.mu.Unlock()
		want := []string{"→queued", "queued→preparing", "preparing→running", "running→completed", "→error"}
		if diff := cmp.Diff(want, obs.moves); diff != "" {
			t.Errorf("phase moves (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(s.Record.Actions, obs.actions); diff != "" {
			t.Errorf("actions observed, against the record (-record +observed):\n%s", diff)
		}
		if len(obs.ended) != 2 || obs.ended[0].Record.MemBytes != s.Record.MemBytes || obs.ended[0].Record.Total != s.Record.Total {
			t.Errorf("ended migrations observed %+v, want m1 with the record %+v first", obs.ended, s.Record)
		}
	})
}

// Every log line about a migration carries the request's ids.
func TestLogLinesCarryRequestIDs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		var buf syncBuffer
		f.log = &buf
		m := f.manager(t)
		m.o.Log.Logger.SetFormatter(jsonFormatter())
		t.Cleanup(runManager(m))
		synctest.Wait()
		r := req("m1", vm1, Policy{})
		r.RequestID, r.GlobalRequestID = "req-6f1c", "req-global-77"
		start(t, m, r)
		waitDelivered(t, m, "m1")
		lines := 0
		for _, l := range bytes.Split(buf.bytes(), []byte("\n")) {
			var e map[string]any
			if len(l) == 0 || json.Unmarshal(l, &e) != nil || e["migration_id"] != "m1" {
				continue
			}
			lines++
			if e["request_id"] != "req-6f1c" || e["global_request_id"] != "req-global-77" {
				t.Errorf("log line without the request's ids: %s", l)
			}
		}
		if lines < 4 {
			t.Errorf("only %d log lines name the migration", lines)
		}
	})
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

func jsonFormatter() *logrus.JSONFormatter { return &logrus.JSONFormatter{} }

// Progress shows the monitor's latest sample while the job runs, and
// nothing once the migration has ended.
func TestProgressWhileRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.w.Job = virttest.Job{RAMMiB: 512, WSMiB: 256, DirtyMiBps: 200, BandwidthMiBps: 50}
		m := f.running(t)
		if _, _, ok := m.Progress("m"); ok {
			t.Error("progress for an unknown migration")
		}
		start(t, m, req("m", vm1, Policy{}))
		waitPhase(t, m, "m", PhaseRunning)
		time.Sleep(3 * time.Second)
		js, at, ok := m.Progress("m")
		if !ok || js.MemTotal == 0 || js.MemProcessed == 0 || at.IsZero() || time.Since(at) > 2*time.Second {
			t.Errorf("progress while running: %+v at %v (%v)", js, at, ok)
		}
		if err := m.Abort(context.Background(), "m"); err != nil {
			t.Fatal(err)
		}
		waitDelivered(t, m, "m")
		if _, _, ok := m.Progress("m"); ok {
			t.Error("progress after the migration ended")
		}
	})
}
