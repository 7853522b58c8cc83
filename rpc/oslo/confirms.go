package oslo

import (
	"fmt"
	"sync"
)

// confirms ties the broker's publisher confirms and basic.returns to the
// publishes waiting for them, on one channel. A confirm names a publish by
// its delivery tag (the channel's publish sequence number); a return names
// nothing but carries the message's properties, so a mandatory publish is
// found by the message_id it was sent with. RabbitMQ sends a return before
// the ack of the same message (an unroutable message is confirmed too): the
// session reads both in wire order and reports every return that came
// before a confirm first.
type confirms struct {
	mu      sync.Mutex
	pending map[uint64]*pendingPublish // by delivery tag
	byID    map[string]*pendingPublish // mandatory ones, by message_id
	closed  error
}

type pendingPublish struct {
	msgID    string
	returned error
	done     chan error // buffered: receives the outcome once
}

func newConfirms() *confirms {
	return &confirms{pending: map[uint64]*pendingPublish{}, byID: map[string]*pendingPublish{}}
}

// add registers the publish about to be sent with delivery tag tag. msgID
// is its message_id when it is mandatory, else "".
func (c *confirms) add(tag uint64, msgID string) (<-chan error, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed != nil {
		return nil, c.closed
	}
	p := &pendingPublish{msgID: msgID, done: make(chan error, 1)}
	c.pending[tag] = p
	if msgID != "" {
		c.byID[msgID] = p
	}
	return p.done, nil
}

// forget drops a publish nobody waits for any more (not sent, or given up).
func (c *confirms) forget(tag uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.pending[tag]; ok {
		delete(c.pending, tag)
		delete(c.byID, p.msgID)
	}
}

// returned records a basic.return; a message_id nobody waits for is
// dropped.
func (c *confirms) returned(msgID string, code int, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.byID[msgID]; ok && msgID != "" {
		p.returned = fmt.Errorf("%w (%d %s)", ErrUnroutable, code, text)
	}
}

// confirmed settles the publish with delivery tag tag.
func (c *confirms) confirmed(tag uint64, ack bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.pending[tag]
	if !ok {
		return
	}
	delete(c.pending, tag)
	delete(c.byID, p.msgID)
	switch {
	case !ack:
		p.done <- ErrNacked
	default:
		p.done <- p.returned
	}
}

// fail settles every pending publish with err, and every later add.
func (c *confirms) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed == nil {
		c.closed = err
	}
	for tag, p := range c.pending {
		p.done <- err
		delete(c.pending, tag)
	}
	clear(c.byID)
}
