package nova

import (
	"errors"
	"fmt"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/rpc/oslo"
)

// Exception is a nova.exception class with its message; the Python caller
// re-raises exactly that class, which decides what the conductor does next
// (MigrationPreCheckError and Invalid subclasses make it try another host;
// most others put the instance in ERROR).
type Exception struct {
	Class   string
	Message string
	Kwargs  map[string]any
}

func (e *Exception) Error() string { return e.Class + ": " + e.Message }

// PreCheck is MigrationPreCheckError ("Migration pre-check error: <reason>").
func PreCheck(format string, a ...any) *Exception {
	reason := fmt.Sprintf(format, a...)
	return &Exception{Class: "MigrationPreCheckError", Message: "Migration pre-check error: " + reason,
		Kwargs: map[string]any{"reason": reason}}
}

// InvalidCPU is InvalidCPUInfo ("Unacceptable CPU info: <reason>").
func InvalidCPU(format string, a ...any) *Exception {
	reason := fmt.Sprintf(format, a...)
	return &Exception{Class: "InvalidCPUInfo", Message: "Unacceptable CPU info: " + reason, Kwargs: map[string]any{"reason": reason}}
}

// classes maps ferry's error classes to Nova's, for errors no handler named.
var classes = []struct {
	err   error
	class string
}{
	{errdefs.ErrFailedPrecondition, "MigrationPreCheckError"},
	{errdefs.ErrInvalidArgument, "Invalid"},
	{errdefs.ErrNotFound, "NotFound"},
	{errdefs.ErrConflict, "Invalid"},
	{errdefs.ErrUnavailable, "HypervisorUnavailable"},
	{errdefs.ErrTimeout, "HypervisorUnavailable"},
}

// Failure translates a handler error into the failure the Python caller
// re-raises: a nova.exception class where one is meant, the oslo
// dispatcher's own failures as they are.
func Failure(err error) *oslo.Failure {
	if f, ok := errors.AsType[*oslo.Failure](err); ok {
		return f
	}
	if e, ok := errors.AsType[*Exception](err); ok {
		return &oslo.Failure{Class: e.Class, Module: "nova.exception", Message: e.Message, Kwargs: e.Kwargs}
	}
	for _, c := range classes {
		if errors.Is(err, c.err) {
			msg := err.Error()
			kw := map[string]any{}
			if c.class == "MigrationPreCheckError" {
				msg = "Migration pre-check error: " + msg
				kw["reason"] = err.Error()
			}
			return &oslo.Failure{Class: c.class, Module: "nova.exception", Message: msg, Kwargs: kw}
		}
	}
	return &oslo.Failure{Class: "NovaException", Module: "nova.exception", Message: err.Error()}
}
