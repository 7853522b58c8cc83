package cutover

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Broker is the broker's topology as the cut-over changes it; rpc/oslo's
// Admin behind an adapter. A queue or exchange that does not exist is an
// error wrapping errdefs.ErrNotFound.
type Broker interface {
	// Declare declares queue on exchange with key, with the flags an oslo
	// server uses, and binds them.
	Declare(ctx context.Context, queue, exchange, key string) error
	// Unbind removes a binding; one that does not exist is no error.
	Unbind(ctx context.Context, queue, exchange, key string) error
	Inspect(ctx context.Context, queue string) (QueueInfo, error)
	// Move republishes from's backlog to to, in order, each acked only
	// once delivered; duplicates (an id already waiting in to) are
	// dropped.
	Move(ctx context.Context, from, to string) (Moved, error)
	// DeleteQueueIfEmpty deletes an empty, unused queue; a missing one is
	// no error.
	DeleteQueueIfEmpty(ctx context.Context, queue string) error
}

// QueueInfo is a queue's state.
type QueueInfo struct{ Messages, Consumers int }

// Moved counts what a Move did.
type Moved struct{ Messages, Duplicates int }

// Policies sets and clears RabbitMQ policies.
type Policies interface {
	SetPolicy(ctx context.Context, p Policy) error
	// ClearPolicy clears a policy; one that does not exist is no error.
	ClearPolicy(ctx context.Context, vhost, name string) error
}

// Runner runs a command and returns its combined output.
type Runner interface {
	Run(ctx context.Context, argv []string) ([]byte, error)
}

// RunnerFunc adapts a function to Runner.
type RunnerFunc func(ctx context.Context, argv []string) ([]byte, error)

// Run calls f.
func (f RunnerFunc) Run(ctx context.Context, argv []string) ([]byte, error) { return f(ctx, argv) }

// Exec runs commands as child processes.
var Exec Runner = RunnerFunc(func(ctx context.Context, argv []string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("run: %w: no command", errdefs.ErrInvalidArgument)
	}
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
})

// Options is nova-compute's configuration file as the cut-over edits it.
type Options interface {
	Set(path, section, option, value string) error
	Unset(path, section, option string) error
}

// Executor runs a plan's steps in order and stops at the first that
// fails.
type Executor struct {
	Broker   Broker
	Policies Policies
	Run      Runner
	Options  Options
	Log      *logrus.Entry
}

// StepError is a step that failed: the cut-over stopped there.
type StepError struct {
	N, Of int
	Step  Step
	Err   error
}

func (e *StepError) Error() string {
	return fmt.Sprintf("step %d/%d %q failed: %v", e.N, e.Of, e.Step.Name, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

// Execute runs steps in order, logging what each did; the error is a
// *StepError naming the step that failed.
func (e *Executor) Execute(ctx context.Context, steps []Step) error {
	for i, s := range steps {
		log := e.Log.WithFields(logrus.Fields{"step": fmt.Sprintf("%d/%d", i+1, len(steps)), "name": s.Name})
		did, err := e.step(ctx, s)
		if err != nil {
			return &StepError{N: i + 1, Of: len(steps), Step: s, Err: err}
		}
		log.Info(did)
	}
	return nil
}

// step runs one step and says what it did.
func (e *Executor) step(ctx context.Context, s Step) (string, error) {
	switch s.Kind {
	case Run:
		out, err := e.Run.Run(ctx, s.Argv)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("ran %s%s", strings.Join(s.Argv, " "), outputNote(out)), nil
	case NoConsumer:
		q, err := e.Broker.Inspect(ctx, s.Queue)
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
			return fmt.Sprintf("queue %s does not exist: no consumer", s.Queue), nil
		case err != nil:
			return "", err
		case q.Consumers > 0:
			return "", fmt.Errorf("%w: queue %s has %d consumer(s): %s", errdefs.ErrFailedPrecondition, s.Queue, q.Consumers, s.Refusal)
		}
		return fmt.Sprintf("queue %s has no consumer (%d messages waiting)", s.Queue, q.Messages), nil
	case Declare:
		if err := e.Broker.Declare(ctx, s.Queue, s.Exchange, s.Key); err != nil {
			return "", err
		}
		return fmt.Sprintf("queue %s declared and bound to %s with %s", s.Queue, s.Exchange, s.Key), nil
	case Unbind:
		err := e.Broker.Unbind(ctx, s.Queue, s.Exchange, s.Key)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Sprintf("queue %s or exchange %s does not exist: nothing to unbind", s.Queue, s.Exchange), nil
		}
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("queue %s unbound from %s/%s", s.Queue, s.Exchange, s.Key), nil
	case Move:
		return e.move(ctx, s)
	case DeleteQueue:
		if err := e.Broker.DeleteQueueIfEmpty(ctx, s.Queue); err != nil {
			return "", err
		}
		return fmt.Sprintf("queue %s deleted (or already gone)", s.Queue), nil
	case SetPolicy:
		if err := e.Policies.SetPolicy(ctx, s.Policy); err != nil {
			return "", err
		}
		return fmt.Sprintf("policy %s set on %s: %s", s.Policy.Name, s.Policy.Pattern, s.Policy.DefinitionJSON()), nil
	case ClearPolicy:
		if err := e.Policies.ClearPolicy(ctx, s.Policy.VHost, s.Policy.Name); err != nil {
			return "", err
		}
		return fmt.Sprintf("policy %s cleared (or already gone)", s.Policy.Name), nil
	case SetOption:
		if err := e.Options.Set(s.File, s.Section, s.Option, s.Value); err != nil {
			return "", err
		}
		return fmt.Sprintf("[%s] %s = %s in %s", s.Section, s.Option, s.Value, s.File), nil
	case UnsetOption:
		if err := e.Options.Unset(s.File, s.Section, s.Option); err != nil {
			return "", err
		}
		return fmt.Sprintf("[%s] %s removed from %s", s.Section, s.Option, s.File), nil
	}
	return "", fmt.Errorf("%w: step kind %q", errdefs.ErrInvalidArgument, s.Kind)
}

// move refuses while the source has a consumer (it would take messages
// while they move, and out of order); a missing source has nothing to
// move.
func (e *Executor) move(ctx context.Context, s Step) (string, error) {
	q, err := e.Broker.Inspect(ctx, s.From)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return fmt.Sprintf("queue %s does not exist: nothing to move", s.From), nil
	case err != nil:
		return "", err
	case q.Consumers > 0:
		return "", fmt.Errorf("%w: queue %s has %d consumer(s): %s", errdefs.ErrFailedPrecondition, s.From, q.Consumers, s.Refusal)
	}
	m, err := e.Broker.Move(ctx, s.From, s.To)
	if errors.Is(err, errdefs.ErrNotFound) && m.Messages == 0 {
		return fmt.Sprintf("queue %s does not exist: nothing to move", s.From), nil
	}
	if err != nil {
		return "", fmt.Errorf("%w (%d moved before it)", err, m.Messages)
	}
	return fmt.Sprintf("%d messages moved from %s to %s, %d duplicates dropped", m.Messages, s.From, s.To, m.Duplicates), nil
}

func outputNote(out []byte) string {
	if s := strings.TrimSpace(string(out)); s != "" {
		return ": " + s
	}
	return ""
}
