package cutover

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSetOption(t *testing.T) {
	x := "ferry-h1"
	for _, tc := range []struct {
		name, in string
		value    *string
		want     string
	}{
		{"added below the header", "# nova-compute\n[DEFAULT]\ndebug = true\n\n[libvirt]\nvirt_type = kvm\n", &x,
			"# nova-compute\n[DEFAULT]\ncontrol_exchange = ferry-h1\ndebug = true\n\n[libvirt]\nvirt_type = kvm\n"},
		{"replaced, comments kept", "[DEFAULT]\n# the exchange\ncontrol_exchange=nova\nhost = h1\n", &x,
			"[DEFAULT]\n# the exchange\ncontrol_exchange = ferry-h1\nhost = h1\n"},
		{"already set: unchanged", "[DEFAULT]\ncontrol_exchange = ferry-h1\n", &x, "[DEFAULT]\ncontrol_exchange = ferry-h1\n"},
		{"other sections untouched", "[oslo_messaging_rabbit]\ncontrol_exchange = x\n[DEFAULT]\n", &x,
			"[oslo_messaging_rabbit]\ncontrol_exchange = x\n[DEFAULT]\ncontrol_exchange = ferry-h1\n"},
		{"no DEFAULT section", "[libvirt]\nvirt_type = kvm\n", &x, "[DEFAULT]\ncontrol_exchange = ferry-h1\n\n[libvirt]\nvirt_type = kvm\n"},
		{"empty file", "", &x, "[DEFAULT]\ncontrol_exchange = ferry-h1\n"},
		{"header without newline", "[DEFAULT]", &x, "[DEFAULT]\ncontrol_exchange = ferry-h1\n"},
		{"duplicates and continuations go", "[DEFAULT]\ncontrol_exchange = a\n  b\nx = 1\n[DEFAULT]\ncontrol_exchange: c\n", &x,
			"[DEFAULT]\ncontrol_exchange = ferry-h1\nx = 1\n[DEFAULT]\n"},
		{"CRLF kept", "[DEFAULT]\r\ncontrol_exchange = nova\r\n", &x, "[DEFAULT]\r\ncontrol_exchange = ferry-h1\r\n"},
		{"a commented one is a comment", "[DEFAULT]\n#control_exchange = nova\n", &x, "[DEFAULT]\ncontrol_exchange = ferry-h1\n#control_exchange = nova\n"},
		{"removed", "[DEFAULT]\ndebug = true\ncontrol_exchange = ferry-h1\n[libvirt]\n", nil, "[DEFAULT]\ndebug = true\n[libvirt]\n"},
		{"removed: absent", "[DEFAULT]\ndebug = true\n", nil, "[DEFAULT]\ndebug = true\n"},
		{"prefix of another option", "[DEFAULT]\ncontrol_exchange_x = 1\n", nil, "[DEFAULT]\ncontrol_exchange_x = 1\n"},
	} {
		got := setOption(tc.in, "DEFAULT", "control_exchange", tc.value)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}

// The file is replaced atomically with its mode kept, and not written at
// all when nothing changes.
func TestINIFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nova.conf")
	if err := os.WriteFile(p, []byte("[DEFAULT]\nhost = h1\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	var f INIFile
	if err := f.Set(p, "DEFAULT", "control_exchange", "ferry-h1"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if string(b) != "[DEFAULT]\ncontrol_exchange = ferry-h1\nhost = h1\n" {
		t.Errorf("after Set: %q", b)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	before := fi.ModTime()
	if err := f.Set(p, "DEFAULT", "control_exchange", "ferry-h1"); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); !fi.ModTime().Equal(before) {
		t.Error("an unchanged file was written")
	}
	if err := f.Unset(p, "DEFAULT", "control_exchange"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "[DEFAULT]\nhost = h1\n" {
		t.Errorf("after Unset: %q", b)
	}
	if ents, _ := os.ReadDir(filepath.Dir(p)); len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
	if err := f.Set(filepath.Join(t.TempDir(), "missing.conf"), "DEFAULT", "a", "b"); err == nil {
		t.Error("Set on a missing file succeeded")
	}
}
