package cutover

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// Direction is where a cut-over takes the host.
type Direction string

const (
	ToCompanion Direction = "to-companion"
	ToStock     Direction = "to-stock"
)

// ParseDirection accepts the two directions' names.
func ParseDirection(s string) (Direction, error) {
	switch d := Direction(s); d {
	case ToCompanion, ToStock:
		return d, nil
	}
	return "", fmt.Errorf("direction %q, want %s or %s", s, ToCompanion, ToStock)
}

// Facts are what the plan needs to know about the host.
type Facts struct {
	Host                string   // Nova host name
	Exchange            string   // Nova's control_exchange, e.g. "nova"
	NovaComputeExchange string   // nova-compute's private one in companion mode, e.g. "ferry-<host>"
	FerrydQueue         string   // ferryd's queue, e.g. "ferry.compute.<host>"
	VHost               string   // the broker's virtual host
	PolicyPriority      int      // above the deployment's catch-all policies
	NovaComputeConfig   string   // the nova-compute configuration file to edit
	Stop, Start         []string // stop and start nova-compute
}

// NovaComputeQueue is nova-compute's host queue, compute.<host>.
func (f Facts) NovaComputeQueue() string { return "compute." + f.Host }

// Key is the routing key of the host's compute traffic.
func (f Facts) Key() string { return "compute." + f.Host }

// Kind is what a step does.
type Kind string

const (
	Run         Kind = "run"          // Argv
	NoConsumer  Kind = "no-consumer"  // Queue has no consumer, or is missing (Refusal says who consumes it)
	Declare     Kind = "declare"      // Queue on Exchange with Key, with oslo's flags
	Unbind      Kind = "unbind"       // Queue from Exchange/Key
	Move        Kind = "move"         // From's backlog to To (Refusal when From has a consumer)
	DeleteQueue Kind = "delete-queue" // Queue, if it is empty and unused
	SetPolicy   Kind = "set-policy"   // Policy
	ClearPolicy Kind = "clear-policy" // Policy.Name in Policy.VHost
	SetOption   Kind = "set-option"   // File [Section] Option = Value
	UnsetOption Kind = "unset-option" // File [Section] Option removed
)

// Policy is a RabbitMQ policy.
type Policy struct {
	VHost      string
	Name       string
	Pattern    string // a regular expression over exchange names
	ApplyTo    string // exchanges
	Priority   int
	Definition map[string]string
}

// DefinitionJSON is the definition as rabbitmqctl set_policy takes it.
func (p Policy) DefinitionJSON() string {
	b, _ := json.Marshal(p.Definition) // a map of strings always encodes
	return string(b)
}

// Step is one named, idempotent step of a plan.
type Step struct {
	Name string
	Kind Kind

	Argv []string

	Queue, Exchange, Key string
	From, To             string
	Refusal              string // why a consumer on the queue stops the cut-over, and what to do

	Policy Policy

	File, Section, Option, Value string
}

// String is the step as --dry-run prints it.
func (s Step) String() string {
	switch s.Kind {
	case Run:
		return fmt.Sprintf("%s: run %s", s.Name, strings.Join(s.Argv, " "))
	case NoConsumer:
		return fmt.Sprintf("%s: check that queue %s has no consumer", s.Name, s.Queue)
	case Declare:
		return fmt.Sprintf("%s: declare queue %s (oslo's flags) bound to %s with %s", s.Name, s.Queue, s.Exchange, s.Key)
	case Unbind:
		return fmt.Sprintf("%s: unbind queue %s from %s/%s", s.Name, s.Queue, s.Exchange, s.Key)
	case Move:
		return fmt.Sprintf("%s: move the messages waiting in %s to %s", s.Name, s.From, s.To)
	case DeleteQueue:
		return fmt.Sprintf("%s: delete queue %s if it is empty and unused", s.Name, s.Queue)
	case SetPolicy:
		p := s.Policy
		return fmt.Sprintf("%s: rabbitmqctl set_policy -p %s --apply-to %s --priority %d %s '%s' '%s'",
			s.Name, p.VHost, p.ApplyTo, p.Priority, p.Name, p.Pattern, p.DefinitionJSON())
	case ClearPolicy:
		return fmt.Sprintf("%s: rabbitmqctl clear_policy -p %s %s (if it exists)", s.Name, s.Policy.VHost, s.Policy.Name)
	case SetOption:
		return fmt.Sprintf("%s: set [%s] %s = %s in %s", s.Name, s.Section, s.Option, s.Value, s.File)
	case UnsetOption:
		return fmt.Sprintf("%s: remove [%s] %s from %s", s.Name, s.Section, s.Option, s.File)
	}
	return s.Name + ": " + string(s.Kind)
}

// policy is the alternate-exchange policy of the host: what nova-compute
// publishes to its private exchange that no binding there takes
// (conductor calls, notifications) goes on to Nova's exchange. The
// pattern matches that one exchange name only, its dots escaped.
func (f Facts) policy() Policy {
	return Policy{VHost: f.VHost, Name: f.NovaComputeExchange, Pattern: "^" + regexp.QuoteMeta(f.NovaComputeExchange) + "$",
		ApplyTo: "exchanges", Priority: f.PolicyPriority, Definition: map[string]string{"alternate-exchange": f.Exchange}}
}

// Plan returns the steps that take the host in direction d.
//
// to-companion: stop nova-compute; its queue must have lost its consumer;
// declare ferryd's queue as ferryd's server does, bound to Nova's exchange
// with compute.<host>; unbind compute.<host> from Nova's exchange (after
// the bind: nothing published meanwhile finds no queue); move
// compute.<host>'s backlog into ferryd's queue; set the alternate-exchange
// policy; set nova-compute's control_exchange to its private exchange;
// start nova-compute, which declares that exchange and binds
// compute.<host> to it itself.
//
// to-stock (ferryd stopped first): ferryd's queue must have no consumer;
// stop nova-compute; declare compute.<host> bound to Nova's exchange, as
// nova-compute's oslo does; unbind ferryd's queue; move its backlog to
// compute.<host>; delete it if empty; clear the policy; remove
// control_exchange from nova-compute's configuration; start nova-compute.
func Plan(d Direction, f Facts) []Step {
	nc := f.NovaComputeQueue()
	stillNova := fmt.Sprintf("nova-compute still consumes %s after %q: stop it (cutover.stop), then run the cut-over again", nc, strings.Join(f.Stop, " "))
	stillFerryd := fmt.Sprintf("ferryd still consumes %s: stop ferryd first, then run the cut-over again", f.FerrydQueue)
	stop := Step{Name: "stop nova-compute", Kind: Run, Argv: f.Stop}
	start := Step{Name: "start nova-compute", Kind: Run, Argv: f.Start}
	switch d {
	case ToCompanion:
		return []Step{
			stop,
			{Name: "nova-compute stopped", Kind: NoConsumer, Queue: nc, Refusal: stillNova},
			{Name: "declare ferryd's queue", Kind: Declare, Queue: f.FerrydQueue, Exchange: f.Exchange, Key: f.Key()},
			{Name: "unbind nova-compute's queue", Kind: Unbind, Queue: nc, Exchange: f.Exchange, Key: f.Key()},
			{Name: "move nova-compute's backlog", Kind: Move, From: nc, To: f.FerrydQueue, Refusal: stillNova},
			{Name: "set the alternate-exchange policy", Kind: SetPolicy, Policy: f.policy()},
			{Name: "set nova-compute's control_exchange", Kind: SetOption, File: f.NovaComputeConfig, Section: "DEFAULT",
				Option: "control_exchange", Value: f.NovaComputeExchange},
			start,
		}
	case ToStock:
		return []Step{
			{Name: "ferryd stopped", Kind: NoConsumer, Queue: f.FerrydQueue, Refusal: stillFerryd},
			stop,
			{Name: "nova-compute stopped", Kind: NoConsumer, Queue: nc, Refusal: stillNova},
			{Name: "bind nova-compute's queue", Kind: Declare, Queue: nc, Exchange: f.Exchange, Key: f.Key()},
			{Name: "unbind ferryd's queue", Kind: Unbind, Queue: f.FerrydQueue, Exchange: f.Exchange, Key: f.Key()},
			{Name: "move ferryd's backlog", Kind: Move, From: f.FerrydQueue, To: nc, Refusal: stillFerryd},
			{Name: "delete ferryd's queue", Kind: DeleteQueue, Queue: f.FerrydQueue},
			{Name: "clear the alternate-exchange policy", Kind: ClearPolicy, Policy: f.policy()},
			{Name: "remove nova-compute's control_exchange", Kind: UnsetOption, File: f.NovaComputeConfig, Section: "DEFAULT",
				Option: "control_exchange"},
			start,
		}
	}
	return nil
}
