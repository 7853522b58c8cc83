package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// The picture of a recorded migration (testdata/recorded.json: `ferry
// migration show -f json` of a real one on the stack) is the golden file.
func TestSVGGolden(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "recorded.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v migrationView
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	got, err := renderSVG(v)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "recorded.svg")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the picture differs from %s (go test ./cmd/ferry -run TestSVGGolden -update rewrites it)", golden)
	}
	for _, a := range v.Ferry.Actions {
		if !strings.Contains(string(got), a.Action) {
			t.Errorf("action %s is not marked", a.Action)
		}
	}
	if n := strings.Count(string(got), "<polyline"); n != 3 {
		t.Errorf("%d lines, want memory, bandwidth and max downtime", n)
	}
}

func TestSVGWithoutSeries(t *testing.T) {
	if _, err := renderSVG(migrationView{ID: 3, FerryNote: "not run by ferry"}); err == nil || !strings.Contains(err.Error(), "not run by ferry") {
		t.Errorf("%v", err)
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[float64]float64{0: 1, 0.25: 0.25, 1: 1, 1.1: 1.5, 7: 8, 120: 150, 257: 300, 512: 600, 23.9: 25, 31: 40} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", in, got, want)
		}
	}
}
