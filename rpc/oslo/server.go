package oslo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("oslo: server closed")

// ErrTopologyMismatch: the broker has an exchange or queue with other
// settings than the configuration asks for.
var ErrTopologyMismatch = errors.New("queue or exchange settings differ from the broker's")

// ErrQueueInUse: the host's queue has another consumer, so the broker
// refused the server's exclusive one.
var ErrQueueInUse = errors.New("the host's queue has another consumer")

// QueueOptions mirror [oslo_messaging_rabbit] of the deployment: the broker
// refuses a declare whose flags differ from the existing queue's.
type QueueOptions struct {
	Durable             bool          // amqp_durable_queues
	AutoDelete          bool          // amqp_auto_delete
	Quorum              bool          // rabbit_quorum_queue (implies durable topic queues)
	QuorumDeliveryLimit int           // rabbit_quorum_delivery_limit; 0 = unset
	HA                  bool          // rabbit_ha_queues (x-ha-policy: all)
	TransientTTL        time.Duration // rabbit_transient_queues_ttl for fanout/reply queues; default 1800s
}

// ServerOptions configure a Server. Zero values mean oslo's defaults.
type ServerOptions struct {
	URL       TransportURL
	TLS       TLSOptions // [oslo_messaging_rabbit] ssl options; URL's query overrides them
	Transport Transport  // default: amqp091-go to URL
	Exchange  string     // control_exchange; default "nova"
	Topic     string     // default "compute"
	Server    string     // host name: consumes <topic>.<server>; required
	// Queue is the host's queue, bound to Exchange with the key
	// <topic>.<server> and consumed exclusively; default "<topic>.<server>".
	// Companion mode names its own (e.g. "ferry.compute.<host>").
	Queue    string
	NoFanout bool         // do not consume <topic>_fanout
	Queues   QueueOptions //
	// Prefetch is how many unsettled deliveries the broker hands each
	// consumer; default MaxInFlight plus a reserve for the priority lane.
	// Less than that lets ordinary requests fill the window the lane needs.
	Prefetch int
	// Heartbeat is heartbeat_timeout_threshold: a dead broker is noticed
	// within it; default 60s.
	Heartbeat   time.Duration
	MaxInFlight int // concurrent handlers; default 64 (executor_thread_pool_size)
	// Priority names methods served in a lane of their own, so that they
	// never wait behind ordinary requests (an operator's abort or
	// force-complete of a running migration).
	Priority   []string
	ReplyRetry time.Duration // how long an unroutable reply is retried; default 60s
	// MaxMessageSize bounds the bodies the server parses, checked before
	// any parsing; default MaxMessageSize. A call over it gets a failure
	// reply (its reply address is read in one pass over the bytes), a cast
	// over it is rejected.
	MaxMessageSize int
	DedupSize      int // remembered _unique_ids; default 1024
	// Forward, when set, is companion mode: only the host's queue is
	// consumed (the topic queue and the fanout stay nova-compute's), the
	// methods Forward.Owned are served here, and every other message is
	// republished unchanged to Forward.To.
	Forward *Forward
	// Failure maps a handler error to the exception the caller re-raises;
	// default: the error's *Failure, else builtins.RuntimeError.
	Failure func(error) *Failure
	// Observer learns of every request served and of lost and resumed
	// sessions; nil for none.
	Observer Observer
	Log      *logrus.Entry
}

// Forward routes what a companion-mode server does not own.
type Forward struct {
	To    string   // nova-compute's queue, e.g. "compute.<host>", reached through the default exchange
	Owned []string // methods served here
	// Tapped methods are forwarded and also shown to the handler first, in
	// the forwarder's order; the handler's result and error are only
	// logged (external_instance_event: a plug event a migration here
	// waits for is nova-compute's to see too).
	Tapped []string
}

const (
	priorityWorkers = 8  // the priority lane's handlers
	prefetchReserve = 16 // prefetch beyond MaxInFlight, for the priority lane and forwards
	queuedPerWorker = 4  // requests waiting for a handler, per handler
)

// Server consumes the queues a Python RPC server on host Server consumes
// (<topic>, <topic>.<server> and a fanout queue) and serves each delivery
// in a handler of its lane, so a cast such as an abort runs while long
// calls do.
type Server struct {
	o        ServerOptions
	h        Handler
	consumer link
	pubLink  link
	pub      *publisher
	dedup    *dedup
	obsolete *obsoleteQueues
	fanoutQ  string
	priority map[string]bool
	owned    map[string]bool
	tapped   map[string]bool

	normal, urgent chan job
	forwards       chan job

	mu       sync.Mutex
	serving  bool
	stop     context.CancelFunc // stops consuming
	work     sync.WaitGroup     // queued and running handlers, reply retries, forwards
	hctx     context.Context    // handlers' and retries' base context
	hcancel  context.CancelFunc // cancels them when Shutdown's ctx ends first
	done     chan struct{}      // closed when Serve has returned
	ready    chan struct{}      // closed once consuming
	readyOne sync.Once
	lostAt   time.Time // when the last session was lost; zero before
}

// NewServer validates the options; nothing touches the network before Serve.
func NewServer(o ServerOptions, h Handler) (*Server, error) {
	if o.Server == "" {
		return nil, fmt.Errorf("oslo server: %w: no server (host) name", errdefs.ErrInvalidArgument)
	}
	if o.Queues.Quorum && o.Queues.HA {
		return nil, fmt.Errorf("oslo server: %w: rabbit_quorum_queue and rabbit_ha_queues cannot both be set", errdefs.ErrInvalidArgument)
	}
	if o.Forward != nil && o.Forward.To == "" {
		return nil, fmt.Errorf("oslo server: %w: forwarding without a target queue", errdefs.ErrInvalidArgument)
	}
	def := func(d *string, v string) {
		if *d == "" {
			*d = v
		}
	}
	def(&o.Exchange, "nova")
	def(&o.Topic, "compute")
	def(&o.Queue, o.Topic+"."+o.Server)
	if o.Forward != nil && o.Forward.To == o.Queue {
		return nil, fmt.Errorf("oslo server: %w: forwarding %s to itself", errdefs.ErrInvalidArgument, o.Queue)
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = 60 * time.Second
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 64
	}
	if o.Prefetch <= 0 {
		o.Prefetch = o.MaxInFlight + prefetchReserve
	}
	if o.ReplyRetry == 0 {
		o.ReplyRetry = 60 * time.Second
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = MaxMessageSize
	}
	if o.DedupSize <= 0 {
		o.DedupSize = 1024
	}
	if o.Queues.TransientTTL == 0 {
		o.Queues.TransientTTL = 1800 * time.Second
	}
	if o.Failure == nil {
		o.Failure = defaultFailure
	}
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	o.Log = o.Log.WithField("component", "oslo-server")
	o.Observer = observer(o.Observer)
	t, err := transportFor(o.Transport, o.URL, o.TLS, o.Heartbeat)
	if err != nil {
		return nil, fmt.Errorf("oslo server: %w", err)
	}
	s := &Server{
		o: o, h: h, pub: newPublisher(), dedup: newDedup(o.DedupSize), obsolete: newObsoleteQueues(o.ReplyRetry),
		consumer: link{t: t, what: "consumer", log: o.Log, name: LinkServerConsumer, obs: o.Observer},
		pubLink:  link{t: t, what: "publisher", log: o.Log, name: LinkServerPublisher, obs: o.Observer},
		fanoutQ:  o.Topic + "_fanout_" + newID(), priority: set(o.Priority),
		normal: make(chan job, queuedPerWorker*o.MaxInFlight), urgent: make(chan job, queuedPerWorker*priorityWorkers),
		done: make(chan struct{}), ready: make(chan struct{}),
	}
	if o.Forward != nil {
		s.owned, s.tapped = set(o.Forward.Owned), set(o.Forward.Tapped)
		s.forwards = make(chan job, o.Prefetch)
	}
	s.hctx, s.hcancel = context.WithCancel(context.Background())
	return s, nil
}

func set(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// Ready is closed once the server consumes its queues for the first time.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// consumed is one queue the server declares and consumes.
type consumed struct {
	Declaration
	exclusive bool
}

// Topic is how oslo declares a topic consumer (declare_topic_consumer):
// the control exchange, a queue on it and their binding, with the
// deployment's flags. Anything that declares a queue or exchange a Python
// service declares too uses it, or the broker answers 406.
func (q QueueOptions) Topic(exchange, queue, key string) Declaration {
	durable := q.Durable || q.Quorum
	args := map[string]any{}
	if q.HA {
		args["x-ha-policy"] = "all"
	}
	if q.Quorum {
		args["x-queue-type"] = "quorum"
		if q.QuorumDeliveryLimit > 0 {
			args["x-delivery-limit"] = int32(q.QuorumDeliveryLimit)
		}
	}
	return Declaration{Exchange: exchange, ExchangeKind: "topic", ExchangeDurable: durable,
		ExchangeAutoDelete: q.AutoDelete, Queue: queue, Durable: durable, AutoDelete: q.AutoDelete, Args: args, Key: key}
}

func (s *Server) queues() []consumed {
	q := s.o.Queues
	topic := func(name, key string) Declaration { return q.Topic(s.o.Exchange, name, key) }
	// Only the host's queue is exclusive: the topic queue is shared by
	// every compute, and the fanout queue is this process's own.
	host := consumed{topic(s.o.Queue, s.o.Topic+"."+s.o.Server), true}
	if s.o.Forward != nil {
		return []consumed{host}
	}
	qs := []consumed{{topic(s.o.Topic, s.o.Topic), false}, host}
	if !s.o.NoFanout {
		fargs := map[string]any{"x-expires": int32(q.TransientTTL.Milliseconds())}
		if q.HA {
			fargs["x-ha-policy"] = "all"
		}
		qs = append(qs, consumed{Declaration{Exchange: s.o.Topic + "_fanout", ExchangeKind: "fanout",
			ExchangeAutoDelete: true, Queue: s.fanoutQ, Args: fargs, Key: s.o.Topic}, false})
	}
	return qs
}

// Serve consumes until Shutdown (then it returns ErrServerClosed), until
// the broker reports that the queues exist with other settings
// (ErrTopologyMismatch, naming them), or until it refuses the exclusive
// consumer of the host's queue (ErrQueueInUse). While the broker is
// unreachable it keeps trying; a lost connection is re-established with
// backoff and every queue declared again, the fanout queue with the same
// name.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return fmt.Errorf("oslo server: %w: Serve called twice", errdefs.ErrFailedPrecondition)
	}
	s.serving = true
	cctx, stop := context.WithCancel(ctx)
	s.stop = stop
	s.mu.Unlock()
	defer close(s.done)
	defer stop()

	var bg sync.WaitGroup
	pubCtx, pubStop := context.WithCancel(context.Background())
	bg.Go(func() { _ = s.pubLink.run(pubCtx, s.pub.serve) }) // replies go out until the handlers are done
	s.startLanes(&bg)

	s.o.Log.WithFields(logrus.Fields{"broker": s.o.URL.String(), "exchange": s.o.Exchange,
		"topic": s.o.Topic, "server": s.o.Server, "queue": s.o.Queue}).Info("consuming")
	if s.o.Topic == "compute" {
		s.o.Log.Warn("the compute-alt topic (compute RPC 6.5, nova 33 \"Gazpacho\") is not consumed: " +
			"controllers must pin [upgrade_levels] compute to 6.4 or lower, or live-migration casts go to compute-alt." +
			s.o.Server + " and are never served here")
	}
	err := s.consumer.run(cctx, s.consume)

	s.work.Wait() // queued requests, handlers, reply retries, forwards
	close(s.normal)
	close(s.urgent)
	if s.forwards != nil {
		close(s.forwards)
	}
	pubStop()
	bg.Wait()
	switch {
	case err != nil:
		return err
	case ctx.Err() != nil && !s.shuttingDown():
		return ctx.Err()
	}
	return ErrServerClosed
}

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stop == nil
}

// Shutdown stops consuming, then waits for queued and in-flight handlers
// (their replies included) until ctx ends; at that point it cancels their
// contexts and their reply retries, and returns ctx's error once they are
// gone. A clean stop deletes the fanout queue, as oslo does.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	stop := s.stop
	s.stop = nil
	serving := s.serving
	s.mu.Unlock()
	if !serving {
		return nil
	}
	if stop != nil {
		stop()
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		s.hcancel()
		<-s.done
		return ctx.Err()
	}
}

// consume is the consumer link's use: declare, consume, and hand every
// delivery on until the session ends or ctx does. On ctx's end it cancels
// the consumers, waits for the work in flight (casts are acked on this
// session) and deletes the fanout queue.
func (s *Server) consume(ctx context.Context, sess Session, up func()) error {
	qs := s.queues()
	for _, q := range qs {
		if err := sess.Declare(ctx, q.Declaration); err != nil {
			return declareError(q.Declaration, err)
		}
	}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	var in [3]<-chan Delivery // a nil channel never delivers
	for i, q := range qs {
		d, err := sess.Consume(cctx, q.Queue, ConsumeOptions{Tag: fmt.Sprint(i + 1), Exclusive: q.exclusive, Prefetch: s.o.Prefetch})
		if err != nil {
			return s.consumeError(q, err)
		}
		in[i] = d
	}
	s.readyOne.Do(func() { close(s.ready); s.o.Log.Info("serving: every queue consumed") })
	up()
	for {
		var d Delivery
		var ok bool
		select {
		case d, ok = <-in[0]:
		case d, ok = <-in[1]:
		case d, ok = <-in[2]:
		case <-sess.Done():
			return s.lost(sess.Err())
		case <-ctx.Done():
			cancel()
			s.work.Wait()
			if s.o.Forward == nil && !s.o.NoFanout {
				if err := sess.DeleteQueue(context.WithoutCancel(ctx), s.fanoutQ); err != nil {
					s.o.Log.WithError(err).Info("fanout queue not deleted; it expires by itself")
				}
			}
			return nil
		}
		if !ok {
			return s.lost(fmt.Errorf("%w: a consumer ended", ErrSessionClosed))
		}
		s.receive(sess, d)
	}
}

func (s *Server) lost(err error) error {
	s.mu.Lock()
	s.lostAt = time.Now()
	s.mu.Unlock()
	return err
}

// declareError: a 406 from the broker means the deployment declared the
// queues with other settings; a configuration error, not something a
// retry fixes.
func declareError(d Declaration, err error) error {
	if brokerCode(err) == codePreconditionFailed {
		return fatal(fmt.Errorf("declare %s: %w: %w: %w; make amqp_durable_queues, amqp_auto_delete, rabbit_quorum_queue "+
			"and rabbit_ha_queues match the deployment's [oslo_messaging_rabbit] settings",
			d.Queue, ErrTopologyMismatch, errdefs.ErrFailedPrecondition, err))
	}
	return fmt.Errorf("declare %s: %w", d.Queue, err)
}

// consumeError: a 403 on the exclusive consumer means another consumer
// holds the host's queue. At start that is final. After a lost connection
// the holder may be this server's own old connection, which the broker
// drops within the heartbeat threshold, so the refusal is final only once
// it outlasts that.
func (s *Server) consumeError(q consumed, err error) error {
	if brokerCode(err) != codeAccessRefused || !q.exclusive {
		return fmt.Errorf("consume %s: %w", q.Queue, err)
	}
	s.mu.Lock()
	lostAt := s.lostAt
	s.mu.Unlock()
	e := fmt.Errorf("%w: %w (%w): likely a nova-compute on this host; stop nova-compute on this host, "+
		"or run ferryd in companion mode", err, ErrQueueInUse, errdefs.ErrFailedPrecondition)
	if lostAt.IsZero() || time.Since(lostAt) > 2*s.o.Heartbeat {
		return fatal(e)
	}
	return fmt.Errorf("%w (perhaps this server's own lost connection, which the broker drops within %s)", e, 2*s.o.Heartbeat)
}
