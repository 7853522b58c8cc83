package nova

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"
)

// A request's log fields are its two ids, never its token or anything else.
func TestContextLogFields(t *testing.T) {
	c := Context{"request_id": json.RawMessage(`"req-1"`), "global_request_id": json.RawMessage(`"req-g"`),
		"auth_token": json.RawMessage(`"gAAAA-secret"`), "user_name": json.RawMessage(`"admin"`)}
	if diff := cmp.Diff(logrus.Fields{"request_id": "req-1", "global_request_id": "req-g"}, c.LogFields()); diff != "" {
		t.Errorf("LogFields (-want +got):\n%s", diff)
	}
	c["global_request_id"] = json.RawMessage(`null`)
	if diff := cmp.Diff(logrus.Fields{"request_id": "req-1"}, c.LogFields()); diff != "" {
		t.Errorf("LogFields without a global id (-want +got):\n%s", diff)
	}
}
