package oslo

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// The oslo.messaging 2.0 envelope: {"oslo.version": "2.0", "oslo.message": "<inner JSON as a string>"}.
const (
	envelopeVersion = "2.0"
	contentType     = "application/json"
	contentEncoding = "utf-8"
	contextPrefix   = "_context_"
	// MaxMessageSize bounds what the server serves; bigger messages get a
	// failure reply (calls, when the reply address can be read from a body
	// of up to four times this size) or a logged rejection (casts).
	MaxMessageSize = 32 << 20
)

// Message is a decoded request: a call (MsgID and ReplyQ set) or a cast.
type Message struct {
	Method    string
	Namespace string // "" when the message has none (null)
	Version   string // "1.0" when the message has none, as oslo assumes
	Args      map[string]json.RawMessage
	Context   map[string]json.RawMessage // the _context_* keys, prefix removed
	MsgID     string                     // calls only
	ReplyQ    string                     // calls only
	Timeout   time.Duration              // call-monitor timeout (_timeout); 0 = none
	UniqueID  string                     // duplicate detection
}

// IsCall reports whether the sender waits for a reply.
func (m *Message) IsCall() bool { return m.MsgID != "" && m.ReplyQ != "" }

// errMalformed marks messages that cannot be served; they get a ValueError
// failure reply when a reply address could be read, else a logged rejection.
var errMalformed = errors.New("malformed RPC message")

// decodeMessage decodes a delivery body. On error it still returns whatever
// reply address it could read, so that the caller gets a failure reply.
func decodeMessage(ctype string, body []byte) (Message, error) {
	var m Message
	if len(body) > 4*MaxMessageSize { // too big even to look for a reply address
		return m, fmt.Errorf("%w: %d bytes, more than %d", errMalformed, len(body), MaxMessageSize)
	}
	raw, err := unwrap(body)
	if err != nil {
		return m, err
	}
	for k, v := range raw {
		switch {
		case strings.HasPrefix(k, contextPrefix):
			if m.Context == nil {
				m.Context = map[string]json.RawMessage{}
			}
			m.Context[strings.TrimPrefix(k, contextPrefix)] = v
		case k == "_msg_id":
			m.MsgID, _ = jsonString(v)
		case k == "_reply_q":
			m.ReplyQ, _ = jsonString(v)
		case k == "_unique_id":
			m.UniqueID, _ = jsonString(v)
		}
	}
	// From here on, errors keep the reply address.
	if len(body) > MaxMessageSize {
		return m, fmt.Errorf("%w: %d bytes, more than %d", errMalformed, len(body), MaxMessageSize)
	}
	if ctype != contentType {
		return m, fmt.Errorf("%w: content type %q, want %q", errMalformed, ctype, contentType)
	}
	if t, ok := raw["_timeout"]; ok && !isNull(t) {
		var secs float64
		if err := json.Unmarshal(t, &secs); err != nil || secs < 0 {
			return m, fmt.Errorf("%w: _timeout %s", errMalformed, t)
		}
		m.Timeout = time.Duration(min(secs, 86400) * float64(time.Second)) // a day caps absurd values
	}
	var ok bool
	if m.Method, ok = jsonString(raw["method"]); !ok || m.Method == "" {
		return m, fmt.Errorf("%w: no method", errMalformed)
	}
	m.Version = "1.0"
	if v, present := raw["version"]; present && !isNull(v) {
		if m.Version, ok = jsonString(v); !ok {
			return m, fmt.Errorf("%w: version %s is not a string", errMalformed, v)
		}
	}
	if v, present := raw["namespace"]; present && !isNull(v) {
		if m.Namespace, ok = jsonString(v); !ok {
			return m, fmt.Errorf("%w: namespace %s is not a string", errMalformed, v)
		}
	}
	if a, present := raw["args"]; present && !isNull(a) {
		if err := json.Unmarshal(a, &m.Args); err != nil {
			return m, fmt.Errorf("%w: args is not an object", errMalformed)
		}
	}
	if m.Args == nil {
		m.Args = map[string]json.RawMessage{}
	}
	return m, nil
}

// unwrap returns the inner message of an envelope, or the bare message.
func unwrap(body []byte) (map[string]json.RawMessage, error) {
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(body, &outer); err != nil {
		return nil, fmt.Errorf("%w: body is not a JSON object", errMalformed)
	}
	ver, ok := outer["oslo.version"]
	if !ok {
		return outer, nil
	}
	vs, _ := jsonString(ver)
	if !compatibleEnvelope(vs) {
		return nil, fmt.Errorf("%w: envelope version %s", errMalformed, ver)
	}
	inner, ok := jsonString(outer["oslo.message"])
	if !ok {
		return nil, fmt.Errorf("%w: oslo.message is not a string", errMalformed)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(inner), &m); err != nil {
		return nil, fmt.Errorf("%w: oslo.message is not a JSON object", errMalformed)
	}
	return m, nil
}

// compatibleEnvelope: same major as 2.0 and a minor no higher.
func compatibleEnvelope(v string) bool {
	major, minor, ok := strings.Cut(v, ".")
	if !ok || major != "2" {
		return false
	}
	n, err := strconv.Atoi(minor)
	return err == nil && n == 0
}

func jsonString(v json.RawMessage) (string, bool) {
	if v == nil {
		return "", false
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", false
	}
	return s, true
}

func isNull(v json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(v), []byte("null")) }

// envelope wraps an inner message the way oslo serialize_msg does.
func envelope(inner any) ([]byte, error) {
	b, err := json.Marshal(inner)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]string{"oslo.version": envelopeVersion, "oslo.message": string(b)})
}

// replyMsg is the inner reply. Every key is always present: a Python caller
// raises KeyError without "failure" and waits forever without "ending".
type replyMsg struct {
	Result   json.RawMessage `json:"result"`
	Failure  *string         `json:"failure"`
	Ending   bool            `json:"ending"`
	MsgID    string          `json:"_msg_id"`
	UniqueID string          `json:"_unique_id"`
}

func encodeReply(msgID string, result json.RawMessage, failure *Failure, ending bool) ([]byte, error) {
	r := replyMsg{Result: result, Ending: ending, MsgID: msgID, UniqueID: newID()}
	if r.Result == nil {
		r.Result = json.RawMessage("null")
	}
	if failure != nil {
		s, err := failure.marshal()
		if err != nil {
			return nil, err
		}
		r.Failure = &s
	}
	return envelope(r)
}

func init() { uuid.EnableRandPool() } // one getrandom per 16 ids, not per id

// newID is a uuid4 in hex, as oslo's _msg_id, _unique_id and queue names.
func newID() string {
	u := uuid.New()
	var b [32]byte
	hex.Encode(b[:], u[:])
	return string(b[:])
}

// decodeReply reads a reply delivered to our reply queue.
func decodeReply(body []byte) (replyMsg, *Failure, error) {
	raw, err := unwrap(body)
	if err != nil {
		return replyMsg{}, nil, err
	}
	var r replyMsg
	r.MsgID, _ = jsonString(raw["_msg_id"])
	r.Result = raw["result"]
	if e, ok := raw["ending"]; ok {
		_ = json.Unmarshal(e, &r.Ending)
	}
	var f *Failure
	if fv, ok := raw["failure"]; ok && !isNull(fv) {
		s, ok := jsonString(fv)
		if !ok {
			return r, nil, fmt.Errorf("%w: failure is not a string", errMalformed)
		}
		if f, err = parseFailure(s); err != nil {
			return r, nil, err
		}
	}
	return r, f, nil
}
