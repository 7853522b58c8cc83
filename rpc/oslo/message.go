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
	// MaxMessageSize is the default bound of ServerOptions.MaxMessageSize.
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
// reply address it could read, so that the caller gets a failure reply. A
// body over limit bytes is not parsed: one pass over its bytes looks for
// the reply address, copying nothing.
func decodeMessage(ctype string, body []byte, limit int) (Message, error) {
	if len(body) > limit {
		return peekAddress(body), fmt.Errorf("%w: %d bytes, more than %d", errMalformed, len(body), limit)
	}
	var m Message
	raw, err := unwrap(body)
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
	if err != nil {
		return m, err
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
		if m.Args, ok = object(a); !ok {
			return m, fmt.Errorf("%w: args is not an object", errMalformed)
		}
	}
	if m.Args == nil {
		m.Args = map[string]json.RawMessage{}
	}
	return m, nil
}

// unwrap returns the inner message of an envelope, or the bare message. An
// envelope of another version is an error, with the inner message as far
// as it reads (oslo's own servers drop such a message without a word; a
// caller whose reply address can be read is better told why). The map's
// values are pieces of the body (or of the unescaped inner message), not
// copies.
func unwrap(body []byte) (map[string]json.RawMessage, error) {
	outer, ok := object(body)
	if !ok {
		return nil, fmt.Errorf("%w: body is not a JSON object", errMalformed)
	}
	ver, enveloped := outer["oslo.version"]
	if !enveloped {
		return outer, nil
	}
	var m map[string]json.RawMessage
	inner, isString := jsonString(outer["oslo.message"])
	if isString {
		m, _ = object([]byte(inner))
	}
	if vs, isStr := jsonString(ver); !compatibleEnvelope(vs) {
		if !isStr {
			vs = string(ver)
		}
		return m, fmt.Errorf("%w: %w", errMalformed, unsupportedEnvelope(vs))
	}
	switch {
	case !isString:
		return nil, fmt.Errorf("%w: oslo.message is not a string", errMalformed)
	case m == nil:
		return nil, fmt.Errorf("%w: oslo.message is not a JSON object", errMalformed)
	}
	return m, nil
}

// object decodes a JSON object into its members, as encoding/json does
// into a map[string]json.RawMessage (the last of repeated keys wins), but
// without copying the values: they are pieces of b. It reports false for
// what is not valid JSON or not an object.
func object(b []byte) (map[string]json.RawMessage, bool) {
	if !json.Valid(b) {
		return nil, false
	}
	i := skipSpace(b, 0)
	if b[i] != '{' {
		return nil, false
	}
	m := map[string]json.RawMessage{}
	i = skipSpace(b, i+1)
	for b[i] != '}' { // valid JSON: every index below is in range
		end := valueEnd(b, i)
		key, _ := jsonString(b[i:end])
		i = skipSpace(b, skipSpace(b, end)+1) // past the ':'
		end = valueEnd(b, i)
		m[key] = b[i:end:end]
		if i = skipSpace(b, end); b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return m, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// valueEnd is the index just past the (valid) JSON value at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		for j := i + 1; j < len(b); j++ {
			switch b[j] {
			case '\\':
				j++
			case '"':
				return j + 1
			}
		}
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = valueEnd(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
	default: // a number, true, false or null
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
			j++
		}
		return j
	}
	return len(b)
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

// jsonString decodes a JSON string. Most are plain (ids, names): those are
// sliced out without a trip through encoding/json.
func jsonString(v json.RawMessage) (string, bool) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		plain := true
		for _, c := range v[1 : len(v)-1] {
			if c == '\\' || c == '"' || c < 0x20 || c >= 0x80 {
				plain = false
				break
			}
		}
		if plain {
			return string(v[1 : len(v)-1]), true
		}
	}
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
	return wrap(b), nil
}

// wrap puts an inner message (JSON) into the 2.0 envelope.
func wrap(inner []byte) []byte {
	out := make([]byte, 0, len(inner)+len(inner)/8+48)
	out = append(out, `{"oslo.version": "`+envelopeVersion+`", "oslo.message": `...)
	return append(appendString(out, inner), '}')
}

// appendString appends s as a JSON string: quotes, backslashes and control
// characters escaped, the rest (UTF-8 included) as is.
func appendString(out, s []byte) []byte {
	const hex = "0123456789abcdef"
	out = append(out, '"')
	start := 0
	for i, c := range s {
		var esc string
		switch {
		case c == '"':
			esc = `\"`
		case c == '\\':
			esc = `\\`
		case c == '\n':
			esc = `\n`
		case c == '\r':
			esc = `\r`
		case c == '\t':
			esc = `\t`
		case c < 0x20:
			esc = `\u00` + string(hex[c>>4]) + string(hex[c&0xf])
		default:
			continue
		}
		out = append(append(out, s[start:i]...), esc...)
		start = i + 1
	}
	return append(append(out, s[start:]...), '"')
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

// encodeReply builds a reply in its envelope; result must be valid JSON
// (nil for null).
func encodeReply(msgID string, result json.RawMessage, failure *Failure, ending bool) ([]byte, error) {
	if result == nil {
		result = json.RawMessage("null")
	}
	inner := make([]byte, 0, len(result)+160)
	inner = append(append(append(inner, `{"result": `...), result...), `, "failure": `...)
	if failure != nil {
		s, err := failure.marshal()
		if err != nil {
			return nil, err
		}
		inner = appendString(inner, []byte(s))
	} else {
		inner = append(inner, "null"...)
	}
	inner = append(inner, `, "ending": `...)
	inner = strconv.AppendBool(inner, ending)
	inner = appendString(append(inner, `, "_msg_id": `...), []byte(msgID))
	inner = appendString(append(inner, `, "_unique_id": `...), []byte(newID()))
	return wrap(append(inner, '}')), nil
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
