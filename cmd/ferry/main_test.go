package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/migration"
)

func TestListAndShow(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "migrations"), 0o700)
	m := migration.Migration{Request: migration.Request{ID: "m1", InstanceUUID: "i1", DestHost: "lab-b"},
		Phase: migration.PhaseCompleted, Record: migration.Record{Started: time.Now(), Total: 6 * time.Second,
			Downtime: 72 * time.Millisecond, Actions: []migration.ActionRecord{{At: time.Second, Action: "set-downtime",
				Downtime: 1540 * time.Millisecond, Reason: "floor 64.0 MiB at 50.0 MiB/s needs 1.28s"}}}}
	b, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, "migrations", "m1.json"), b, 0o600)
	var out, errw bytes.Buffer
	if code := run([]string{"migration", "list", "--state-dir", dir}, &out, &errw); code != 0 || !strings.Contains(out.String(), "m1") || !strings.Contains(out.String(), "completed") {
		t.Errorf("list: %d %q %q", code, out.String(), errw.String())
	}
	out.Reset()
	if code := run([]string{"migration", "show", "m1", "--state-dir", dir}, &out, &errw); code != 0 || !strings.Contains(out.String(), "needs 1.28s") {
		t.Errorf("show: %d %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"migration", "show", "m1", "--state-dir", dir, "--json"}, &out, &errw); code != 0 {
		t.Fatalf("show --json: %d", code)
	}
	var back migration.Migration
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back.Record.Downtime != 72*time.Millisecond {
		t.Errorf("json: %v %+v", err, back)
	}
	if code := run([]string{"migration", "show", "nope", "--state-dir", dir}, &out, &errw); code != 1 {
		t.Errorf("unknown id: %d", code)
	}
	if code := run([]string{"bogus"}, &out, &errw); code != 2 {
		t.Errorf("usage: %d", code)
	}
}
