package main

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/pkg/metrics"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/openstack"
	"opendev.org/x/ferry/pkg/status"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/nova"
	"opendev.org/x/ferry/rpc/oslo"
)

// The metrics are the observer of the engine, the RPC plane and libvirt.
var (
	_ migration.Observer = (*metrics.Metrics)(nil)
	_ oslo.Observer      = (*metrics.Metrics)(nil)
	_ virt.Observer      = (*metrics.Metrics)(nil)
)

// newMetrics builds ferryd's metrics; the in-flight gauges read the engine
// and the destination endpoints, once wire has built them.
func newMetrics(engine *atomic.Pointer[migration.Manager], dest *atomic.Pointer[nova.Destination]) *metrics.Metrics {
	return metrics.New(metrics.Options{Methods: append(slices.Clone(nova.Native), "external_instance_event"),
		InFlight: map[string]func() int{
			"source": func() int {
				n := 0
				if e := engine.Load(); e != nil {
					for _, m := range e.List() {
						if !m.Phase.Terminal() {
							n++
						}
					}
				}
				return n
			},
			"destination": func() int {
				if d := dest.Load(); d != nil {
					return d.Inbound()
				}
				return 0
			},
		}})
}

// keystoneTimeout bounds a token's validation: a request waits on it.
const keystoneTimeout = 10 * time.Second

// statusServer binds the status API (nil when status.listen is off);
// config.Validate has refused a listen beyond loopback without TLS and
// Keystone.
func statusServer(cfg config.Config, engine *migration.Manager, plan status.Planner, m *metrics.Metrics, log *logrus.Entry) (*status.Server, error) {
	s := cfg.Status
	if !s.Enabled() {
		return nil, nil
	}
	o := status.Options{Listen: s.Listen, TLSCert: s.TLSCert, TLSKey: s.TLSKey, Engine: engine, Planner: plan, Metrics: m.Handler(),
		Log: log.WithField("component", "status")}
	if s.Keystone.AuthType != "" {
		o.Tokens = openstack.NewTokens(auth(s.Keystone), keystoneTimeout, log.WithField("component", "keystone"))
	}
	return status.New(o)
}
