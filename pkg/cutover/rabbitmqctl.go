package cutover

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
)

// Rabbitmqctl sets policies with rabbitmqctl on a broker node: a policy
// cannot be set over AMQP, and the management API may not be enabled.
type Rabbitmqctl struct {
	Argv []string // e.g. [rabbitmqctl] or [ssh, rabbit1, rabbitmqctl]
	Run  Runner
}

func (r Rabbitmqctl) ctl(ctx context.Context, args ...string) ([]byte, error) {
	return r.Run.Run(ctx, append(slices.Clone(r.Argv), args...))
}

// SetPolicy sets p (set_policy replaces a policy of the same name).
func (r Rabbitmqctl) SetPolicy(ctx context.Context, p Policy) error {
	_, err := r.ctl(ctx, "-q", "set_policy", "-p", p.VHost, "--apply-to", p.ApplyTo, "--priority", strconv.Itoa(p.Priority),
		p.Name, p.Pattern, p.DefinitionJSON())
	if err != nil {
		return fmt.Errorf("set policy %s: %w", p.Name, err)
	}
	return nil
}

// ClearPolicy clears the policy name when vhost has it.
func (r Rabbitmqctl) ClearPolicy(ctx context.Context, vhost, name string) error {
	out, err := r.ctl(ctx, "-q", "list_policies", "-p", vhost, "--formatter", "json")
	if err != nil {
		return fmt.Errorf("list policies: %w", err)
	}
	var ps []listedPolicy
	if err := json.Unmarshal(out, &ps); err != nil {
		return fmt.Errorf("list policies: %q: %w", out, err)
	}
	if !slices.ContainsFunc(ps, func(p listedPolicy) bool { return p.Name == name }) {
		return nil
	}
	if _, err := r.ctl(ctx, "-q", "clear_policy", "-p", vhost, name); err != nil {
		return fmt.Errorf("clear policy %s: %w", name, err)
	}
	return nil
}

// listedPolicy is one entry of list_policies --formatter json.
type listedPolicy struct {
	Name string `json:"name"`
}
