package nova

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Context is a Nova RequestContext as it travels in _context_* keys. A
// request's context is sent back unchanged on the calls made for it, as
// nova-compute does.
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

// Str returns a string entry.
func (c Context) Str(k string) string {
	var s string
	_ = json.Unmarshal(c[k], &s)
	return s
}

// Elevated is context.elevated(): is_admin and the admin role.
func (c Context) Elevated() Context {
	out := Context{}
	for k, v := range c {
		out[k] = v
	}
	out["is_admin"] = json.RawMessage("true")
	var roles []string
	_ = json.Unmarshal(c["roles"], &roles)
	has := false
	for _, r := range roles {
		has = has || r == "admin"
	}
	if !has {
		roles = append(roles, "admin")
	}
	b, _ := json.Marshal(roles)
	out["roles"] = b
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

// RequestID is the context's request id, for logs.
func (c Context) RequestID() string { return strings.TrimSpace(c.Str("request_id")) }
