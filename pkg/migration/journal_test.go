package migration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/pkg/virt/virttest"
)

// testdata/journal-v0-running.json was captured from ferryd as released
// before the journal had a version (stop 7), from a lab migration that had
// started its libvirt job when its ferryd was killed. The new engine must
// re-attach to that job and finish the migration.
func TestJournalV0RecoveredMidMigration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const id = "5f3c2a10-7e4b-4d8e-a1c2-000000000901"
		const destCheck = "qemu+unix:///system?socket=/run/ferry-lab/hosts/b/libvirt-sock"
		w := virttest.NewWorld("src", destCheck)
		w.Host("src").HostURI["qemu+tcp://198.18.0.12/system"] = destCheck
		w.Define("src", vm1)
		w.Job = virttest.Job{RAMMiB: 384, BandwidthMiBps: 50}
		// The old ferryd's job, still running in libvirt.
		old, _ := w.Dial(context.Background(), "src")
		jobDone := make(chan error, 1)
		go func() {
			jobDone <- old.Migrate(context.Background(), vm1, virt.MigrateSpec{DestURI: "qemu+tcp://198.18.0.12/system",
				MigrateURI: "tcp://198.19.0.12", DisksURI: "tcp://198.19.0.12", Disks: []string{"vda"}, Copy: virt.CopyFull, Bandwidth: 50})
		}()
		time.Sleep(2 * time.Second)
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, "migrations"), 0o700)
		b, err := os.ReadFile("testdata/journal-v0-running.json")
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "migrations", id+".json"), b, 0o600)

		var upgraded json.RawMessage
		recs := &fakeRecords{}
		l := logrus.New()
		l.SetOutput(testWriter{t})
		m, err := NewManager(Options{StateDir: dir, LocalURI: "src", Destination: &fakeDest{}, Records: recs, Log: logrus.NewEntry(l),
			Dial: func(ctx context.Context, uri string) (Hypervisor, error) { return w.Dial(ctx, uri) },
			UpgradeState: func(extra json.RawMessage) (json.RawMessage, error) {
				upgraded = extra
				return json.RawMessage(`{"upgraded":true}`), nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		s, _ := m.Status(id)
		wantDest := hostnet.Dest{Host: "lab-b", Mgmt: "198.18.0.12", Scheme: "tcp"}
		if diff := cmp.Diff(wantDest, s.Dest); diff != "" {
			t.Errorf("destination (-want +got):\n%s", diff)
		}
		if s.Prep == nil || s.Prep.MigrationAddr != "198.19.0.12" || s.Prep.Copy != virt.CopyFull || s.Job.Bandwidth != 50 ||
			!cmp.Equal(s.Job.Disks, []string{"vda"}) {
			t.Errorf("preparation %+v, job %+v", s.Prep, s.Job)
		}
		if !strings.Contains(string(upgraded), `"nova_object.name": "Instance"`) || string(s.State) != `{"upgraded":true}` {
			t.Errorf("the caller's v0 data was not handed to UpgradeState: %.200s → %s", upgraded, s.State)
		}
		stop := runManager(m)
		defer stop()
		s = waitDelivered(t, m, id)
		if s.Phase != PhaseCompleted || s.Record.Attaches != 1 {
			t.Errorf("v0 migration ended %s (%s), attaches %d", s.Phase, s.Reason, s.Record.Attaches)
		}
		if diff := cmp.Diff([]string{"status@completed", "settle@completed"}, recs.list()); diff != "" {
			t.Errorf("reports (-want +got):\n%s", diff)
		}
		if n := strings.Count(strings.Join(w.Ops(), ","), "migrate"); n != 1 {
			t.Errorf("%d migrate calls, want the old job only", n)
		}
		<-jobDone
		after, _ := os.ReadFile(filepath.Join(dir, "migrations", id+".json"))
		if !strings.Contains(string(after), `"version": 1`) {
			t.Errorf("the entry was not rewritten in the new format")
		}
	})
}

// A corrupt entry, or one from a newer ferryd, is moved aside and listed;
// the others load.
func TestJournalQuarantine(t *testing.T) {
	dir := t.TempDir()
	j, _ := newJournal(dir)
	good := &Migration{Request: req("good", vm1, Policy{}), Phase: PhaseCompleted}
	if err := j.save(good); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(j.dir, "torn.json"), []byte(`{"id": "torn", "phase": "runn`), 0o600)
	os.WriteFile(filepath.Join(j.dir, "future.json"), []byte(`{"version": 99, "id": "future"}`), 0o600)
	os.WriteFile(filepath.Join(j.dir, ".good.json.123"), []byte(`partial`), 0o600)
	m, err := NewManager(Options{StateDir: dir, LocalURI: "src", Destination: &fakeDest{}, Records: &fakeRecords{}, Retention: -1,
		Dial: func(context.Context, string) (Hypervisor, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Status("good"); !ok || len(m.List()) != 1 {
		t.Errorf("loaded %v", m.List())
	}
	var names []string
	for _, u := range m.Unreadable() {
		names = append(names, u.Name)
		if !strings.HasSuffix(u.Path, quarantineSuffix) {
			t.Errorf("%s left in place at %s", u.Name, u.Path)
		}
	}
	if diff := cmp.Diff([]string{"future.json", "torn.json"}, names); diff != "" {
		t.Errorf("unreadable (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(j.dir, ".good.json.123")); !os.IsNotExist(err) {
		t.Error("a torn temporary file was kept")
	}
	// A tool reading the journal afterwards still lists them.
	ms, bad, err := ReadJournal(dir)
	if err != nil || len(ms) != 1 || len(bad) != 2 {
		t.Errorf("ReadJournal = %d entries, %d unreadable, %v", len(ms), len(bad), err)
	}
}

// Entries of migrations that ended long ago and owe nothing are pruned.
func TestJournalPrune(t *testing.T) {
	dir := t.TempDir()
	j, _ := newJournal(dir)
	now := time.Now()
	old := &Migration{Request: req("old", vm1, Policy{}), Phase: PhaseCompleted, Record: Record{Ended: now.Add(-8 * 24 * time.Hour)}}
	owed := &Migration{Request: req("owed", vm2, Policy{}), Phase: PhaseFailed, Record: Record{Ended: now.Add(-8 * 24 * time.Hour)},
		Reports: []Report{{Seq: 1, Name: "status"}}}
	recent := &Migration{Request: req("recent", vm3, Policy{}), Phase: PhaseCompleted, Record: Record{Ended: now.Add(-time.Hour)}}
	for _, mg := range []*Migration{old, owed, recent} {
		j.save(mg)
	}
	ms, _, _ := j.read(true, nil)
	var kept []string
	for _, mg := range j.prune(ms, 7*24*time.Hour, now) {
		kept = append(kept, mg.ID)
	}
	if diff := cmp.Diff([]string{"owed", "recent"}, kept); diff != "" {
		t.Errorf("kept (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(j.path("old")); !os.IsNotExist(err) {
		t.Error("the old entry's file is still there")
	}
}

// recordFS is the real file system, recording what the journal does to it
// and failing the steps fail picks. content is what the step writes: the
// entry being written, for a directory sync the one just renamed.
type recordFS struct {
	osFS
	mu   sync.Mutex
	ops  []string
	data map[string][]byte // what each temporary file was given
	last []byte            // the entry renamed last
	fail func(op string, content []byte) error
}

func (r *recordFS) step(op string, content []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
	if r.fail != nil {
		return r.fail(op, content)
	}
	return nil
}

func (r *recordFS) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ops...)
}

func (r *recordFS) content(name string) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.data[name]
}

func (r *recordFS) CreateTemp(dir, pattern string) (tempFile, error) {
	if err := r.step("create", nil); err != nil {
		return nil, err
	}
	f, err := r.osFS.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &recordFile{tempFile: f, fs: r}, nil
}

func (r *recordFS) Rename(from, to string) error {
	b := r.content(from)
	if err := r.step("rename", b); err != nil {
		return err
	}
	if err := r.osFS.Rename(from, to); err != nil {
		return err
	}
	r.mu.Lock()
	r.last = b
	r.mu.Unlock()
	return nil
}

func (r *recordFS) SyncDir(dir string) error {
	r.mu.Lock()
	b := r.last
	r.mu.Unlock()
	if err := r.step("sync-dir", b); err != nil {
		return err
	}
	return r.osFS.SyncDir(dir)
}

func (r *recordFS) ReadFile(name string) ([]byte, error) {
	_ = r.step("read "+filepath.Base(name), nil)
	return r.osFS.ReadFile(name)
}

func (r *recordFS) ReadDir(name string) ([]os.DirEntry, error) {
	_ = r.step("read-dir", nil)
	return r.osFS.ReadDir(name)
}

type recordFile struct {
	tempFile
	fs *recordFS
}

func (f *recordFile) Write(b []byte) (int, error) {
	f.fs.mu.Lock()
	if f.fs.data == nil {
		f.fs.data = map[string][]byte{}
	}
	f.fs.data[f.Name()] = append(f.fs.data[f.Name()], b...)
	f.fs.mu.Unlock()
	if err := f.fs.step("write", b); err != nil {
		return 0, err
	}
	return f.tempFile.Write(b)
}

func (f *recordFile) Sync() error {
	if err := f.fs.step("sync", f.fs.content(f.Name())); err != nil {
		return err
	}
	return f.tempFile.Sync()
}

func (f *recordFile) Close() error {
	err := f.tempFile.Close()
	if ferr := f.fs.step("close", f.fs.content(f.Name())); ferr != nil {
		return ferr
	}
	return err
}

// failAt fails the step op of every write whose entry contains marker.
func failAt(op, marker string) func(string, []byte) error {
	return func(o string, content []byte) error {
		if o == op && strings.Contains(string(content), marker) {
			return fmt.Errorf("injected %s failure", op)
		}
		return nil
	}
}

// A write is durable only once the directory holding the renamed entry is
// synced: the rename lives in the directory, and a crash before its sync
// can lose it (issue 12).
func TestJournalWriteSyncsTheDirectoryAfterTheRename(t *testing.T) {
	j, err := newJournal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordFS{}
	j.fs = rec
	mg := &Migration{Request: req("m1", vm1, Policy{}), Phase: PhaseQueued}
	if err := j.save(mg); err != nil {
		t.Fatal(err)
	}
	want := []string{"create", "write", "sync", "close", "rename", "sync-dir"}
	if diff := cmp.Diff(want, rec.list()); diff != "" {
		t.Errorf("steps of a write (-want +got):\n%s", diff)
	}
	got, err := j.entry("m1")
	if err != nil || got.Phase != PhaseQueued || got.ID != "m1" {
		t.Errorf("entry read back: %+v, %v", got, err)
	}
}

// Whichever step of a write fails, the write fails, and a write that failed
// before its rename leaves the previous entry and no temporary file.
func TestJournalWriteFailures(t *testing.T) {
	for _, op := range []string{"create", "write", "sync", "close", "rename", "sync-dir"} {
		t.Run(op, func(t *testing.T) {
			j, err := newJournal(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			rec := &recordFS{}
			j.fs = rec
			mg := &Migration{Request: req("m1", vm1, Policy{}), Phase: PhaseQueued}
			if err := j.save(mg); err != nil {
				t.Fatal(err)
			}
			rec.fail = func(o string, _ []byte) error {
				if o == op {
					return fmt.Errorf("injected %s failure", op)
				}
				return nil
			}
			mg.Phase = PhasePreparing
			err = j.save(mg)
			if err == nil || !strings.Contains(err.Error(), "injected "+op+" failure") {
				t.Fatalf("save = %v, want the %s failure", err, op)
			}
			ents, _ := os.ReadDir(j.dir)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			if diff := cmp.Diff([]string{"m1.json"}, names); diff != "" {
				t.Errorf("journal directory (-want +got):\n%s", diff)
			}
			want := PhaseQueued
			if op == "sync-dir" { // renamed, but not known to be durable
				want = PhasePreparing
			}
			if got, err := j.entry("m1"); err != nil || got.Phase != want {
				t.Errorf("entry after the failed write: %s, %v; want %s", got.Phase, err, want)
			}
		})
	}
}

// Looking up one migration reads its entry and no other: a journal of many
// migrations, or one with a corrupt entry, costs a lookup nothing, and the
// entries it does not ask for are left as they are.
func TestJournalEntryReadsOneEntry(t *testing.T) {
	dir := t.TempDir()
	j, err := newJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, mg := range []*Migration{
		{Request: req("good", vm1, Policy{}), Phase: PhaseCompleted},
		{Request: req("other", vm2, Policy{}), Phase: PhaseRunning},
	} {
		if err := j.save(mg); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(j.dir, "torn.json"), []byte(`{"id": "torn", "phase": "runn`), 0o600)
	os.WriteFile(filepath.Join(j.dir, "future.json"), []byte(`{"version": 99, "id": "future"}`), 0o600)
	rec := &recordFS{}
	j.fs = rec
	got, err := j.entry("good")
	if err != nil || got.ID != "good" || got.Phase != PhaseCompleted || got.InstanceUUID != vm1 {
		t.Fatalf("entry(good) = %+v, %v", got, err)
	}
	if diff := cmp.Diff([]string{"read good.json"}, rec.list()); diff != "" {
		t.Errorf("what a lookup read (-want +got):\n%s", diff)
	}

	// The exported lookup, as ferry migration show uses it.
	if got, err := ReadEntry(dir, "good"); err != nil || got.ID != "good" {
		t.Errorf("ReadEntry(good) = %+v, %v", got, err)
	}
	if _, err := ReadEntry(dir, "missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadEntry(missing) = %v, want ErrNotExist", err)
	}
	if _, err := ReadEntry(dir, "torn"); err == nil {
		t.Error("ReadEntry(torn) decoded a torn entry")
	}
	if _, err := ReadEntry(dir, "../good"); err == nil {
		t.Error("ReadEntry took a path for an id")
	}
	for _, name := range []string{"torn.json", "future.json"} {
		if _, err := os.Stat(filepath.Join(j.dir, name)); err != nil {
			t.Errorf("%s was moved by a lookup: %v", name, err)
		}
	}
}
