package oslo

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Failure is an exception as oslo.messaging carries it in a reply's
// "failure" field. A Python caller re-raises Module.Class(*Args, **Kwargs)
// when the module is allowed (nova.exception, builtins), else RemoteError.
// On the client side, a remote exception arrives as a *Failure.
type Failure struct {
	Class   string
	Module  string
	Message string
	Args    []any
	Kwargs  map[string]any
	TB      []string
}

func (f *Failure) Error() string {
	return fmt.Sprintf("remote %s.%s: %s", f.Module, f.Class, f.Message)
}

type failureWire struct {
	Class   string         `json:"class"`
	Module  string         `json:"module"`
	Message string         `json:"message"`
	TB      []string       `json:"tb"`
	Args    []any          `json:"args"`
	Kwargs  map[string]any `json:"kwargs"`
}

func (f *Failure) marshal() (string, error) {
	w := failureWire{Class: f.Class, Module: f.Module, Message: f.Message, TB: f.TB, Args: f.Args, Kwargs: f.Kwargs}
	if w.Args == nil {
		w.Args = []any{f.Message}
	}
	if w.Kwargs == nil {
		w.Kwargs = map[string]any{}
	}
	if w.TB == nil {
		// Python callers join tb into str(exc); one line says where it came from.
		w.TB = []string{fmt.Sprintf("Traceback (most recent call last):\n  ferry (Go): %s.%s\n", f.Module, f.Class),
			fmt.Sprintf("%s.%s: %s\n", f.Module, f.Class, f.Message)}
	}
	b, err := json.Marshal(w)
	return string(b), err
}

func parseFailure(s string) (*Failure, error) {
	var w failureWire
	if err := json.Unmarshal([]byte(s), &w); err != nil {
		return nil, fmt.Errorf("%w: failure is not JSON: %w", errMalformed, err)
	}
	return &Failure{
		Class:   strings.TrimSuffix(w.Class, "_Remote"),
		Module:  strings.TrimSuffix(w.Module, "_Remote"),
		Message: w.Message, Args: w.Args, Kwargs: w.Kwargs, TB: w.TB,
	}, nil
}

// The dispatcher's own failures, with oslo's classes and messages.
const dispatcherModule = "oslo_messaging.rpc.dispatcher"

// NoSuchMethod is what a caller gets for a method no compatible endpoint has.
func NoSuchMethod(method string) *Failure {
	return &Failure{Class: "NoSuchMethod", Module: dispatcherModule,
		Message: "Endpoint does not support RPC method " + method}
}

// UnsupportedVersion is what a caller gets for a version no endpoint accepts.
func UnsupportedVersion(version, method string) *Failure {
	return &Failure{Class: "UnsupportedVersion", Module: dispatcherModule,
		Message: fmt.Sprintf("Endpoint does not support RPC version %s. Attempted method: %s", version, method)}
}

// unsupportedEnvelope is oslo's own error for an envelope of another
// version (oslo_messaging/_drivers/common.py).
func unsupportedEnvelope(version string) *Failure {
	return &Failure{Class: "UnsupportedRpcEnvelopeVersion", Module: "oslo_messaging._drivers.common",
		Message: fmt.Sprintf("Specified RPC envelope version, %s, not supported by this endpoint.", version)}
}

// defaultFailure turns any error into a Failure: the error's own *Failure
// when it wraps one, a builtins.ValueError for malformed messages, else a
// builtins.RuntimeError.
func defaultFailure(err error) *Failure {
	if f, ok := errors.AsType[*Failure](err); ok {
		return f
	}
	if errors.Is(err, errMalformed) {
		return &Failure{Class: "ValueError", Module: "builtins", Message: err.Error()}
	}
	return &Failure{Class: "RuntimeError", Module: "builtins", Message: err.Error()}
}
