package oslo

import "time"

// Observer learns what a Server and a Client do, for metrics. Its methods
// run on the server's handlers and the links' reconnect loops and must
// return at once. Only plain values cross it, so an implementation needs
// nothing from this package.
type Observer interface {
	// RPC: a request was served. method is as the message named it (the
	// implementation bounds what it keeps: a sender chooses it); took is
	// the handler's time; err is the handler's error, or why the request
	// could not be served (a malformed call).
	RPC(method string, call bool, took time.Duration, err error)
	// Forwarded: companion mode settled a message it does not own, with
	// one of the Forward* outcomes.
	Forwarded(outcome string)
	// Duplicate: a message whose _unique_id was seen before was dropped.
	Duplicate()
	// AMQPLost: link's session ended under it (broker or network).
	AMQPLost(link string)
	// AMQPResumed: link is served again after a loss or failed dials.
	AMQPResumed(link string)
}

// The links an Observer hears of.
const (
	LinkServerConsumer  = "server-consumer"
	LinkServerPublisher = "server-publisher"
	LinkClientPublisher = "client-publisher"
	LinkClientReplies   = "client-replies"
)

// The outcomes of a forward.
const (
	ForwardSent        = "forwarded"   // the broker confirmed the copy; the original acked
	ForwardDuplicate   = "duplicate"   // a copy went out before; dropped
	ForwardExpired     = "expired"     // its expiration passed while held; dropped
	ForwardReturned    = "returned"    // the target queue is missing; the original requeued later
	ForwardUnconfirmed = "unconfirmed" // no confirm; the original requeued
)

type nopObserver struct{}

func (nopObserver) RPC(string, bool, time.Duration, error) {}
func (nopObserver) Forwarded(string)                       {}
func (nopObserver) Duplicate()                             {}
func (nopObserver) AMQPLost(string)                        {}
func (nopObserver) AMQPResumed(string)                     {}

func observer(o Observer) Observer {
	if o == nil {
		return nopObserver{}
	}
	return o
}
