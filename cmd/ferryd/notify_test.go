package main

import (
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/rpc/oslo"
)

// The config's notifications section becomes the bookkeeping's options;
// without a driver that sends (oslo's default, or noop) there is no
// notifier at all. The notifier dials a closed loopback port: no broker is
// touched.
func TestNotificationsFromConfig(t *testing.T) {
	l := logrus.New()
	l.SetOutput(io.Discard)
	log := logrus.NewEntry(l)
	rpc, err := oslo.ParseTransportURL("rabbit://u:p@127.0.0.1:1/")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	for _, drivers := range [][]string{nil, {"noop"}} {
		cfg.Notifications.Driver = drivers
		if o, n, err := notifications(cfg, rpc, oslo.QueueOptions{}, log, nil); o != nil || n != nil || err != nil {
			t.Errorf("drivers %v: %v %v %v, want nothing", drivers, o, n, err)
		}
	}
	cfg.Notifications.Driver = []string{"messagingv2"}
	cfg.Notifications.Format = "both"
	cfg.Notifications.BDMsInNotifications = true
	cfg.Glance.EndpointOverride = "http://glance:9292"
	o, n, err := notifications(cfg, rpc, oslo.QueueOptions{}, log, nil)
	if err != nil || n == nil {
		t.Fatalf("notifications: %v, %v", n, err)
	}
	defer n.Close()
	got := []any{o.Drivers, o.Topics, o.VersionedTopics, o.Format, o.Payload.ImageAPI, o.Payload.BDMsInNotifications, o.Notifier == n}
	want := []any{[]string{"messagingv2"}, []string{"notifications"}, []string{"versioned_notifications"}, "both",
		"http://glance:9292", true, true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("options (-want +got):\n%s", diff)
	}
	cfg.Notifications.TransportURL = "not a url"
	if _, _, err := notifications(cfg, rpc, oslo.QueueOptions{}, log, nil); err == nil {
		t.Error("a bad notification transport_url was taken")
	}
}

// Native mode sends no notifications and says so at start when a driver
// is configured; with none it says nothing.
func TestNativeNotificationsWarning(t *testing.T) {
	l := logrus.New()
	l.SetOutput(io.Discard)
	hook := &countHook{}
	l.AddHook(hook)
	cfg := config.Default()
	warnNativeNotifications(cfg, logrus.NewEntry(l))
	cfg.Notifications.Driver = []string{"messagingv2"}
	warnNativeNotifications(cfg, logrus.NewEntry(l))
	if hook.warnings != 1 {
		t.Errorf("%d warnings, want one (for the configured driver)", hook.warnings)
	}
}

type countHook struct{ warnings int }

func (h *countHook) Levels() []logrus.Level { return []logrus.Level{logrus.WarnLevel} }

func (h *countHook) Fire(*logrus.Entry) error { h.warnings++; return nil }
