package migration

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// journal keeps one small JSON file per migration under dir. A write goes to
// a temporary file, is synced and renamed, so a crash leaves either the old
// or the new state, never a torn one.
type journal struct{ dir string }

func newJournal(stateDir string) (*journal, error) {
	dir := filepath.Join(stateDir, "migrations")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	return &journal{dir: dir}, nil
}

func (j *journal) path(id string) string { return filepath.Join(j.dir, id+".json") }

func validID(id string) error {
	if id == "" || len(id) > 128 || strings.ContainsAny(id, "/\\\x00") || strings.HasPrefix(id, ".") {
		return fmt.Errorf("migration id %q is not usable as a file name", id)
	}
	return nil
}

func (j *journal) save(m *Migration) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("journal %s: %w", m.ID, err)
	}
	tmp, err := os.CreateTemp(j.dir, "."+m.ID+".*")
	if err != nil {
		return fmt.Errorf("journal %s: %w", m.ID, err)
	}
	_, werr := tmp.Write(b)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("journal %s: %w", m.ID, err)
	}
	if err := os.Rename(tmp.Name(), j.path(m.ID)); err != nil {
		return fmt.Errorf("journal %s: %w", m.ID, err)
	}
	return nil
}

func (j *journal) load() ([]*Migration, error) { return j.read(true) }

func (j *journal) loadReadOnly() ([]*Migration, error) { return j.read(false) }

func (j *journal) read(clean bool) ([]*Migration, error) {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	var out []*Migration
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") { // a write a crash interrupted
			if clean {
				os.Remove(filepath.Join(j.dir, name))
			}
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(j.dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m := &Migration{}
		if err := json.Unmarshal(b, m); err != nil {
			errs = append(errs, fmt.Errorf("journal %s: %w", name, err))
			continue
		}
		out = append(out, m)
	}
	return out, errors.Join(errs...)
}

// ReadJournal returns the migrations journalled under a state directory,
// for tools that inspect a ferryd's state (it takes no lock and changes
// nothing).
func ReadJournal(stateDir string) ([]Migration, error) {
	j := &journal{dir: filepath.Join(stateDir, "migrations")}
	if _, err := os.Stat(j.dir); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	ms, err := j.loadReadOnly()
	out := make([]Migration, 0, len(ms))
	for _, m := range ms {
		out = append(out, *m)
	}
	return out, err
}
