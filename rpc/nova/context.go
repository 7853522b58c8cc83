package nova

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/sirupsen/logrus"
)

// Context is a Nova RequestContext as it travels in _context_* keys. A
// request's context is sent back on the calls made for it, as nova-compute
// does, but without its secrets (Sanitized): ferry authenticates to other
// services with its own credentials, so a token has no use here and must
// never reach a journal, a log or the CLI.
type Context map[string]json.RawMessage

// TimestampFormat is the only timestamp form RequestContext.from_dict
// accepts (Python's %Y-%m-%dT%H:%M:%S.%f, no zone).
const TimestampFormat = "2006-01-02T15:04:05.000000"

// JSON encodes the context for oslo.CallOptions.
func (c Context) JSON() json.RawMessage {
	if len(c) == 0 {
		return nil
	}
	b, _ := json.Marshal(map[string]json.RawMessage(c))
	return b
}

// Str returns a string entry, "" when absent or not a string (for logs).
func (c Context) Str(k string) string {
	var s string
	_ = json.Unmarshal(c[k], &s)
	return s
}

// LogFields are the request's ids for a log line: request_id and
// global_request_id, when it has them; never anything else of it.
func (c Context) LogFields() logrus.Fields {
	f := logrus.Fields{}
	for _, k := range []string{"request_id", "global_request_id"} {
		if v := c.Str(k); v != "" {
			f[k] = v
		}
	}
	return f
}

// secret tells the context keys that carry credentials: auth_token, and
// any key naming a token, password or secret (oslo.context keeps the same
// list for its own logging).
func secret(k string) bool {
	k = strings.ToLower(k)
	for _, s := range []string{"token", "password", "secret", "credential"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// Sanitized is the context without credentials; a dropped entry is sent
// back as null, which RequestContext.from_dict accepts.
func (c Context) Sanitized() Context {
	out := make(Context, len(c))
	for k, v := range c {
		if secret(k) {
			v = json.RawMessage("null")
		}
		out[k] = v
	}
	return out
}

// AdminContext is get_admin_context(): for work no request started (a
// migration resumed after a restart).
func AdminContext() Context {
	raw := map[string]any{
		"user": nil, "project_id": nil, "project": nil, "user_id": nil, "is_admin": true, "read_only": false,
		"show_deleted": false, "auth_token": nil, "read_deleted": "no", "roles": []string{},
		"request_id": "req-" + uuid.NewString(), "global_request_id": nil, "remote_address": nil,
		"timestamp": time.Now().UTC().Format(TimestampFormat), "quota_class": nil, "service_catalog": []any{},
		"user_name": nil, "project_name": nil, "is_admin_project": true, "system_scope": nil, "domain": nil,
		"user_domain": nil, "project_domain": nil, "resource_uuid": nil,
	}
	c := Context{}
	for k, v := range raw {
		b, _ := json.Marshal(v)
		c[k] = b
	}
	return c
}
