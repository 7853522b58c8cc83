package oslo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("oslo: server closed")

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
	URL         TransportURL
	Exchange    string        // control_exchange; default "nova"
	Topic       string        // default "compute"
	Server      string        // host name: consumes <topic>.<server>; required
	NoFanout    bool          // do not consume <topic>_fanout
	Queues      QueueOptions  //
	Prefetch    int           // rabbit_qos_prefetch_count; 0 = no basic.qos
	Heartbeat   time.Duration // AMQP heartbeat; default 60s
	MaxInFlight int           // concurrent handlers; default 64 (executor_thread_pool_size)
	ReplyRetry  time.Duration // how long an unroutable reply is retried; default 60s
	DedupSize   int           // remembered _unique_ids; default 1024
	// Failure maps a handler error to the exception the caller re-raises;
	// default: the error's *Failure, else builtins.RuntimeError.
	Failure func(error) *Failure
	Log     *logrus.Entry
}

// Server consumes the queues a Python RPC server on host Server consumes
// (<topic>, <topic>.<server> and a fanout queue) and serves each delivery in
// its own goroutine, so a cast such as an abort runs while a long call does.
type Server struct {
	o       ServerOptions
	h       Handler
	b       *broker
	pub     *publisher
	dedup   *dedup
	fanoutQ string
	slots   chan struct{}

	mu       sync.Mutex
	serving  bool
	stop     context.CancelFunc // stops consuming
	handlers sync.WaitGroup     // in-flight handlers
	hctx     context.Context    // handlers' base context
	hcancel  context.CancelFunc // cancels handlers when Shutdown's ctx ends first
	done     chan struct{}      // closed when Serve has returned
	ready    chan struct{}      // closed once consuming
	readyOne sync.Once
	obsolete sync.Map // reply queue → time it was found gone
}

// NewServer validates the options; nothing touches the network before Serve.
func NewServer(o ServerOptions, h Handler) (*Server, error) {
	if o.Server == "" {
		return nil, fmt.Errorf("oslo server: %w: no server (host) name", errdefs.ErrInvalidArgument)
	}
	if o.Queues.Quorum && o.Queues.HA {
		return nil, fmt.Errorf("oslo server: %w: rabbit_quorum_queue and rabbit_ha_queues cannot both be set", errdefs.ErrInvalidArgument)
	}
	if len(o.URL.Hosts) == 0 {
		return nil, fmt.Errorf("oslo server: %w: no transport URL", errdefs.ErrInvalidArgument)
	}
	def := func(d *string, v string) {
		if *d == "" {
			*d = v
		}
	}
	def(&o.Exchange, "nova")
	def(&o.Topic, "compute")
	if o.Heartbeat == 0 {
		o.Heartbeat = 60 * time.Second
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 64
	}
	if o.ReplyRetry == 0 {
		o.ReplyRetry = 60 * time.Second
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
	name := fmt.Sprintf("%s:%d:%s", filepath.Base(os.Args[0]), os.Getpid(), newID())
	b := &broker{url: o.URL, heartbeat: o.Heartbeat, name: name, log: o.Log}
	s := &Server{
		o: o, h: h, b: b, pub: newPublisher(b, o.Log), dedup: newDedup(o.DedupSize),
		fanoutQ: o.Topic + "_fanout_" + newID(), slots: make(chan struct{}, o.MaxInFlight),
		done: make(chan struct{}), ready: make(chan struct{}),
	}
	s.hctx, s.hcancel = context.WithCancel(context.Background())
	return s, nil
}

// Ready is closed once the server consumes its queues for the first time.
func (s *Server) Ready() <-chan struct{} { return s.ready }

func (s *Server) queues() []queueDecl {
	q := s.o.Queues
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
	topic := func(name string) queueDecl {
		return queueDecl{name: name, exchange: s.o.Exchange, kind: "topic", exDurable: durable, exAutoDel: q.AutoDelete,
			durable: durable, autoDelete: q.AutoDelete, args: args, key: name}
	}
	qs := []queueDecl{topic(s.o.Topic), topic(s.o.Topic + "." + s.o.Server)}
	if !s.o.NoFanout {
		fargs := map[string]any{"x-expires": int32(q.TransientTTL.Milliseconds())}
		if q.HA {
			fargs["x-ha-policy"] = "all"
		}
		qs = append(qs, queueDecl{name: s.fanoutQ, exchange: s.o.Topic + "_fanout", kind: "fanout",
			exAutoDel: true, args: fargs, key: s.o.Topic})
	}
	return qs
}

// Serve consumes until Shutdown (then it returns ErrServerClosed) or until
// the broker reports that the queues exist with other settings (a
// configuration error naming them). Lost connections are re-established with
// backoff, and every queue is declared again, the fanout queue with the
// same name.
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

	var pubWG sync.WaitGroup
	pubCtx, pubStop := context.WithCancel(context.Background())
	pubWG.Add(1)
	go func() { defer pubWG.Done(); s.pub.run(pubCtx) }() // owner: Serve
	defer func() {
		s.handlers.Wait() // handlers may still reply
		pubStop()
		pubWG.Wait()
	}()

	s.o.Log.WithFields(logrus.Fields{"broker": s.o.URL.String(), "exchange": s.o.Exchange,
		"topic": s.o.Topic, "server": s.o.Server}).Info("consuming")
	if s.o.Topic == "compute" {
		s.o.Log.Warn("the compute-alt topic (compute RPC 6.5, nova 33 \"Gazpacho\") is not consumed: " +
			"controllers must pin [upgrade_levels] compute to 6.4 or lower, or live-migration casts go to compute-alt." +
			s.o.Server + " and are never served here")
	}
	var bo backoff
	for cctx.Err() == nil {
		conn, err := s.b.dial(cctx)
		if err != nil {
			s.o.Log.WithError(err).Warn("broker unreachable; retrying")
			if bo.wait(cctx) != nil {
				break
			}
			continue
		}
		started := time.Now()
		err = consumerSession(cctx, conn, s.o.Prefetch, s.queues(), false, s.dispatch,
			func() { s.readyOne.Do(func() { close(s.ready) }) })
		closeConn(conn)
		if errors.Is(err, ErrTopologyMismatch) {
			return err
		}
		if err == nil { // ctx ended
			break
		}
		s.o.Log.WithError(err).Warn("consumer lost; reconnecting")
		if time.Since(started) > 10*time.Second {
			bo.reset()
		}
		if bo.wait(cctx) != nil {
			break
		}
	}
	if ctx.Err() != nil && !s.shuttingDown() {
		return ctx.Err()
	}
	return ErrServerClosed
}

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stop == nil
}

// Shutdown stops consuming, then waits for in-flight handlers (their replies
// included) until ctx ends; at that point it cancels their contexts and
// returns ctx's error once they are gone.
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

// dispatch runs on the consumer loop: it acks calls, then hands the
// delivery to a goroutine (waiting for a free slot first).
func (s *Server) dispatch(d delivery) {
	m, err := decodeMessage(d.contentType, d.body)
	if m.IsCall() {
		if aerr := d.ack(); aerr != nil { // oslo: a call whose ack fails is dropped
			s.o.Log.WithError(aerr).Warn("ack of a call failed; dropping it")
			return
		}
	}
	log := func() *logrus.Entry {
		return s.o.Log.WithFields(logrus.Fields{"method": m.Method, "msg_id": m.MsgID, "unique_id": m.UniqueID})
	}
	if err != nil {
		if m.IsCall() {
			log().WithError(err).Warn("malformed call; replying with a failure")
			s.slots <- struct{}{}
			s.handlers.Add(1)
			go func() { // owner: Server (handlers)
				defer func() { <-s.slots; s.handlers.Done() }()
				s.reply(&m, nil, s.o.Failure(err), true)
			}()
			return
		}
		log().WithError(err).Error("rejecting malformed cast")
		_ = d.reject()
		return
	}
	if !s.dedup.first(m.UniqueID) {
		log().Warn("duplicate message (same _unique_id); dropped")
		if !m.IsCall() {
			_ = d.ack()
		}
		return
	}
	r := &Request{Message: m}
	if !m.IsCall() {
		r.ack = d.ack
	}
	s.slots <- struct{}{}
	s.handlers.Add(1)
	go func() { // owner: Server (handlers); Shutdown waits for it
		defer func() { <-s.slots; s.handlers.Done() }()
		s.serve(r, log)
	}()
}

func (s *Server) serve(r *Request, log func() *logrus.Entry) {
	ctx := s.hctx
	stopBeats := func() {}
	if r.IsCall() {
		stopBeats = s.heartbeats(r)
	}
	res, err := s.call(ctx, r)
	stopBeats()
	if !r.IsCall() {
		if aerr := r.Ack(); aerr != nil {
			log().WithError(aerr).Warn("ack of a cast failed (channel gone); the broker will redeliver it")
		}
		if err != nil {
			log().WithError(err).Error("cast failed")
		}
		return
	}
	if err != nil {
		log().WithError(err).Info("call failed; replying with a failure")
		s.reply(&r.Message, nil, s.o.Failure(err), true)
		return
	}
	b, merr := marshalResult(res)
	if merr != nil {
		s.reply(&r.Message, nil, s.o.Failure(fmt.Errorf("encode result of %s: %w", r.Method, merr)), true)
		return
	}
	s.reply(&r.Message, b, nil, true)
}

// call runs the handler, turning a panic into an error so that one bad
// request cannot take the consumer down.
func (s *Server) call(ctx context.Context, r *Request) (res any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler for %s panicked: %v", r.Method, p)
		}
	}()
	return s.h.ServeRPC(ctx, r)
}

func marshalResult(v any) (json.RawMessage, error) {
	if raw, ok := v.(json.RawMessage); ok {
		if raw == nil {
			return json.RawMessage("null"), nil
		}
		return raw, nil
	}
	return json.Marshal(v)
}

// heartbeats sends {"result": null, "ending": false} every int(_timeout)/2
// seconds while the handler runs (oslo's call monitor), nothing when that is
// under a second.
func (s *Server) heartbeats(r *Request) (stop func()) {
	every := time.Duration(int(r.Timeout.Seconds())) * time.Second / 2
	if every < time.Second {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owner: the handler goroutine (stop waits)
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if !s.reply(&r.Message, nil, nil, false) {
					return
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// reply publishes a reply to the caller's queue, retrying every 250 ms for
// ReplyRetry while the queue is missing (the caller may be reconnecting).
// It reports whether the reply went out.
func (s *Server) reply(m *Message, result json.RawMessage, f *Failure, ending bool) bool {
	if !m.IsCall() {
		return false
	}
	log := func() *logrus.Entry {
		return s.o.Log.WithFields(logrus.Fields{"method": m.Method, "msg_id": m.MsgID, "reply_q": m.ReplyQ})
	}
	if t, ok := s.obsolete.Load(m.ReplyQ); ok && time.Since(t.(time.Time)) < s.o.ReplyRetry {
		log().Debug("reply queue known gone; reply dropped")
		return false
	}
	body, err := encodeReply(m.MsgID, result, f, ending)
	if err != nil {
		log().WithError(err).Error("encode reply")
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.o.ReplyRetry)
	defer cancel()
	for {
		err := s.pub.publish(ctx, publishing{key: m.ReplyQ, mandatory: true, body: body})
		if err == nil {
			return true
		}
		if !errors.Is(err, errUnroutable) || ctx.Err() != nil {
			log().WithError(err).Warn("reply not delivered")
			if errors.Is(err, errUnroutable) {
				s.obsolete.Store(m.ReplyQ, time.Now())
			}
			return false
		}
		select {
		case <-ctx.Done():
			s.obsolete.Store(m.ReplyQ, time.Now())
			log().Warn("reply queue missing for the whole retry window; reply dropped")
			return false
		case <-time.After(250 * time.Millisecond):
		}
	}
}
