package oslo

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Topic declares the queue and exchange as an oslo server with the same
// [oslo_messaging_rabbit] settings does: a broker refuses a redeclare
// whose flags or arguments differ (406).
func TestQueueOptionsTopic(t *testing.T) {
	for _, tc := range []struct {
		name string
		q    QueueOptions
		want Declaration
	}{
		{"defaults", QueueOptions{},
			Declaration{ExchangeKind: "topic", Args: map[string]any{}}},
		{"amqp_durable_queues", QueueOptions{Durable: true},
			Declaration{ExchangeKind: "topic", ExchangeDurable: true, Durable: true, Args: map[string]any{}}},
		{"amqp_auto_delete", QueueOptions{AutoDelete: true},
			Declaration{ExchangeKind: "topic", ExchangeAutoDelete: true, AutoDelete: true, Args: map[string]any{}}},
		{"rabbit_ha_queues", QueueOptions{HA: true},
			Declaration{ExchangeKind: "topic", Args: map[string]any{"x-ha-policy": "all"}}},
		{"rabbit_quorum_queue implies durable", QueueOptions{Quorum: true},
			Declaration{ExchangeKind: "topic", ExchangeDurable: true, Durable: true, Args: map[string]any{"x-queue-type": "quorum"}}},
		{"rabbit_quorum_delivery_limit", QueueOptions{Quorum: true, QuorumDeliveryLimit: 3},
			Declaration{ExchangeKind: "topic", ExchangeDurable: true, Durable: true,
				Args: map[string]any{"x-queue-type": "quorum", "x-delivery-limit": int32(3)}}},
		{"delivery limit without quorum", QueueOptions{QuorumDeliveryLimit: 3},
			Declaration{ExchangeKind: "topic", Args: map[string]any{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.want.Exchange, tc.want.Queue, tc.want.Key = "nova", "compute.h1", "compute.h1"
			if diff := cmp.Diff(tc.want, tc.q.Topic("nova", "compute.h1", "compute.h1")); diff != "" {
				t.Errorf("Topic (-want +got):\n%s", diff)
			}
		})
	}
}

// A 406 on a declare is the deployment's settings, not an outage: final,
// and it says which settings to compare; any other failure is retried.
func TestDeclareError(t *testing.T) {
	d := Declaration{Queue: "compute.h1"}
	err := declareError(d, &BrokerError{Code: 406, Reason: "PRECONDITION_FAILED - inequivalent arg 'durable'"})
	fe, ok := errors.AsType[fatalError](err)
	if !ok {
		t.Fatalf("406: %v is not final", err)
	}
	if err := fe.err; !errors.Is(err, ErrTopologyMismatch) || !errors.Is(err, errdefs.ErrFailedPrecondition) || brokerCode(err) != 406 ||
		!strings.Contains(err.Error(), "amqp_durable_queues") || !strings.HasPrefix(err.Error(), "declare compute.h1: ") {
		t.Errorf("406: %v", err)
	}
	for _, cause := range []error{&BrokerError{Code: 404, Reason: "NOT_FOUND"}, ErrSessionClosed} {
		err := declareError(d, cause)
		if _, ok := errors.AsType[fatalError](err); ok || !errors.Is(err, cause) || errors.Is(err, ErrTopologyMismatch) {
			t.Errorf("declareError(%v) = %v, want it retried", cause, err)
		}
	}
}
