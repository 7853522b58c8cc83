package oslo

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeCapturedCall(t *testing.T) {
	m, err := decodeMessage(contentType, readTestdata(t, "call_check_can_live_migrate_destination.json"))
	if err != nil {
		t.Fatal(err)
	}
	got := struct {
		Method, Namespace, Version, MsgID, ReplyQ, UniqueID string
		Timeout                                             time.Duration
		Args                                                []string
		User, Timestamp                                     string
		Call                                                bool
	}{m.Method, m.Namespace, m.Version, m.MsgID, m.ReplyQ, m.UniqueID, m.Timeout, nil,
		string(m.Context["user"]), string(m.Context["timestamp"]), m.IsCall()}
	for k := range m.Args {
		got.Args = append(got.Args, k)
	}
	want := got
	want.Method, want.Namespace, want.Version = "check_can_live_migrate_destination", "", "6.0"
	want.MsgID, want.ReplyQ = "659bd8495c1948dbbf549e1ea8ab133f", "reply_9ccbc26d5545446ea65c8ef27c36903d"
	want.UniqueID, want.Timeout = "c18b5efa06464fe988a5f0774b02ea66", 30*time.Second
	want.User, want.Timestamp = `"7a1c0c5f2e0b4c3d9f8e7d6c5b4a3921"`, `"2024-05-01T12:00:00.000000"`
	want.Call = true
	if diff := cmp.Diff(want, got, cmp.Transformer("sort", func(s []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range s {
			m[x] = true
		}
		return m
	})); diff != "" {
		t.Errorf("decode mismatch (-want +got):\n%s", diff)
	}
	for _, a := range []string{"instance", "block_migration", "disk_over_commit", "migration", "limits"} {
		if _, ok := m.Args[a]; !ok {
			t.Errorf("argument %s missing", a)
		}
	}
}

func TestDecodeBareAndDefaults(t *testing.T) {
	m, err := decodeMessage(contentType, readTestdata(t, "call_object_action_bare.json"))
	if err != nil || m.Method != "object_action" || m.Version != "3.0" || m.Timeout != 0 || !m.IsCall() {
		t.Errorf("bare message: %+v, %v", m, err)
	}
	m, err = decodeMessage(contentType, []byte(`{"method":"ping","args":{"arg":1}}`))
	if err != nil || m.Version != "1.0" || m.IsCall() {
		t.Errorf("message without version: %+v, %v (want version 1.0, a cast)", m, err)
	}
}

func TestDecodeMalformed(t *testing.T) {
	call := `"_msg_id":"m1","_reply_q":"reply_x"`
	tests := []struct {
		name, ctype, body string
		replyable         bool
	}{
		{"not JSON", contentType, `{"method":`, false},
		{"not an object", contentType, `[1,2]`, false},
		{"wrong content type, still answerable", "text/plain", `{"method":"x",` + call + `}`, true},
		{"no method", contentType, `{"args":{},` + call + `}`, true},
		{"args not an object", contentType, `{"method":"x","args":[1],` + call + `}`, true},
		{"version not a string", contentType, `{"method":"x","version":6,` + call + `}`, true},
		{"bad _timeout", contentType, `{"method":"x","_timeout":"soon",` + call + `}`, true},
		{"envelope from the future", contentType, `{"oslo.version":"3.0","oslo.message":"{}"}`, false},
		{"envelope message not a string", contentType, `{"oslo.version":"2.0","oslo.message":{}}`, false},
		{"huge cast", contentType, `{"method":"x","pad":"` + strings.Repeat("a", MaxMessageSize) + `"}`, false},
		{"huge call", contentType, `{"method":"x",` + call + `,"pad":"` + strings.Repeat("a", MaxMessageSize) + `"}`, true},
	}
	for _, tc := range tests {
		m, err := decodeMessage(tc.ctype, []byte(tc.body))
		if !errors.Is(err, errMalformed) {
			t.Errorf("%s: err = %v, want errMalformed", tc.name, err)
		}
		if m.IsCall() != tc.replyable {
			t.Errorf("%s: reply address found = %v, want %v", tc.name, m.IsCall(), tc.replyable)
		}
		if f := defaultFailure(err); f.Class != "ValueError" || f.Module != "builtins" {
			t.Errorf("%s: failure = %+v, want builtins.ValueError", tc.name, f)
		}
	}
}

func TestReplyRoundTrip(t *testing.T) {
	body, err := encodeReply("m1", json.RawMessage(`{"a":1}`), nil, true)
	if err != nil {
		t.Fatal(err)
	}
	// Every key a Python caller reads must be present.
	raw, err := unwrap(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"result", "failure", "ending", "_msg_id", "_unique_id"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("reply lacks %q", k)
		}
	}
	r, f, err := decodeReply(body)
	if err != nil || f != nil || r.MsgID != "m1" || !r.Ending || string(r.Result) != `{"a":1}` {
		t.Errorf("decodeReply = %+v %v %v", r, f, err)
	}
	body, _ = encodeReply("m2", nil, &Failure{Class: "MigrationPreCheckError", Module: "nova.exception", Message: "2/2 inbound",
		Kwargs: map[string]any{"reason": "2/2 inbound"}}, true)
	_, f, err = decodeReply(body)
	if err != nil || f == nil || f.Class != "MigrationPreCheckError" || f.Kwargs["reason"] != "2/2 inbound" || f.Args[0] != "2/2 inbound" {
		t.Errorf("failure round trip = %+v, %v", f, err)
	}
	_, f, err = decodeReply(readTestdata(t, "reply_failure.json"))
	if err != nil || f.Class != "MigrationPreCheckError" || f.Module != "nova.exception" || f.Kwargs["code"] != float64(500) {
		t.Errorf("captured failure = %+v, %v", f, err)
	}
	r, _, err = decodeReply(readTestdata(t, "reply_libvirt_live_migrate_data.json"))
	if err != nil || !strings.Contains(string(r.Result), "LibvirtLiveMigrateData") {
		t.Errorf("captured reply = %+v, %v", r, err)
	}
}

// FuzzDecodeMessage: no input may panic the decoder, and whatever decodes
// (or yields a reply address) must give an encodable reply.
func FuzzDecodeMessage(f *testing.F) {
	for _, n := range []string{"call_check_can_live_migrate_destination.json", "call_object_action_bare.json",
		"cast_live_migration.json", "reply_failure.json", "reply_libvirt_live_migrate_data.json"} {
		f.Add(contentType, readTestdata(f, n))
	}
	f.Add("text/plain", []byte(`{"method":"x"}`))
	f.Add(contentType, []byte(`{"oslo.version":"2.0","oslo.message":"{\"method\":\"ping\",\"_msg_id\":\"a\",\"_reply_q\":\"b\",\"_timeout\":1e300}"}`))
	f.Fuzz(func(t *testing.T, ctype string, body []byte) {
		m, err := decodeMessage(ctype, body)
		if err != nil && !errors.Is(err, errMalformed) {
			t.Fatalf("error outside the malformed class: %v", err)
		}
		if err == nil && m.Method == "" {
			t.Fatal("decoded a message without a method")
		}
		if m.IsCall() {
			var fl *Failure
			if err != nil {
				fl = defaultFailure(err)
			}
			if _, err := encodeReply(m.MsgID, nil, fl, true); err != nil {
				t.Fatalf("reply to %q not encodable: %v", m.MsgID, err)
			}
		}
	})
}
