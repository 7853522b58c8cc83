package oslo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// job is one delivery on its way to a handler (or, in companion mode, to
// the forwarder).
type job struct {
	r    *Request // nil for a forward
	err  error    // a call that cannot be served: reply with this failure
	d    Delivery // forwards only
	sess Session  // forwards only: the session d came on
	tap  *Request // forwards only: shown to the handler before it is forwarded
	id   string   // forwards only: the message's _unique_id, when it decoded
	at   time.Time
}

// logFields are a message's fields in the server's log lines: the method,
// its ids, and its request context's request_id and global_request_id
// (oslo.context's; nothing else of the context, never its token).
func (m *Message) logFields() logrus.Fields {
	f := logrus.Fields{"method": m.Method, "msg_id": m.MsgID, "unique_id": m.UniqueID}
	for _, k := range []string{"request_id", "global_request_id"} {
		var v string
		if json.Unmarshal(m.Context[k], &v) == nil && v != "" {
			f[k] = v
		}
	}
	return f
}

// startLanes starts the handlers: MaxInFlight for ordinary requests,
// priorityWorkers for the Priority methods, one forwarder. They end when
// Serve closes their channels.
func (s *Server) startLanes(wg *sync.WaitGroup) {
	for range s.o.MaxInFlight {
		wg.Go(func() {
			for j := range s.normal {
				s.serve(j)
			}
		})
	}
	for range priorityWorkers {
		wg.Go(func() {
			for j := range s.urgent {
				s.serve(j)
			}
		})
	}
	if s.forwards != nil {
		wg.Go(func() {
			for j := range s.forwards {
				s.forward(j)
			}
		})
	}
}

// receive runs on the consumer loop and never waits for a handler: it
// decodes the delivery, acks a call (oslo acks calls on receipt, so a
// redelivered call never runs twice), and queues the request in its lane.
// Only when a lane's queue is full (queuedPerWorker requests per handler
// wait already) does it wait for room.
func (s *Server) receive(sess Session, d Delivery) {
	m, err := decodeMessage(d.ContentType, d.Body, s.o.MaxMessageSize)
	if s.o.Forward != nil && (err != nil || !s.owned[m.Method]) {
		j := job{d: d, sess: sess, at: time.Now()}
		if err == nil {
			j.id = m.UniqueID
		}
		if err == nil && s.tapped[m.Method] && !m.IsCall() {
			j.tap = &Request{Message: m, ack: func() error { return nil }} // the forward settles the delivery
		}
		s.queue(s.forwards, j, "forward")
		return
	}
	log := func() *logrus.Entry { return s.o.Log.WithFields(m.logFields()) }
	if m.IsCall() {
		if aerr := d.Ack(); aerr != nil { // oslo: a call whose ack fails is dropped
			log().WithError(aerr).Warn("ack of a call failed; dropping it")
			return
		}
	}
	if err != nil {
		if m.IsCall() {
			log().WithError(err).Warn("malformed call; replying with a failure")
			s.queue(s.normal, job{r: &Request{Message: m}, err: err}, "request")
			return
		}
		log().WithError(err).Error("rejecting malformed cast")
		_ = d.Nack(false)
		return
	}
	if !s.dedup.first(m.UniqueID) {
		log().Warn("duplicate message (same _unique_id); dropped")
		s.o.Observer.Duplicate()
		if !m.IsCall() {
			_ = d.Ack()
		}
		return
	}
	r := &Request{Message: m}
	if !m.IsCall() {
		r.ack = d.Ack
	}
	lane := s.normal
	if s.priority[m.Method] {
		lane = s.urgent
	}
	s.queue(lane, job{r: r}, "request")
}

func (s *Server) queue(lane chan job, j job, what string) {
	s.work.Add(1)
	select {
	case lane <- j:
		return
	default:
	}
	s.o.Log.WithField("queued", len(lane)).Warnf("every handler is busy and the %s queue is full; the consumer waits", what)
	lane <- j
}

// serve runs one request in a handler; the handler's slot is free again
// before a reply to a missing queue is retried.
func (s *Server) serve(j job) {
	defer s.work.Done()
	r := j.r
	log := func() *logrus.Entry { return s.o.Log.WithFields(r.logFields()) }
	if j.err != nil {
		s.o.Observer.RPC(r.Method, true, 0, j.err)
		s.reply(&r.Message, nil, defaultFailure(j.err))
		return
	}
	stopBeats := func() {}
	if r.IsCall() {
		stopBeats = s.heartbeats(r)
	}
	start := time.Now()
	res, err := s.call(s.hctx, r)
	s.o.Observer.RPC(r.Method, r.IsCall(), time.Since(start), err)
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
		s.reply(&r.Message, nil, s.o.Failure(err))
		return
	}
	b, merr := marshalResult(res)
	if merr != nil {
		s.reply(&r.Message, nil, s.o.Failure(fmt.Errorf("encode result of %s: %w", r.Method, merr)))
		return
	}
	s.reply(&r.Message, b, nil)
}

// call runs the handler, turning a panic into an error so that one bad
// request cannot take the server down.
func (s *Server) call(ctx context.Context, r *Request) (res any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler for %s panicked: %v", r.Method, p)
		}
	}()
	return s.h.ServeRPC(ctx, r)
}

// marshalResult encodes a handler's result; a json.RawMessage goes as is,
// once it is known to be JSON.
func marshalResult(v any) (json.RawMessage, error) {
	switch raw := v.(type) {
	case nil:
		return json.RawMessage("null"), nil
	case json.RawMessage:
		if raw == nil {
			return json.RawMessage("null"), nil
		}
		if !json.Valid(raw) {
			return nil, errors.New("the handler returned a json.RawMessage that is not JSON")
		}
		return raw, nil
	}
	return json.Marshal(v)
}

// heartbeats sends {"result": null, "ending": false} every int(_timeout)/2
// seconds while the handler runs (oslo's call monitor), nothing when that is
// under a second. A heartbeat that cannot be delivered stops them, as in
// oslo, and is not retried.
func (s *Server) heartbeats(r *Request) (stop func()) {
	every := time.Duration(int(r.Timeout.Seconds())) * time.Second / 2
	if every < time.Second {
		return func() {}
	}
	body := func() ([]byte, error) { return encodeReply(r.MsgID, nil, nil, false) }
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // owner: the handler (stop waits)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				b, err := body()
				if err != nil || s.sendReply(&r.Message, b) != nil {
					return
				}
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// reply sends the final reply of a call. When the caller's reply queue is
// missing (the caller may be reconnecting), a goroutine of the server's
// retries it every 250 ms for ReplyRetry, or until Shutdown gives up on
// the handlers; the handler itself is free at once.
func (s *Server) reply(m *Message, result json.RawMessage, f *Failure) {
	log := func() *logrus.Entry {
		return s.o.Log.WithFields(logrus.Fields{"method": m.Method, "msg_id": m.MsgID, "reply_q": m.ReplyQ})
	}
	if !m.IsCall() {
		return
	}
	if s.obsolete.has(m.ReplyQ) {
		log().Debug("reply queue known gone; reply dropped")
		return
	}
	body, err := encodeReply(m.MsgID, result, f, true)
	if err != nil {
		log().WithError(err).Error("encode reply")
		return
	}
	err = s.sendReply(m, body)
	if errors.Is(err, ErrUnroutable) {
		s.work.Add(1)
		go s.retryReply(m, body, log()) // owner: Server (work)
		return
	}
	if err != nil {
		log().WithError(err).Warn("reply not delivered")
	}
}

func (s *Server) retryReply(m *Message, body []byte, log *logrus.Entry) {
	defer s.work.Done()
	ctx, cancel := context.WithTimeout(s.hctx, s.o.ReplyRetry)
	defer cancel()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.obsolete.add(m.ReplyQ)
			log.WithError(context.Cause(ctx)).Warn("reply queue missing for the whole retry window (or the server stopped); reply dropped")
			return
		case <-t.C:
		}
		if s.obsolete.has(m.ReplyQ) {
			log.Debug("reply queue known gone; reply dropped")
			return
		}
		err := s.sendReply(m, body)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrUnroutable) {
			log.WithError(err).Warn("reply not delivered")
			return
		}
	}
}

// sendReply publishes a reply to the caller's queue through the default
// exchange, mandatory, and waits for the confirm.
func (s *Server) sendReply(m *Message, body []byte) error {
	ctx, cancel := context.WithTimeout(s.hctx, s.o.ReplyRetry)
	defer cancel()
	return s.pub.publish(ctx, Publishing{Key: m.ReplyQ, Mandatory: true, Properties: osloProperties(0), Body: body})
}

// noHeaders is kombu's empty headers table; never written to.
var noHeaders = map[string]any{}

// osloProperties are the basic properties kombu sets on every message
// (reference wire-protocol.md §2.1); expiration only on calls.
func osloProperties(expiration time.Duration) Properties {
	p := Properties{ContentType: contentType, ContentEncoding: contentEncoding, DeliveryMode: 2, Headers: noHeaders}
	if expiration > 0 {
		p.Expiration = fmt.Sprint(expiration.Milliseconds())
	}
	return p
}

// obsoleteQueues remembers reply queues found gone for a whole retry
// window, so that later replies to them are dropped at once (oslo's
// ObsoleteReplyQueuesCache: 200 entries, each for the retry window).
type obsoleteQueues struct {
	mu  sync.Mutex
	ttl time.Duration
	at  map[string]time.Time
}

const obsoleteMax = 200

func newObsoleteQueues(ttl time.Duration) *obsoleteQueues {
	return &obsoleteQueues{ttl: ttl, at: map[string]time.Time{}}
}

func (o *obsoleteQueues) has(q string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	t, ok := o.at[q]
	if ok && time.Since(t) >= o.ttl {
		delete(o.at, q)
		return false
	}
	return ok
}

func (o *obsoleteQueues) add(q string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if len(o.at) >= obsoleteMax {
		oldest, first := "", now
		for k, t := range o.at {
			if now.Sub(t) >= o.ttl {
				delete(o.at, k)
			} else if !t.After(first) {
				oldest, first = k, t
			}
		}
		if len(o.at) >= obsoleteMax {
			delete(o.at, oldest)
		}
	}
	o.at[q] = now
}
