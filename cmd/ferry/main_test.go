package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
)

func TestJournalListAndShow(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "migrations"), 0o700)
	m := migration.Migration{Version: 1, Request: migration.Request{ID: "m1", InstanceUUID: "i1", Dest: hostnet.Dest{Host: "lab-b"},
		State: []byte(`{"context": {"auth_token": "secret-token"}}`)},
		Phase: migration.PhaseCompleted, Record: migration.Record{Started: time.Now(), Total: 6 * time.Second,
			Downtime: 72 * time.Millisecond, Actions: []migration.ActionRecord{{At: time.Second, Action: "set-downtime",
				Downtime: 1540 * time.Millisecond, Reason: "floor 64.0 MiB at 50.0 MiB/s needs 1.28s"}},
			Series: []migration.Point{{At: time.Second, MemRemaining: 200 << 20, Bps: 50 << 20, MaxDowntime: 100 * time.Millisecond},
				{At: 2 * time.Second, MemRemaining: 100 << 20, Bps: 50 << 20, MaxDowntime: 1540 * time.Millisecond}}}}
	b, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, "migrations", "m1.json"), b, 0o600)
	var out, errw bytes.Buffer
	if code := run(context.Background(), []string{"journal", "list", "--state-dir", dir}, &out, &errw); code != 0 || !strings.Contains(out.String(), "m1") || !strings.Contains(out.String(), "completed") {
		t.Errorf("list: %d %q %q", code, out.String(), errw.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"journal", "show", "m1", "--state-dir", dir}, &out, &errw); code != 0 || !strings.Contains(out.String(), "needs 1.28s") {
		t.Errorf("show: %d %q", code, out.String())
	}
	pic := filepath.Join(dir, "m1.svg")
	if code := run(context.Background(), []string{"journal", "show", "m1", "--state-dir", dir, "--svg", pic}, &out, &errw); code != 0 {
		t.Errorf("show --svg: %d %q", code, errw.String())
	}
	if b, err := os.ReadFile(pic); err != nil || !strings.Contains(string(b), "migration m1 this host→lab-b: completed") || !strings.Contains(string(b), "set-downtime 1540ms") {
		t.Errorf("the picture from the journal: %v\n%.400s", err, b)
	}
	out.Reset()
	if code := run(context.Background(), []string{"journal", "show", "m1", "--state-dir", dir, "--json"}, &out, &errw); code != 0 {
		t.Fatalf("show --json: %d", code)
	}
	var back migration.Migration
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back.Record.Downtime != 72*time.Millisecond {
		t.Errorf("json: %v %+v", err, back)
	}
	if strings.Contains(out.String(), "secret-token") || strings.Contains(out.String(), "auth_token") {
		t.Errorf("show --json prints the caller's state:\n%s", out.String())
	}
	os.WriteFile(filepath.Join(dir, "migrations", "torn.json"), []byte(`{"id": "to`), 0o600)
	out.Reset()
	errw.Reset()
	if code := run(context.Background(), []string{"journal", "list", "--state-dir", dir}, &out, &errw); code != 0 || !strings.Contains(out.String(), "unreadable") ||
		!strings.Contains(errw.String(), "torn.json is unreadable") {
		t.Errorf("list with an unreadable entry: %d %q %q", code, out.String(), errw.String())
	}
	if code := run(context.Background(), []string{"journal", "show", "nope", "--state-dir", dir}, &out, &errw); code != 1 {
		t.Errorf("unknown id: %d", code)
	}
	if code := run(context.Background(), []string{"bogus"}, &out, &errw); code != 2 {
		t.Errorf("usage: %d", code)
	}
}
