package oslo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// ErrTimeout is what a call returns when no reply came in time (oslo's
// MessagingTimeout). It wraps errdefs.ErrTimeout.
var ErrTimeout = fmt.Errorf("oslo: messaging timeout: %w", errdefs.ErrTimeout)

// Target addresses a call or cast like an oslo Target.
type Target struct {
	Topic     string // e.g. "compute", "conductor"
	Server    string // host; routing key "<topic>.<server>"
	Namespace string // "" for none
	Version   string // the RPC version the message needs, e.g. "6.0"
	Fanout    bool   // cast to "<topic>_fanout"
}

// CallOptions tune one call or cast.
type CallOptions struct {
	Timeout        time.Duration   // overall; default the client's (60 s, rpc_response_timeout)
	MonitorTimeout time.Duration   // call_monitor_timeout sent as _timeout; 0 = null
	Context        json.RawMessage // the request context as a JSON object; sent as _context_* keys
}

// ClientOptions configure a Client.
type ClientOptions struct {
	URL       TransportURL
	TLS       TLSOptions    // [oslo_messaging_rabbit] ssl options; URL's query overrides them
	Transport Transport     // default: amqp091-go to URL
	Exchange  string        // default "nova"
	Timeout   time.Duration // default call timeout; default 60s
	// Heartbeat is heartbeat_timeout_threshold: a dead broker is noticed
	// within it; default 60s.
	Heartbeat time.Duration
	Queues    QueueOptions // the reply queue's x-expires and HA settings
	// OnResumed is called each time the client's publisher can reach the
	// broker again after losing it (work held back by the outage may go
	// now); nil for none. It must not block.
	OnResumed func()
	Observer  Observer // learns of lost and resumed sessions; nil for none
	Log       *logrus.Entry
}

// Client sends calls and casts. Its reply queue ("reply_<hex>", kept across
// reconnects) is consumed on a session of its own, declared before the
// first call; publishes go through another session with confirms. Each
// keeps itself connected, through any broker outage, until Close.
type Client struct {
	o      ClientOptions
	pub    *publisher
	replyQ string

	mu      sync.Mutex
	waiters map[string]chan replyEvent

	ready  chan struct{} // closed when the reply queue is first consumed
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type replyEvent struct {
	msg     replyMsg
	failure *Failure
}

// NewClient starts the client's sessions in the background and returns
// at once: it does not wait for the broker, so a process can start (and
// do what needs no RPC) while the broker is unreachable. Ready is closed
// once the reply queue is consumed; a call made before waits for that
// within its own timeout. ctx is not kept.
func NewClient(ctx context.Context, o ClientOptions) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("oslo client: %w", err)
	}
	if o.Exchange == "" {
		o.Exchange = "nova"
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = 60 * time.Second
	}
	if o.Queues.TransientTTL == 0 {
		o.Queues.TransientTTL = 1800 * time.Second
	}
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	o.Log = o.Log.WithField("component", "oslo-client")
	t, err := transportFor(o.Transport, o.URL, o.TLS, o.Heartbeat)
	if err != nil {
		return nil, fmt.Errorf("oslo client: %w", err)
	}
	c := &Client{o: o, pub: newPublisher(), replyQ: "reply_" + newID(),
		waiters: map[string]chan replyEvent{}, ready: make(chan struct{})}
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	obs := observer(o.Observer)
	pubLink := link{t: t, what: "publisher", log: o.Log, onResume: o.OnResumed, name: LinkClientPublisher, obs: obs}
	replyLink := link{t: t, what: "reply consumer", log: o.Log, name: LinkClientReplies, obs: obs}
	c.wg.Go(func() { c.stopped(pubLink.run(runCtx, c.pub.serve)) })
	c.wg.Go(func() { c.stopped(replyLink.run(runCtx, c.consumeReplies)) })
	return c, nil
}

func (c *Client) stopped(err error) {
	if err != nil {
		c.o.Log.WithError(err).Error("client stopped")
	}
}

// Ready is closed once the reply queue is consumed for the first time.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Close stops the client; pending calls fail.
func (c *Client) Close() error {
	c.cancel()
	c.wg.Wait()
	return nil
}

// consumeReplies is the reply consumer link's use.
func (c *Client) consumeReplies(ctx context.Context, s Session, up func()) error {
	args := map[string]any{"x-expires": int32(c.o.Queues.TransientTTL.Milliseconds())}
	if c.o.Queues.HA {
		args["x-ha-policy"] = "all"
	}
	if err := s.Declare(ctx, Declaration{Queue: c.replyQ, Args: args}); err != nil {
		return declareError(Declaration{Queue: c.replyQ}, err)
	}
	in, err := s.Consume(ctx, c.replyQ, ConsumeOptions{Tag: "1", AutoAck: true})
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.replyQ, err)
	}
	select {
	case <-c.ready:
	default:
		close(c.ready)
	}
	up()
	for {
		select {
		case d, ok := <-in:
			if !ok {
				return fmt.Errorf("%w: the reply consumer ended", ErrSessionClosed)
			}
			c.route(d)
		case <-s.Done():
			return s.Err()
		case <-ctx.Done():
			return nil
		}
	}
}

func (c *Client) route(d Delivery) {
	msg, f, err := decodeReply(d.Body)
	if err != nil {
		c.o.Log.WithError(err).Warn("undecodable reply dropped")
		return
	}
	c.mu.Lock()
	w := c.waiters[msg.MsgID]
	c.mu.Unlock()
	if w == nil {
		c.o.Log.WithField("msg_id", msg.MsgID).Info("no calling thread waiting for this reply; dropped")
		return
	}
	select {
	case w <- replyEvent{msg: msg, failure: f}:
	default: // the waiter has gone or is flooded with heartbeats: never block the consumer
	}
}

// request builds the inner message of a call or cast.
func (c *Client) request(t Target, method string, args any, o CallOptions, msgID string) (map[string]any, error) {
	m := map[string]any{"method": method, "args": args, "_unique_id": newID()}
	if args == nil {
		m["args"] = map[string]any{}
	}
	if t.Version != "" {
		m["version"] = t.Version
	}
	if t.Namespace != "" {
		m["namespace"] = t.Namespace
	}
	if len(o.Context) > 0 && !isNull(o.Context) {
		var ctxMap map[string]json.RawMessage
		if err := json.Unmarshal(o.Context, &ctxMap); err != nil {
			return nil, fmt.Errorf("%w: request context is not a JSON object: %w", errdefs.ErrInvalidArgument, err)
		}
		for k, v := range ctxMap {
			m[contextPrefix+k] = v
		}
	}
	if msgID != "" {
		m["_msg_id"] = msgID
		m["_reply_q"] = c.replyQ
		m["_timeout"] = nil
		if o.MonitorTimeout > 0 {
			m["_timeout"] = int(o.MonitorTimeout.Seconds())
		}
	}
	return m, nil
}

func (c *Client) address(t Target) (exchange, key string) {
	switch {
	case t.Fanout:
		return t.Topic + "_fanout", ""
	case t.Server != "":
		return c.o.Exchange, t.Topic + "." + t.Server
	}
	return c.o.Exchange, t.Topic
}

// Cast sends a message that gets no reply. It waits for the broker's
// confirm up to the timeout (CallOptions.Timeout, else the client's), and
// fails with errdefs.ErrUnavailable when the broker cannot be reached in
// that time.
func (c *Client) Cast(ctx context.Context, t Target, method string, args any, o CallOptions) error {
	m, err := c.request(t, method, args, o, "")
	if err != nil {
		return err
	}
	body, err := envelope(m)
	if err != nil {
		return fmt.Errorf("cast %s: %w: %w", method, errdefs.ErrInvalidArgument, err)
	}
	if o.Timeout == 0 {
		o.Timeout = c.o.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	ex, key := c.address(t)
	if err := c.pub.publish(ctx, Publishing{Exchange: ex, Key: key, Properties: osloProperties(0), Body: body}); err != nil {
		return fmt.Errorf("cast %s: %w", method, err)
	}
	return nil
}

// Call sends a request and waits for its reply: the result as raw JSON, a
// *Failure for a remote exception, or ErrTimeout. Call-monitor heartbeats
// (ending=false, no result) restart the MonitorTimeout clock.
func (c *Client) Call(ctx context.Context, t Target, method string, args any, o CallOptions) (json.RawMessage, error) {
	if t.Fanout {
		return nil, fmt.Errorf("call %s: %w: a call cannot fan out", method, errdefs.ErrInvalidArgument)
	}
	if o.Timeout == 0 {
		o.Timeout = c.o.Timeout
	}
	msgID := newID()
	m, err := c.request(t, method, args, o, msgID)
	if err != nil {
		return nil, err
	}
	body, err := envelope(m)
	if err != nil {
		return nil, fmt.Errorf("call %s: %w: %w", method, errdefs.ErrInvalidArgument, err)
	}
	w := make(chan replyEvent, 16)
	c.mu.Lock()
	c.waiters[msgID] = w
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, msgID)
		c.mu.Unlock()
	}()
	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()
	ex, key := c.address(t)
	pctx, pcancel := context.WithTimeout(ctx, o.Timeout)
	defer pcancel()
	select { // the reply queue must exist before the call goes out
	case <-c.ready:
	case <-pctx.Done():
		return nil, fmt.Errorf("call %s to %s: %w: %w: no reply queue within %s: %w", method, key, errdefs.ErrUnavailable,
			ErrTimeout, o.Timeout, context.Cause(pctx))
	}
	err = c.pub.publish(pctx, Publishing{Exchange: ex, Key: key, Properties: osloProperties(o.Timeout), Body: body})
	if errors.Is(err, errdefs.ErrUnavailable) && pctx.Err() != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("call %s to %s: %w: %w", method, key, ErrTimeout, err)
	}
	if err != nil {
		return nil, fmt.Errorf("call %s: %w", method, err)
	}
	var monitor <-chan time.Time
	var mt *time.Timer
	if o.MonitorTimeout > 0 {
		mt = time.NewTimer(o.MonitorTimeout)
		defer mt.Stop()
		monitor = mt.C
	}
	var result json.RawMessage
	for {
		select {
		case ev := <-w:
			if ev.failure != nil {
				return nil, ev.failure
			}
			if ev.msg.Result != nil && !isNull(ev.msg.Result) {
				result = ev.msg.Result // legacy two-message replies: keep the last result
			}
			if ev.msg.Ending {
				if result == nil {
					result = json.RawMessage("null")
				}
				return result, nil
			}
			if mt != nil {
				mt.Reset(o.MonitorTimeout)
			}
		case <-deadline.C:
			return nil, fmt.Errorf("call %s to %s: %w: no reply within %s", method, key, ErrTimeout, o.Timeout)
		case <-monitor:
			return nil, fmt.Errorf("call %s to %s: %w: no heartbeat within %s", method, key, ErrTimeout, o.MonitorTimeout)
		case <-ctx.Done():
			return nil, fmt.Errorf("call %s: %w", method, context.Cause(ctx))
		}
	}
}

// IsTimeout reports whether err is a call timeout.
func IsTimeout(err error) bool { return errors.Is(err, ErrTimeout) }
