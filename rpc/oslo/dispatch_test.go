package oslo

import (
	"context"
	"errors"
	"testing"
)

func TestVersionCompatible(t *testing.T) {
	tests := []struct {
		have, want string
		ok         bool
	}{
		{"6.4", "6.0", true}, {"6.4", "6.4", true}, {"6.4", "6.5", false}, {"6.4", "5.0", false},
		{"5.13", "5.0", true}, {"5.13", "5.13", true}, {"1.1", "1.0", true}, {"6.4", "7.0", false},
		{"6.4.1", "6.4", true}, {"6.4", "6.4.1", false}, {"6.4.2", "6.4.1", true}, {"6.4", "x", false},
		{"6.4", "", false},
	}
	for _, tc := range tests {
		if got := VersionCompatible(tc.have, tc.want); got != tc.ok {
			t.Errorf("VersionCompatible(%q, %q) = %v, want %v", tc.have, tc.want, got, tc.ok)
		}
	}
}

func TestDispatcher(t *testing.T) {
	tag := func(s string) Handler {
		return HandlerFunc(func(context.Context, *Request) (any, error) { return s, nil })
	}
	d := &Dispatcher{Endpoints: []Endpoint{
		{Version: "6.4", Methods: map[string]Handler{"live_migration": tag("v6"), "_private": tag("no")}},
		{Namespace: "baseapi", Version: "1.1", Methods: map[string]Handler{"ping": tag("ping")}},
		{Version: "5.13", Methods: map[string]Handler{"live_migration": tag("v5"), "pre_live_migration": tag("v5-pre")}},
	}}
	tests := []struct {
		ns, version, method string
		want                string
		failure             string
	}{
		{"", "6.0", "live_migration", "v6", ""},
		{"", "6.4", "live_migration", "v6", ""},
		{"", "5.0", "live_migration", "v5", ""},
		{"", "5.13", "pre_live_migration", "v5-pre", ""},
		{"baseapi", "1.0", "ping", "ping", ""},
		{"", "6.0", "pre_live_migration", "", "NoSuchMethod"},
		{"", "6.0", "_private", "", "NoSuchMethod"},
		{"", "6.5", "live_migration", "", "UnsupportedVersion"},
		{"", "1.0", "live_migration", "", "UnsupportedVersion"},
		{"other", "6.0", "live_migration", "", "UnsupportedVersion"},
	}
	for _, tc := range tests {
		got, err := d.ServeRPC(context.Background(), &Request{Message: Message{Namespace: tc.ns, Version: tc.version, Method: tc.method}})
		var f *Failure
		switch {
		case tc.failure != "" && (!errors.As(err, &f) || f.Class != tc.failure || f.Module != dispatcherModule):
			t.Errorf("%s %s %s: err = %v, want %s", tc.ns, tc.version, tc.method, err, tc.failure)
		case tc.failure == "" && (err != nil || got != tc.want):
			t.Errorf("%s %s %s = %v, %v; want %s", tc.ns, tc.version, tc.method, got, err, tc.want)
		}
	}
}

func TestDedup(t *testing.T) {
	d := newDedup(3)
	for _, id := range []string{"a", "b", "c"} {
		if !d.first(id) {
			t.Fatalf("first(%s) = false on first sight", id)
		}
	}
	if d.first("a") {
		t.Error("first(a) = true for a repeat")
	}
	d.first("d") // evicts a
	if !d.first("a") {
		t.Error("first(a) = false after eviction")
	}
	if !d.first("") || !d.first("") {
		t.Error("messages without a _unique_id are never duplicates")
	}
}
