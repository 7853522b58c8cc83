package oslo

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestPeekAddress(t *testing.T) {
	pad := strings.Repeat(`x\"{}[],:`, 1000)
	tests := []struct {
		name, body              string
		msgID, replyQ, uniqueID string
	}{
		{"bare, address after a big argument", `{"method":"m","args":{"pad":"` + pad + `","n":[1,2,{"a":null}]},"_msg_id":"m1","_reply_q":"reply_1","_unique_id":"u1"}`,
			"m1", "reply_1", "u1"},
		{"envelope", string(mustEnvelope(t, map[string]any{"args": map[string]any{"pad": pad}, "_msg_id": "m2", "_reply_q": "reply_2",
			"_unique_id": "u2", "version": "6.0", "n": 1.5e3, "t": true})), "m2", "reply_2", "u2"},
		{"envelope of another version", `{"oslo.version":"3.0","oslo.message":"{\"_reply_q\":\"r3\",\"_msg_id\":\"m3\"}"}`, "m3", "r3", ""},
		{"escapes in keys and values", `{"_msg\u005fid":"m\u0034","_reply_q":"r\/4"}`, "m4", "r/4", ""},
		{"top-level keys do not count in an envelope", `{"_msg_id":"top","oslo.message":"{\"_msg_id\":\"in\"}","oslo.version":"2.0"}`,
			"in", "", ""},
		{"the last oslo.message counts", `{"oslo.version":"2.0","oslo.message":"{\"_msg_id\":\"a\"}","oslo.message":"{}"}`, "", "", ""},
		{"truncated", `{"_msg_id":"m5","_reply_q":"r5","args":{"pad":"` + pad, "m5", "r5", ""},
		{"not an object", `["_msg_id","m6"]`, "", "", ""},
		{"a value that is not a string", `{"_msg_id":7,"_reply_q":"r7"}`, "", "r7", ""},
		{"an id over 255 bytes", `{"_msg_id":"` + strings.Repeat("a", 300) + `","_reply_q":"r8"}`, "", "r8", ""},
		{"white space", " \n{ \"_msg_id\" :\t\"m9\" , \"x\" : -1.5e+3 , \"_reply_q\":\"r9\" }", "m9", "r9", ""},
	}
	for _, tc := range tests {
		m := peekAddress([]byte(tc.body))
		if m.MsgID != tc.msgID || m.ReplyQ != tc.replyQ || m.UniqueID != tc.uniqueID {
			t.Errorf("%s: peekAddress = %q %q %q, want %q %q %q", tc.name, m.MsgID, m.ReplyQ, m.UniqueID, tc.msgID, tc.replyQ, tc.uniqueID)
		}
	}
}

func mustEnvelope(t testing.TB, m map[string]any) []byte {
	t.Helper()
	b, err := envelope(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ascii(s string) bool {
	for i := range len(s) {
		if s[i] >= 0x80 {
			return false
		}
	}
	return len(s) <= 255
}

// FuzzPeekAddress: wherever encoding/json reads the body (and its
// envelope), the one-pass scanner finds the same reply address (for the
// plain ASCII ids oslo sends), and no input panics it.
func FuzzPeekAddress(f *testing.F) {
	for _, n := range []string{"call_check_can_live_migrate_destination.json", "call_object_action_bare.json",
		"cast_live_migration.json", "reply_failure.json"} {
		f.Add(readTestdata(f, n))
	}
	f.Add([]byte(`{"oslo.version":"3.0","oslo.message":"{\"_reply_q\":\"r\\u0033\",\"_msg_id\":\"m3\"}"}`))
	f.Add([]byte(`{"_msg_id":"a","_msg_id":"b","_reply_q":"\ud83d\ude00"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got := peekAddress(body)
		raw, _ := unwrap(body)
		if raw == nil {
			return
		}
		var want Message
		want.MsgID, _ = jsonString(raw["_msg_id"])
		want.ReplyQ, _ = jsonString(raw["_reply_q"])
		want.UniqueID, _ = jsonString(raw["_unique_id"])
		if !ascii(want.MsgID) || !ascii(want.ReplyQ) || !ascii(want.UniqueID) {
			return
		}
		if got.MsgID != want.MsgID || got.ReplyQ != want.ReplyQ || got.UniqueID != want.UniqueID {
			var pretty any
			_ = json.Unmarshal(body, &pretty)
			t.Fatalf("peekAddress = %q %q %q, encoding/json reads %q %q %q in %s", got.MsgID, got.ReplyQ, got.UniqueID,
				want.MsgID, want.ReplyQ, want.UniqueID, body)
		}
	})
}
