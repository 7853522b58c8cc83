// Package errdefs holds ferry's error classes. Each boundary (libvirt, AMQP,
// Nova RPC) wraps what it gets into one of these with %w, once, so callers
// branch with errors.Is and never on message text.
package errdefs

import "errors"

var (
	// ErrNotFound: the thing addressed does not exist (domain, migration, queue).
	ErrNotFound = errors.New("not found")
	// ErrInvalidArgument: the request cannot work as asked, whatever the state.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrConflict: the request clashes with something that already exists.
	ErrConflict = errors.New("conflict")
	// ErrFailedPrecondition: the system is not in a state that allows the request.
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrUnavailable: a peer (libvirtd, the broker) cannot be reached now; retrying may help.
	ErrUnavailable = errors.New("unavailable")
	// ErrAborted: the operation was aborted on purpose (admin or policy).
	ErrAborted = errors.New("aborted")
	// ErrTimeout: a bounded call did not return in time.
	ErrTimeout = errors.New("timeout")
)
