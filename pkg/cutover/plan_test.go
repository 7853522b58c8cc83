package cutover

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var facts = Facts{Host: "cmp-1.example.org", Exchange: "nova", NovaComputeExchange: "ferry-cmp-1.example.org",
	FerrydQueue: "ferry.compute.cmp-1.example.org", VHost: "/", PolicyPriority: 100, NovaComputeConfig: "/etc/nova/nova.conf",
	Stop: []string{"systemctl", "stop", "nova-compute"}, Start: []string{"systemctl", "start", "nova-compute"}}

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		d    Direction
		want []string
	}{
		{ToCompanion, []string{
			"stop nova-compute: run systemctl stop nova-compute",
			"nova-compute stopped: check that queue compute.cmp-1.example.org has no consumer",
			"declare ferryd's queue: declare queue ferry.compute.cmp-1.example.org (oslo's flags) bound to nova with compute.cmp-1.example.org",
			"unbind nova-compute's queue: unbind queue compute.cmp-1.example.org from nova/compute.cmp-1.example.org",
			"move nova-compute's backlog: move the messages waiting in compute.cmp-1.example.org to ferry.compute.cmp-1.example.org",
			`set the alternate-exchange policy: rabbitmqctl set_policy -p / --apply-to exchanges --priority 100 ferry-cmp-1.example.org ` +
				`'^ferry-cmp-1\.example\.org$' '{"alternate-exchange":"nova"}'`,
			"set nova-compute's control_exchange: set [DEFAULT] control_exchange = ferry-cmp-1.example.org in /etc/nova/nova.conf",
			"start nova-compute: run systemctl start nova-compute",
		}},
		{ToStock, []string{
			"ferryd stopped: check that queue ferry.compute.cmp-1.example.org has no consumer",
			"stop nova-compute: run systemctl stop nova-compute",
			"nova-compute stopped: check that queue compute.cmp-1.example.org has no consumer",
			"bind nova-compute's queue: declare queue compute.cmp-1.example.org (oslo's flags) bound to nova with compute.cmp-1.example.org",
			"unbind ferryd's queue: unbind queue ferry.compute.cmp-1.example.org from nova/compute.cmp-1.example.org",
			"move ferryd's backlog: move the messages waiting in ferry.compute.cmp-1.example.org to compute.cmp-1.example.org",
			"delete ferryd's queue: delete queue ferry.compute.cmp-1.example.org if it is empty and unused",
			"clear the alternate-exchange policy: rabbitmqctl clear_policy -p / ferry-cmp-1.example.org (if it exists)",
			"remove nova-compute's control_exchange: remove [DEFAULT] control_exchange from /etc/nova/nova.conf",
			"start nova-compute: run systemctl start nova-compute",
		}},
	} {
		var got []string
		for _, s := range Plan(tc.d, facts) {
			got = append(got, s.String())
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("Plan(%s) (-want +got):\n%s", tc.d, diff)
		}
	}
	if Plan("sideways", facts) != nil {
		t.Error("a plan for an unknown direction")
	}
}

// Every move refuses while its source has a consumer, and says who that
// is and what to do.
func TestPlanRefusals(t *testing.T) {
	for _, d := range []Direction{ToCompanion, ToStock} {
		for _, s := range Plan(d, facts) {
			if (s.Kind == Move || s.Kind == NoConsumer) && !strings.Contains(s.Refusal, "stop") {
				t.Errorf("%s %q: refusal %q does not say what to stop", d, s.Name, s.Refusal)
			}
		}
	}
}

func TestParseDirection(t *testing.T) {
	for _, s := range []string{"to-companion", "to-stock"} {
		if d, err := ParseDirection(s); err != nil || string(d) != s {
			t.Errorf("ParseDirection(%q) = %q, %v", s, d, err)
		}
	}
	if _, err := ParseDirection("companion"); err == nil {
		t.Error("ParseDirection(companion) succeeded")
	}
}
