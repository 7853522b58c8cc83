package openstack

// The conductor moves the instance's source-host allocation to the
// migration's uuid before it casts live_migration, and claims the
// destination for the instance. The source compute then settles it, as
// nova-compute's _post_live_migration and _rollback_live_migration do:
// after a completed migration it deletes the allocation the migration holds
// (the source host is free); after a failed or cancelled one it moves that
// allocation back to the instance, replacing the destination claim.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/placement/v1/allocations"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// microversion: 1.28 carries consumer generations, which make every write
// safe against a concurrent writer (a 409 makes us read again and retry).
const microversion = "1.28"

// writeAttempts bounds one read-modify-write retried after generation
// conflicts.
const writeAttempts = 4

// Placement settles a live migration's allocations. It authenticates on
// first use and again whenever a call fails for want of a client, so a
// Keystone outage at ferryd's start costs nothing but a retry.
type Placement struct {
	s *session
}

// NewPlacement returns a client; it does not connect yet.
func NewPlacement(a Auth, timeout time.Duration, log *logrus.Entry) *Placement {
	return &Placement{s: newSession(api{kind: "placement", microversion: microversion, fromCatalog: gopenstack.NewPlacementV1}, a, timeout, log)}
}

// ReleaseMigration deletes the allocations a migration holds: the source
// host's share after a completed live migration. A migration holding
// nothing is already released.
func (p *Placement) ReleaseMigration(ctx context.Context, migration string) error {
	return p.retry(ctx, "release the allocations of migration "+migration, func(sc *gophercloud.ServiceClient) (bool, error) {
		cur, err := allocations.Get(ctx, sc, migration).Extract()
		if err != nil {
			return false, err
		}
		if len(cur.Allocations) == 0 {
			return false, nil
		}
		err = allocations.Update(ctx, sc, migration, allocations.UpdateOpts{Allocations: map[string]allocations.ProviderAllocationsOpts{},
			ProjectID: deref(cur.ProjectID), UserID: deref(cur.UserID), ConsumerGeneration: cur.ConsumerGeneration}).ExtractErr()
		return conflict(err), err
	})
}

// RevertMigration gives the instance back the allocations the migration
// holds (its source-host share), replacing the instance's own (the
// destination claim), in one atomic write: after a failed or cancelled live
// migration. A migration holding nothing has been reverted already.
func (p *Placement) RevertMigration(ctx context.Context, migration, instance string) error {
	return p.retry(ctx, "give the allocations of migration "+migration+" back to instance "+instance, func(sc *gophercloud.ServiceClient) (bool, error) {
		src, err := allocations.Get(ctx, sc, migration).Extract()
		if err != nil {
			return false, err
		}
		if len(src.Allocations) == 0 {
			return false, nil
		}
		dst, err := allocations.Get(ctx, sc, instance).Extract()
		if err != nil {
			return false, err
		}
		moved := map[string]allocations.ProviderAllocationsOpts{}
		for rp, a := range src.Allocations {
			moved[rp] = allocations.ProviderAllocationsOpts{Resources: a.Resources}
		}
		project, user := deref(dst.ProjectID), deref(dst.UserID)
		if project == "" {
			project, user = deref(src.ProjectID), deref(src.UserID)
		}
		err = allocations.Manage(ctx, sc, allocations.ManageOpts{
			migration: {Allocations: map[string]allocations.ProviderAllocationsOpts{}, ProjectID: deref(src.ProjectID),
				UserID: deref(src.UserID), ConsumerGeneration: src.ConsumerGeneration},
			instance: {Allocations: moved, ProjectID: project, UserID: user, ConsumerGeneration: dst.ConsumerGeneration},
		}).ExtractErr()
		return conflict(err), err
	})
}

// retry runs one read-modify-write until it succeeds, fails for a reason
// other than a concurrent writer, or has tried writeAttempts times.
func (p *Placement) retry(ctx context.Context, what string, f func(*gophercloud.ServiceClient) (again bool, err error)) error {
	ctx, cancel := context.WithTimeout(ctx, 4*p.s.timeout)
	defer cancel()
	var err error
	for i := 0; i < writeAttempts; i++ {
		var sc *gophercloud.ServiceClient
		if sc, err = p.s.service(ctx); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		var again bool
		if again, err = f(sc); !again {
			break
		}
		p.s.log.WithError(err).WithField("attempt", i+1).Warnf("placement: %s: a concurrent writer; reading again", what)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, classify(err))
	}
	return nil
}

// conflict tells a write refused for a stale consumer or provider
// generation, which a fresh read fixes.
func conflict(err error) bool {
	return gophercloud.ResponseCodeIs(err, http.StatusConflict) && strings.Contains(err.Error(), "concurrent")
}

func classify(err error) error {
	switch {
	case gophercloud.ResponseCodeIs(err, http.StatusConflict):
		return fmt.Errorf("%w: %w", errdefs.ErrConflict, err)
	case gophercloud.ResponseCodeIs(err, http.StatusNotFound):
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case gophercloud.ResponseCodeIs(err, http.StatusBadRequest):
		return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %w", errdefs.ErrTimeout, err)
	}
	return fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
