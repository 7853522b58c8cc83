// Package oslo speaks oslo.messaging's "rabbit" driver over AMQP 0-9-1, so
// that a Go process is indistinguishable on the wire from a Python Nova
// service: the 2.0 envelope, calls, casts and fanout casts, replies with
// call-monitor heartbeats, failures the Python caller re-raises as the right
// exception class, duplicate detection by _unique_id, version dispatch with
// oslo's rules, and its own reconnect loop.
//
// The server side looks like net/http: a Handler (or HandlerFunc, or a
// Dispatcher of Endpoints) serves each Request in its own goroutine, Serve
// runs until Shutdown, which lets in-flight handlers finish:
//
//	srv, _ := oslo.NewServer(oslo.ServerOptions{URL: u, Server: "compute-1"}, &oslo.Dispatcher{
//		Endpoints: []oslo.Endpoint{{Version: "6.4", Methods: methods}},
//	})
//	go srv.Serve(ctx)
//	...
//	srv.Shutdown(ctx)
//
// Acks follow oslo: a call is acked on receipt, before dispatch (a
// redelivered call would run twice); a cast is acked once its handler has
// persisted its intent (Request.Ack, or when the handler returns), on the
// channel it came on. Replies go out with mandatory=true through a
// confirm-mode channel; a missing reply queue is retried for a minute.
//
// The wire facts behind every detail are in the project's
// reference/wire-protocol.md, captured from python3-oslo.messaging 14 and
// python3-nova 26 against RabbitMQ. Only amqp.go imports amqp091-go, and it
// does not use amqp091's experimental auto-recovery: reconnecting is driven
// by close notifications here, with delivery tags never carried across
// channels.
package oslo
