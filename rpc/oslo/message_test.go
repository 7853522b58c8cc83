package oslo

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// testLimit bounds the bodies decodeMessage parses in these tests (the
// default, 32 MiB, is slow to build under -race).
const testLimit = 1 << 20

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeCapturedCall(t *testing.T) {
	m, err := decodeMessage(contentType, readTestdata(t, "call_check_can_live_migrate_destination.json"), testLimit)
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
	m, err := decodeMessage(contentType, readTestdata(t, "call_object_action_bare.json"), testLimit)
	if err != nil || m.Method != "object_action" || m.Version != "3.0" || m.Timeout != 0 || !m.IsCall() {
		t.Errorf("bare message: %+v, %v", m, err)
	}
	m, err = decodeMessage(contentType, []byte(`{"method":"ping","args":{"arg":1}}`), testLimit)
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
		{"envelope from the future, answerable", contentType, `{"oslo.version":"2.1","oslo.message":"{\"method\":\"x\",\"_msg_id\":\"m\",\"_reply_q\":\"r\"}"}`, true},
		{"not JSON", contentType, `{"method":`, false},
		{"not an object", contentType, `[1,2]`, false},
		{"wrong content type, still answerable", "text/plain", `{"method":"x",` + call + `}`, true},
		{"no method", contentType, `{"args":{},` + call + `}`, true},
		{"args not an object", contentType, `{"method":"x","args":[1],` + call + `}`, true},
		{"version not a string", contentType, `{"method":"x","version":6,` + call + `}`, true},
		{"bad _timeout", contentType, `{"method":"x","_timeout":"soon",` + call + `}`, true},
		{"envelope from the future", contentType, `{"oslo.version":"3.0","oslo.message":"{}"}`, false},
		{"envelope message not a string", contentType, `{"oslo.version":"2.0","oslo.message":{}}`, false},
		{"huge cast", contentType, `{"method":"x","pad":"` + strings.Repeat("a", testLimit) + `"}`, false},
		{"huge call", contentType, `{"method":"x",` + call + `,"pad":"` + strings.Repeat("a", testLimit) + `"}`, true},
	}
	for _, tc := range tests {
		m, err := decodeMessage(tc.ctype, []byte(tc.body), testLimit)
		if !errors.Is(err, errMalformed) {
			t.Errorf("%s: err = %v, want errMalformed", tc.name, err)
		}
		if m.IsCall() != tc.replyable {
			t.Errorf("%s: reply address found = %v, want %v", tc.name, m.IsCall(), tc.replyable)
		}
		want := "builtins.ValueError"
		if strings.HasPrefix(tc.name, "envelope from the future") {
			want = "oslo_messaging._drivers.common.UnsupportedRpcEnvelopeVersion"
		}
		if f := defaultFailure(err); f.Module+"."+f.Class != want {
			t.Errorf("%s: failure = %+v, want %s", tc.name, f, want)
		}
	}
}

// A call in an envelope of another version still gets a failure reply
// when its reply address can be read (oslo's own servers drop it
// silently), with oslo's UnsupportedRpcEnvelopeVersion.
func TestDecodeUnknownEnvelopeKeepsReplyAddress(t *testing.T) {
	body := `{"oslo.version":"3.0","oslo.message":"{\"method\":\"x\",\"_msg_id\":\"m1\",\"_reply_q\":\"reply_x\",\"_unique_id\":\"u1\"}"}`
	m, err := decodeMessage(contentType, []byte(body), testLimit)
	if !errors.Is(err, errMalformed) {
		t.Fatalf("err = %v, want errMalformed", err)
	}
	if m.MsgID != "m1" || m.ReplyQ != "reply_x" || m.UniqueID != "u1" {
		t.Errorf("reply address = %q %q %q, want m1 reply_x u1", m.MsgID, m.ReplyQ, m.UniqueID)
	}
	f := defaultFailure(err)
	want := &Failure{Class: "UnsupportedRpcEnvelopeVersion", Module: "oslo_messaging._drivers.common",
		Message: "Specified RPC envelope version, 3.0, not supported by this endpoint."}
	if diff := cmp.Diff(want, f); diff != "" {
		t.Errorf("failure (-want +got):\n%s", diff)
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
		m, err := decodeMessage(ctype, body, testLimit)
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

// A body over the limit is bounded before it is parsed: finding its reply
// address allocates next to nothing, where parsing it would copy it
// several times.
func TestDecodeOversizedDoesNotParse(t *testing.T) {
	pad := strings.Repeat(`x\"`, 1<<20) // escaped twice over: several MiB
	body, err := envelope(map[string]any{"method": "x", "args": map[string]string{"pad": pad}, "_msg_id": "m1", "_reply_q": "reply_x"})
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m, err := decodeMessage(contentType, body, len(body)/2)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, errMalformed) || m.MsgID != "m1" || m.ReplyQ != "reply_x" {
		t.Fatalf("decodeMessage = %+v, %v; want the reply address and errMalformed", m, err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<10 {
		t.Errorf("decoding a %d-byte body over the limit allocated %d bytes, want it not parsed", len(body), alloc)
	}
}

// FuzzObject: object reads what encoding/json reads into a
// map[string]json.RawMessage, key for key and byte for byte (after
// compaction), and refuses what it refuses.
func FuzzObject(f *testing.F) {
	for _, n := range []string{"call_check_can_live_migrate_destination.json", "call_object_action_bare.json",
		"cast_live_migration.json", "reply_failure.json", "reply_libvirt_live_migrate_data.json"} {
		f.Add(readTestdata(f, n))
	}
	f.Add([]byte(` { "a\u0062" : [1, {"x": "}"}], "a": -1.5e3 , "b":"q\"\\" , "a": null } `))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[{}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := object(b)
		var want map[string]json.RawMessage
		werr := json.Unmarshal(b, &want)
		if ok != (werr == nil && want != nil) {
			t.Fatalf("object(%q) ok=%v, encoding/json: %v", b, ok, werr)
		}
		if !ok {
			return
		}
		if len(got) != len(want) {
			t.Fatalf("object(%q) has %d members, encoding/json %d", b, len(got), len(want))
		}
		for k, w := range want {
			var gc, wc bytes.Buffer
			if err := json.Compact(&gc, got[k]); err != nil {
				t.Fatalf("object(%q)[%q] = %q is not JSON: %v", b, k, got[k], err)
			}
			_ = json.Compact(&wc, w)
			if gc.String() != wc.String() {
				t.Fatalf("object(%q)[%q] = %q, encoding/json %q", b, k, got[k], w)
			}
		}
	})
}

// FuzzEncodeReply: whatever the id and the failure text, the reply is JSON
// that reads back as what was sent.
func FuzzEncodeReply(f *testing.F) {
	f.Add("m1", `{"a": [1, "x"]}`, "", true)
	f.Add("q\"\\\n\x01é", "null", "boom \"\u2028 \x7f", false)
	f.Fuzz(func(t *testing.T, msgID, result, failure string, ending bool) {
		if !json.Valid([]byte(result)) || !utf8.ValidString(result) { // results come from json.Marshal: valid UTF-8
			return
		}
		var fl *Failure
		if failure != "" {
			fl = &Failure{Class: "X", Module: "m", Message: failure}
		}
		body, err := encodeReply(msgID, json.RawMessage(result), fl, ending)
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(body) {
			t.Fatalf("reply %q is not JSON", body)
		}
		r, gotF, err := decodeReply(body)
		if err != nil || r.Ending != ending || (fl == nil) != (gotF == nil) {
			t.Fatalf("decodeReply(%q) = %+v %v %v", body, r, gotF, err)
		}
		if want := jsonRoundTrip(msgID); r.MsgID != want {
			t.Fatalf("msg id %q came back as %q, want %q", msgID, r.MsgID, want)
		}
		if want := jsonRoundTrip(failure); gotF != nil && gotF.Message != want {
			t.Fatalf("failure %q came back as %q, want %q", failure, gotF.Message, want)
		}
		var gc, wc bytes.Buffer
		_ = json.Compact(&gc, r.Result)
		_ = json.Compact(&wc, []byte(result))
		if gc.String() != wc.String() {
			t.Fatalf("result %q came back as %q", result, r.Result)
		}
	})
}

// jsonRoundTrip is s as encoding/json writes and reads it back (invalid
// UTF-8 becomes U+FFFD, byte by byte).
func jsonRoundTrip(s string) string {
	b, _ := json.Marshal(s)
	var out string
	_ = json.Unmarshal(b, &out)
	return out
}
