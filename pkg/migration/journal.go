package migration

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/virt"
)

// journalVersion is the format this engine writes. Version 0 (no "version"
// key) is what ferry wrote before: one virt.MigrateSpec with the URIs and the
// caller's data under "extra"; it is converted on load (upgradeV0).
const journalVersion = 1

// journal keeps one small JSON file per migration under dir. A write goes to
// a temporary file, is synced, renamed, and the directory synced, so a crash
// leaves either the old or the new state, never a torn or a lost one.
type journal struct {
	dir string
	fs  fileSystem
}

func newJournal(stateDir string) (*journal, error) {
	dir := filepath.Join(stateDir, "migrations")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	return &journal{dir: dir, fs: osFS{}}, nil
}

// fileSystem is what the journal does to files, so that a test can see the
// order of a write's steps and make any of them fail.
type fileSystem interface {
	CreateTemp(dir, pattern string) (tempFile, error)
	Rename(from, to string) error
	Remove(name string) error
	SyncDir(dir string) error
	ReadFile(name string) ([]byte, error)
	ReadDir(name string) ([]os.DirEntry, error)
}

// tempFile is the file a write goes to before it is renamed (an *os.File).
type tempFile interface {
	io.Writer
	Sync() error
	Close() error
	Name() string
}

// osFS is the real file system.
type osFS struct{}

func (osFS) Rename(from, to string) error               { return os.Rename(from, to) }
func (osFS) Remove(name string) error                   { return os.Remove(name) }
func (osFS) ReadFile(name string) ([]byte, error)       { return os.ReadFile(name) }
func (osFS) ReadDir(name string) ([]os.DirEntry, error) { return os.ReadDir(name) }

func (osFS) CreateTemp(dir, pattern string) (tempFile, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err // not a nil *os.File in an interface
	}
	return f, nil
}

func (osFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (j *journal) path(id string) string { return filepath.Join(j.dir, id+".json") }

func validID(id string) error {
	if id == "" || len(id) > 128 || strings.ContainsAny(id, "/\\\x00") || strings.HasPrefix(id, ".") {
		return fmt.Errorf("migration id %q is not usable as a file name", id)
	}
	return nil
}

func (j *journal) save(m *Migration) error {
	m.Version = journalVersion
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("journal %s: %w", m.ID, err)
	}
	return j.writeFileSync(m.ID+".json", b)
}

// writeFileSync replaces j.dir/name with b durably: until the directory is
// synced the rename itself may be lost in a crash, so a write is done only
// then.
func (j *journal) writeFileSync(name string, b []byte) error {
	tmp, err := j.fs.CreateTemp(j.dir, "."+name+".*")
	if err != nil {
		return fmt.Errorf("journal %s: %w", name, err)
	}
	_, werr := tmp.Write(b)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		j.fs.Remove(tmp.Name())
		return fmt.Errorf("journal %s: %w", name, err)
	}
	if err := j.fs.Rename(tmp.Name(), filepath.Join(j.dir, name)); err != nil {
		j.fs.Remove(tmp.Name())
		return fmt.Errorf("journal %s: %w", name, err)
	}
	if err := j.fs.SyncDir(j.dir); err != nil {
		return fmt.Errorf("journal %s: sync directory: %w", name, err)
	}
	return nil
}

// Unreadable is a journal entry that could not be decoded. A loading engine
// moves it aside (Path is then the new name) so that it is never taken for a
// migration, and reports it; an operator decides.
type Unreadable struct {
	Name string // the entry's file name
	Path string // where it is now
	Err  error
}

func (u Unreadable) Error() string {
	return fmt.Sprintf("journal %s (now %s): %v", u.Name, u.Path, u.Err)
}

// quarantineSuffix marks an entry moved aside.
const quarantineSuffix = ".unreadable"

// read decodes every entry. With clean set (the engine, not a tool) it also
// removes temporary files a crash left and moves unreadable entries aside.
func (j *journal) read(clean bool, upgrade func(json.RawMessage) (json.RawMessage, error)) ([]*Migration, []Unreadable, error) {
	ents, err := j.fs.ReadDir(j.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("journal: %w", err)
	}
	var out []*Migration
	var bad []Unreadable
	for _, e := range ents {
		name := e.Name()
		p := filepath.Join(j.dir, name)
		switch {
		case strings.HasPrefix(name, "."): // a write a crash interrupted
			if clean {
				j.fs.Remove(p)
			}
			continue
		case strings.HasSuffix(name, quarantineSuffix):
			bad = append(bad, Unreadable{Name: strings.TrimSuffix(name, quarantineSuffix), Path: p, Err: errors.New("moved aside at an earlier start")})
			continue
		case !strings.HasSuffix(name, ".json"):
			continue
		}
		m, err := j.decode(p, upgrade)
		if err == nil {
			out = append(out, m)
			continue
		}
		u := Unreadable{Name: name, Path: p, Err: err}
		if clean {
			q := p + quarantineSuffix
			if rerr := j.fs.Rename(p, q); rerr == nil {
				u.Path = q
			}
		}
		bad = append(bad, u)
	}
	return out, bad, nil
}

func (j *journal) decode(path string, upgrade func(json.RawMessage) (json.RawMessage, error)) (*Migration, error) {
	b, err := j.fs.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var probe struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, err
	}
	var m *Migration
	switch probe.Version {
	case 0:
		m, err = upgradeV0(b, upgrade)
	case journalVersion:
		m = &Migration{}
		err = json.Unmarshal(b, m)
	default:
		err = fmt.Errorf("journal format %d is newer than this ferryd's (%d)", probe.Version, journalVersion)
	}
	if err != nil {
		return nil, err
	}
	if err := validID(m.ID); err != nil || filepath.Base(path) != m.ID+".json" {
		return nil, fmt.Errorf("entry names migration %q", m.ID)
	}
	return m, nil
}

// v0 is the part of a version-0 entry that differs from version 1.
type v0 struct {
	Domain   string           `json:"domain"`
	DestHost string           `json:"dest_host"`
	Spec     virt.MigrateSpec `json:"spec"`
	Extra    json.RawMessage  `json:"extra"`
	CopyNote string           `json:"copy_note"`
}

// upgradeV0 converts an entry written by ferry before the journal had a
// version: the URIs of its spec become the destination and, once the job
// had started, the preparation; its "extra" becomes the caller's state
// (through upgrade, the caller's own converter).
func upgradeV0(b []byte, upgrade func(json.RawMessage) (json.RawMessage, error)) (*Migration, error) {
	m := &Migration{}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, err
	}
	var old v0
	if err := json.Unmarshal(b, &old); err != nil {
		return nil, err
	}
	if old.Domain != "" && old.Domain != m.InstanceUUID {
		return nil, fmt.Errorf("version-0 entry: domain %q is not the instance %q", old.Domain, m.InstanceUUID)
	}
	ctl, err := url.Parse(old.Spec.DestURI)
	if err != nil || ctl.Hostname() == "" {
		return nil, fmt.Errorf("version-0 entry: destination URI %q", old.Spec.DestURI)
	}
	scheme := strings.TrimPrefix(ctl.Scheme, "qemu+")
	m.Dest = hostnet.Dest{Host: old.DestHost, Mgmt: ctl.Hostname(), Scheme: scheme, TLSName: old.Spec.TLSDestination}
	m.Job = Job{Disks: old.Spec.Disks, Bandwidth: old.Spec.Bandwidth, NativeTLS: old.Spec.TLS, Parallel: old.Spec.Parallel}
	if m.Phase != PhaseQueued && m.Phase != PhasePreparing {
		mig, err := url.Parse(old.Spec.MigrateURI)
		if err != nil {
			return nil, fmt.Errorf("version-0 entry: migrate URI %q", old.Spec.MigrateURI)
		}
		m.Prep = &Preparation{MigrationAddr: mig.Hostname(), Copy: old.Spec.Copy, CopyNote: old.CopyNote}
	}
	m.State = old.Extra
	if upgrade != nil && len(old.Extra) > 0 {
		if m.State, err = upgrade(old.Extra); err != nil {
			return nil, fmt.Errorf("version-0 entry: caller's state: %w", err)
		}
	}
	if m.Updated.IsZero() {
		m.Updated = time.Now()
	}
	return m, nil
}

// prune removes the entries of migrations that ended more than age ago.
func (j *journal) prune(ms []*Migration, age time.Duration, now time.Time) []*Migration {
	var keep []*Migration
	for _, m := range ms {
		if age > 0 && m.Phase.Terminal() && m.Pending() == 0 && !m.Record.Ended.IsZero() && now.Sub(m.Record.Ended) > age {
			if err := j.fs.Remove(j.path(m.ID)); err == nil || errors.Is(err, os.ErrNotExist) {
				continue
			}
		}
		keep = append(keep, m)
	}
	return keep
}

// ReadJournal returns the migrations journalled under a state directory and
// the entries that could not be read, for tools that inspect a ferryd's
// state (it takes no lock and changes nothing).
func ReadJournal(stateDir string) ([]Migration, []Unreadable, error) {
	j := &journal{dir: filepath.Join(stateDir, "migrations"), fs: osFS{}}
	if _, err := os.Stat(j.dir); err != nil {
		return nil, nil, fmt.Errorf("journal: %w", err)
	}
	ms, bad, err := j.read(false, nil)
	out := make([]Migration, 0, len(ms))
	for _, m := range ms {
		out = append(out, *m)
	}
	return out, bad, err
}

// ReadEntry returns one journalled migration, decoding that entry only.
func ReadEntry(stateDir, id string) (Migration, error) {
	j := &journal{dir: filepath.Join(stateDir, "migrations"), fs: osFS{}}
	return j.entry(id)
}

// entry reads the entry of migration id, and no other.
func (j *journal) entry(id string) (Migration, error) {
	if err := validID(id); err != nil {
		return Migration{}, fmt.Errorf("journal: %w", err)
	}
	m, err := j.decode(j.path(id), nil)
	if err != nil {
		return Migration{}, fmt.Errorf("journal %s: %w", id, err)
	}
	return *m, nil
}
