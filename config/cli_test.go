package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseCLI(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := ParseCLI([]byte("ferryd:\n  url: https://{host}:9779\n  hosts:\n    lab-a: https://198.18.0.11:9779/\n  ca_file: " + ca + "\n  timeout: 3s\ndrain:\n  bandwidth: 110.5\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Ferryd.URL != "https://{host}:9779" || c.Ferryd.Hosts["lab-a"] != "https://198.18.0.11:9779/" || c.Ferryd.Timeout.D() != 3*time.Second ||
		c.Drain.Bandwidth != 110.5 {
		t.Errorf("%+v", c)
	}
	if c, err := ParseCLI(nil); err != nil || c.Ferryd.URL != "" {
		t.Errorf("an empty file: %+v %v", c, err)
	}
	// Every problem at once.
	_, err = ParseCLI([]byte("ferryd:\n  url: ftp://{host}\n  hosts:\n    lab-b: //nohost\n    lab-c: http://\n  ca_file: /nonexistent/ca.pem\ndrain:\n  bandwidth: -1\n"))
	for _, want := range []string{"5 problems", "ferryd.url", "ferryd.hosts.lab-b", "ferryd.hosts.lab-c", "ferryd.ca_file", "drain.bandwidth"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
	if _, err := ParseCLI([]byte("ferryd:\n  urls: x\n")); err == nil {
		t.Error("an unknown key was accepted")
	}
}

// -f yaml shows the fields of the JSON encoding.
func TestYAMLUsesJSONNames(t *testing.T) {
	b, err := YAML(struct {
		MemoryBytes uint64  `json:"memory_bytes"`
		Note        string  `json:"note,omitempty"`
		Seconds     float64 `json:"seconds"`
		Max         uint64  `json:"max"`
	}{MemoryBytes: 3 << 30, Seconds: 0.18, Max: 1<<64 - 1})
	if want := "max: 18446744073709551615\nmemory_bytes: 3221225472\nseconds: 0.18\n"; err != nil || string(b) != want {
		t.Errorf("%q %v", b, err)
	}
}
