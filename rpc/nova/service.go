package nova

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/rpc/oslo"
)

// serviceVersions is the object version manifest nova-compute (Zed) sends
// with Service class methods.
var serviceVersions = map[string]string{"Service": "1.22", "ComputeNode": "1.19", "HVSpec": "1.2",
	"PciDevicePoolList": "1.1", "PciDevicePool": "1.1"}

// Heartbeat keeps this host's nova-compute Service record alive in native
// mode, where ferryd is the host's only compute service: every
// report_interval it saves the Service with its report_count one higher,
// as nova-compute's servicegroup does, so that the conductor stamps
// last_seen_up and the scheduler does not drop the host after
// service_down_time. The record itself is nova-compute's: the host must
// have been registered by a stock nova-compute once.
type Heartbeat struct {
	Host     string
	Cond     *Conductor
	Interval time.Duration // report_interval; default 10s
	Log      *logrus.Entry
}

// Run reports until ctx ends; the first report goes after 5 s, as Nova's.
func (h *Heartbeat) Run(ctx context.Context) {
	every := h.Interval
	if every <= 0 {
		every = 10 * time.Second
	}
	log := h.Log
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	var svc *Object
	failing := false
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(every)
		var err error
		if svc == nil {
			svc, err = h.service(ctx)
		}
		if err == nil {
			err = h.report(ctx, svc)
		}
		switch {
		case err != nil && !failing:
			failing = true
			log.WithError(err).Warn("service heartbeat failed; the host shows down in Nova after service_down_time unless it comes back")
		case err != nil:
			log.WithError(err).Debug("service heartbeat failed again")
		case failing:
			failing = false
			log.Info("service heartbeat reaches the conductor again")
		}
		if err != nil && isNotFound(err) {
			svc = nil
		}
	}
}

func isNotFound(err error) bool {
	f, ok := errors.AsType[*oslo.Failure](err)
	return ok && f.Class == "ServiceNotFound"
}

// service is Service.get_by_host_and_binary(host, "nova-compute").
func (h *Heartbeat) service(ctx context.Context) (*Object, error) {
	res, err := h.Cond.ClassAction(ctx, AdminContext(), "Service", "get_by_host_and_binary", serviceVersions,
		[]any{h.Host, "nova-compute"}, nil)
	if err != nil {
		return nil, fmt.Errorf("this host's nova-compute Service: %w", err)
	}
	o := &Object{}
	if err := o.UnmarshalJSON(res); err != nil {
		return nil, fmt.Errorf("this host's nova-compute Service: %w", err)
	}
	return o, nil
}

// report saves the Service with report_count + 1.
func (h *Heartbeat) report(ctx context.Context, svc *Object) error {
	n, _, err := Opt[int64](svc, "report_count")
	if err != nil {
		return err
	}
	svc.Changes = nil
	if err := svc.Set("report_count", n+1); err != nil {
		return err
	}
	return h.Cond.Save(ctx, AdminContext(), svc, nil)
}
