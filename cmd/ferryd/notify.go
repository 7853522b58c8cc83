package main

import (
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/rpc/nova"
	"opendev.org/x/ferry/rpc/oslo"
)

// notifications is what companion mode sends of nova-compute's
// notifications around a live migration: nova.conf's
// [oslo_messaging_notifications] and [notifications] from the config, to
// the control exchange of the notification transport (the RPC one unless
// notifications.transport_url names another). nil when no driver sends
// (oslo's default). kick runs when the notifier reaches the broker again.
func notifications(cfg config.Config, rpc oslo.TransportURL, q oslo.QueueOptions, log *logrus.Entry, kick func()) (*nova.NotifyOptions, *oslo.Notifier, error) {
	n := cfg.Notifications
	o := &nova.NotifyOptions{Drivers: n.Driver, Topics: n.Topics, VersionedTopics: n.VersionedTopics, Format: n.Format,
		Payload: nova.PayloadOptions{ImageAPI: cfg.Glance.EndpointOverride, BDMsInNotifications: n.BDMsInNotifications}}
	if !o.Enabled() {
		return nil, nil, nil
	}
	u := rpc
	if n.TransportURL != "" {
		var err error
		if u, err = oslo.ParseTransportURL(n.TransportURL); err != nil {
			return nil, nil, err
		}
	}
	nt, err := oslo.NewNotifier(oslo.NotifierOptions{URL: u, TLS: cfg.Oslo.TLS(), Exchange: cfg.ControlExchange, Heartbeat: cfg.Oslo.Heartbeat.D(),
		Queues: q, OnResumed: kick, Log: log})
	if err != nil {
		return nil, nil, err
	}
	o.Notifier = nt
	log.WithFields(logrus.Fields{"drivers": n.Driver, "format": n.Format, "broker": u.String()}).Info("notifications: sent as nova-compute's source would")
	return o, nt, nil
}

// warnNativeNotifications: native mode is the lab's; it emits none.
func warnNativeNotifications(cfg config.Config, log *logrus.Entry) {
	if (&nova.NotifyOptions{Drivers: cfg.Notifications.Driver}).Enabled() {
		log.WithField("driver", cfg.Notifications.Driver).Warn("notifications are configured but native mode emits none; only companion mode sends nova-compute's live-migration notifications")
	}
}
