// Package oslo speaks oslo.messaging's "rabbit" driver over AMQP 0-9-1, so
// that a Go process is indistinguishable on the wire from a Python Nova
// service: the 2.0 envelope, calls, casts and fanout casts, replies with
// call-monitor heartbeats, failures the Python caller re-raises as the right
// exception class, duplicate detection by _unique_id, version dispatch with
// oslo's rules, and its own reconnect loop.
//
// # Serving
//
// The server side looks like net/http: a Handler (or HandlerFunc, or a
// Dispatcher of Endpoints) serves each Request; Serve runs until Shutdown,
// which lets queued and in-flight handlers finish:
//
//	srv, _ := oslo.NewServer(oslo.ServerOptions{URL: u, Server: "compute-1"}, &oslo.Dispatcher{
//		Endpoints: []oslo.Endpoint{{Version: "6.4", Methods: methods}},
//	})
//	go srv.Serve(ctx)
//	...
//	srv.Shutdown(ctx)
//
// A server consumes what a Python RPC server of host Server consumes: the
// shared topic queue (compute), the host's queue (compute.<host>) and a
// fanout queue of its own, which a clean stop deletes. The host's queue is
// consumed exclusively, so the broker itself refuses a second consumer: a
// stock nova-compute left running refuses ferry (Serve ends with
// ErrQueueInUse) or is refused (its own consume fails; it logs and
// retries). Queues are declared with the deployment's flags (QueueOptions);
// other flags than the broker's end Serve with ErrTopologyMismatch. While
// the broker is unreachable Serve keeps trying, with oslo's backoff.
//
// # TLS
//
// ServerOptions.TLS, ClientOptions.TLS and AdminOptions.TLS carry
// [oslo_messaging_rabbit]'s ssl options (TLSOptions); the transport URL's
// query overrides them, as in oslo. With TLS on, every dial verifies the
// broker's chain and that its certificate names the host being dialled. A
// certificate refused on every host of the URL is a configuration error:
// Serve and the client's links end with it instead of retrying, so a
// ferryd pointed at the wrong CA or name stops and says which.
//
// # Acks, lanes and replies
//
// Acks follow oslo: a call is acked on receipt, before dispatch (a
// redelivered call would run twice); a cast once its handler has persisted
// its intent (Request.Ack, or when the handler returns), on the session it
// came on, never another, so a cast whose session died is redelivered
// (and dropped by its _unique_id if this process has seen it).
//
// The consumer never waits for a handler. Requests wait for one of
// MaxInFlight handlers in a queue; the ServerOptions.Priority methods
// (an operator's abort or force-complete) have handlers of their own; the
// broker's prefetch is MaxInFlight plus a reserve. Bodies over
// MaxMessageSize are never parsed: one pass over the bytes finds the reply
// address for a failure reply.
//
// A reply goes to the caller's queue through the default exchange,
// mandatory, and is confirmed by the broker. One the broker returns (the
// queue is gone, perhaps for a while: the caller may be reconnecting) is
// retried every 250 ms for ReplyRetry by a goroutine of the server, not by
// the handler, whose slot is free at once; Shutdown's deadline ends the
// retries. A queue gone for the whole window is remembered, and later
// replies to it are dropped at once. While a call runs the caller gets a
// heartbeat every int(_timeout)/2 seconds.
//
// # Companion mode
//
// With ServerOptions.Forward the server consumes only a queue of its own
// (ServerOptions.Queue, e.g. ferry.compute.<host>, bound with the host's
// key), serves the methods it owns and republishes every other message
// unchanged to nova-compute's queue: the original is acked only after the
// broker confirmed the copy without returning it (matched by the
// message_id ferry sets), else requeued, so nothing is lost while
// nova-compute's queue is missing. nova-compute replies to the caller
// directly.
//
// A forward is checked against the dedup cache in the forwarder, which
// handles forwards one at a time in queue order; an id is remembered only
// once its copy went out, so a requeued original is not its own duplicate.
//
// # Topology work
//
// Admin (DialAdmin) is the broker for `ferryd cutover` and companion
// mode's start checks: Declare (the flags a server uses), Bind, Unbind,
// Inspect (a passive declare; a missing queue is a *NotFoundError),
// DeleteQueueIfEmpty, Move (a backlog republished in order, each message
// acked only after a confirm without a return) and ProbeAlternate (the
// alternate-exchange policy at work). CheckCompanion combines them into
// the start checks, naming every problem.
//
// # Clients
//
// NewClient returns at once and connects in the background; a call waits
// for its reply queue within its own timeout and fails with
// errdefs.ErrUnavailable (and IsTimeout) when the broker stays out of
// reach. A publish whose session died before the broker's confirm is sent
// again, the same bytes, as oslo does.
//
// # Notifications
//
// Notifier sends what oslo's "messaging" (bare) and "messagingv2" (2.0
// envelope) notification drivers send over the rabbit driver: the message
// (message_id, publisher_id, event_type, priority, payload, timestamp in
// Python's str(datetime)) with _unique_id and the _context_* keys, to the
// control exchange with routing key <topic>.<priority>, after declaring
// that queue with the deployment's flags once per session, persistent and
// confirmed. The caller keeps message_id and _unique_id across re-sends,
// so an oslo listener drops a copy; Notify waits for the broker within its
// context.
//
// # Transports
//
// Everything above runs on a Transport: amqp091-go by default (amqp.go is
// and admin.go are the only files that import it; it does not use amqp091's
// experimental auto-recovery), or oslotest.Broker, an in-memory RabbitMQ
// for unit tests. One reconnect loop (dial, use, back off) keeps every
// consumer and publisher connected. The AMQP heartbeat is half of
// heartbeat_timeout_threshold (ServerOptions.Heartbeat), so a dead broker
// is noticed within the threshold.
//
// # Observing
//
// An Observer (ServerOptions.Observer, ClientOptions.Observer) hears each
// request a server served, with its handler's time and error, and each
// session a link lost and got back. It takes plain values only, so the
// metrics need nothing from this package, and this package nothing from
// Prometheus.
//
// The wire facts behind every detail are in the project's
// reference/wire-protocol.md, captured from python3-oslo.messaging 14 and
// python3-nova 26 against RabbitMQ; integration/oslo proves them against
// those peers.
package oslo
