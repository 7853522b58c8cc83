package openstack

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Neutron moves a migrating guest's ports with it, through the port
// binding API (the binding-extended extension): the conductor creates an
// inactive binding on the destination before the migration; the source
// activates it once the guest runs there (or at the switch to post-copy),
// which deactivates the source's binding and sets binding:host_id; a
// migration that does not happen deletes it. gophercloud has no calls for
// this API; they go through its service client.
type Neutron struct {
	s *session
}

// NewNeutron returns a client; it does not connect yet.
func NewNeutron(a Auth, timeout time.Duration, log *logrus.Entry) *Neutron {
	return &Neutron{s: newSession(api{kind: "network", version: "v2.0/", fromCatalog: gopenstack.NewNetworkV2}, a, timeout, log)}
}

// Binding is one port binding as Neutron shows it.
type Binding struct {
	Host    string         `json:"host"`
	Status  string         `json:"status"` // ACTIVE or INACTIVE
	VIFType string         `json:"vif_type"`
	Details map[string]any `json:"vif_details"`
}

// Binding reads port's binding on host; errdefs.ErrNotFound when there is
// none.
func (n *Neutron) Binding(ctx context.Context, port, host string) (Binding, error) {
	var b Binding
	err := n.do(ctx, "read", port, host, func(sc *gophercloud.ServiceClient) (err error) {
		b, err = n.binding(ctx, sc, port, host)
		return err
	})
	return b, err
}

// ActivateBinding activates port's binding on host. A binding that is
// active already counts as done: nova-compute's own libvirt event handler
// activates it too, at the switch to post-copy.
func (n *Neutron) ActivateBinding(ctx context.Context, port, host string) error {
	return n.do(ctx, "activate", port, host, func(sc *gophercloud.ServiceClient) error {
		b, err := n.binding(ctx, sc, port, host)
		if err != nil || b.Status == "ACTIVE" {
			return err
		}
		_, err = sc.Put(ctx, sc.ServiceURL("ports", port, "bindings", host, "activate"), nil, nil,
			&gophercloud.RequestOpts{OkCodes: []int{http.StatusOK}})
		if gophercloud.ResponseCodeIs(err, http.StatusConflict) {
			if b, rerr := n.binding(ctx, sc, port, host); rerr == nil && b.Status == "ACTIVE" {
				return nil // activated meanwhile by the other side
			}
		}
		return err
	})
}

// DeleteBinding deletes port's binding on host; one that is gone already
// counts as done. An active binding is never deleted: the guest's network
// is there.
func (n *Neutron) DeleteBinding(ctx context.Context, port, host string) error {
	return n.do(ctx, "delete", port, host, func(sc *gophercloud.ServiceClient) error {
		b, err := n.binding(ctx, sc, port, host)
		switch {
		case gophercloud.ResponseCodeIs(err, http.StatusNotFound):
			return nil
		case err != nil:
			return err
		case b.Status == "ACTIVE":
			return fmt.Errorf("%w: the binding on %s is the active one", errdefs.ErrFailedPrecondition, host)
		}
		_, err = sc.Delete(ctx, sc.ServiceURL("ports", port, "bindings", host), &gophercloud.RequestOpts{OkCodes: []int{http.StatusNoContent}})
		if gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return nil
		}
		return err
	})
}

func (n *Neutron) binding(ctx context.Context, sc *gophercloud.ServiceClient, port, host string) (Binding, error) {
	var out struct {
		Binding Binding `json:"binding"`
	}
	_, err := sc.Get(ctx, sc.ServiceURL("ports", port, "bindings", host), &out, &gophercloud.RequestOpts{OkCodes: []int{http.StatusOK}})
	return out.Binding, err
}

// do runs one binding call with the session's bound, classifying its
// error once.
func (n *Neutron) do(ctx context.Context, what, port, host string, f func(*gophercloud.ServiceClient) error) error {
	ctx, cancel := context.WithTimeout(ctx, 2*n.s.timeout)
	defer cancel()
	sc, err := n.s.service(ctx)
	if err != nil {
		return fmt.Errorf("neutron: %s the binding of port %s on %s: %w", what, port, host, err)
	}
	if err := f(sc); err != nil {
		n.s.log.WithError(err).WithFields(logrus.Fields{"port_id": port, "host": host}).Warnf("neutron: %s binding failed", what)
		return fmt.Errorf("neutron: %s the binding of port %s on %s: %w", what, port, host, classify(err))
	}
	return nil
}
