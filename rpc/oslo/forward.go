package oslo

import (
	"errors"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"
)

// forwardPause is how long a returned message is held before it is
// requeued: a requeued message goes back to the head of the queue, and its
// only consumer is this server, so at once would spin.
const forwardPause = time.Second

// forward republishes a delivery unchanged to the Forward.To queue and
// settles the original by the outcome: ack once the broker confirmed the
// copy and did not return it (a confirm alone is not delivery: RabbitMQ
// confirms an unroutable message too), else requeue. One forwarder
// publishes one message at a time, so nova-compute sees them in the order
// ferry's queue held them.
//
// The copy keeps the body and every property but two: message_id is
// ferry's own (oslo sends none), by which a return is matched, and user_id
// is dropped (RabbitMQ refuses a user_id other than the publishing
// connection's user). Its expiration is what remains of the original's:
// the original's less the time ferry held it (how long it waited in
// ferry's queue before that is not known over AMQP 0-9-1); one whose time
// is up is dropped, as the broker would have.
func (s *Server) forward(j job) {
	defer s.work.Done()
	d := j.d
	log := s.o.Log.WithFields(logrus.Fields{"to": s.o.Forward.To, "routing_key": d.RoutingKey})
	select {
	case <-j.sess.Done():
		return // the broker redelivers it on the next session
	default:
	}
	// A copy of a message forwarded already is dropped (the cut-over's
	// bind-then-unbind window can put one message in both nova-compute's
	// queue and ferry's, and its backlog move then brings the first here
	// too). An id is remembered only once its copy went out, so a
	// requeued original (returned, not confirmed) is no duplicate.
	if j.id != "" && s.dedup.has(j.id) {
		log.WithField("unique_id", j.id).Warn("duplicate message (same _unique_id) forwarded already; dropped")
		s.o.Observer.Forwarded(ForwardDuplicate)
		_ = d.Ack()
		return
	}
	if j.tap != nil {
		start := time.Now()
		_, err := s.call(s.hctx, j.tap)
		s.o.Observer.RPC(j.tap.Method, false, time.Since(start), err)
		if err != nil {
			log.WithError(err).WithField("method", j.tap.Method).Warn("tapped message: the handler failed; forwarding it all the same")
		}
	}
	p := Publishing{Key: s.o.Forward.To, Mandatory: true, Properties: d.Properties, Body: d.Body}
	p.UserID = ""
	if d.Expiration != "" {
		if ms, err := strconv.ParseInt(d.Expiration, 10, 64); err == nil {
			left := ms - time.Since(j.at).Milliseconds()
			if left <= 0 {
				log.WithField("expiration", d.Expiration).Info("message expired while held; dropped, as the broker would")
				s.o.Observer.Forwarded(ForwardExpired)
				_ = d.Ack()
				return
			}
			p.Expiration = strconv.FormatInt(left, 10)
		}
	}
	err := s.pub.publish(s.hctx, p)
	switch {
	case err == nil:
		s.o.Observer.Forwarded(ForwardSent)
		s.dedup.first(j.id)
		if aerr := d.Ack(); aerr != nil {
			log.WithError(aerr).Warn("forwarded, but the original's ack failed: the broker redelivers it and the target gets it twice (oslo drops the copy by its _unique_id)")
		}
	case errors.Is(err, ErrUnroutable):
		s.o.Observer.Forwarded(ForwardReturned)
		log.WithError(err).Warnf("forward target missing: the broker returned the copy; requeueing the original in %s", forwardPause)
		s.work.Add(1)
		go s.requeueLater(d) // owner: Server (work)
	default:
		s.o.Observer.Forwarded(ForwardUnconfirmed)
		log.WithError(err).Warn("forward not confirmed; requeueing the original")
		_ = d.Nack(true)
	}
}

func (s *Server) requeueLater(d Delivery) {
	defer s.work.Done()
	t := time.NewTimer(forwardPause)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.hctx.Done():
	}
	_ = d.Nack(true)
}
