// Package openstack is ferry's REST side: the Placement calls a compute host
// makes at the end of a live migration. It is the only importer of
// gophercloud.
//
// The conductor moves the instance's source-host allocation to the
// migration's uuid before it casts live_migration, and claims the
// destination for the instance. The source compute then settles it, as
// nova-compute's _post_live_migration and _rollback_live_migration do:
// after a completed migration it deletes the allocation the migration holds
// (the source host is free); after a failed or cancelled one it moves that
// allocation back to the instance, replacing the destination claim.
package openstack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/placement/v1/allocations"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Auth is how ferryd reaches Placement: nova.conf's [placement] section.
type Auth struct {
	AuthType          string // "password" (Keystone) or "noauth" (a placement with auth_strategy = noauth2)
	AuthURL           string
	Username          string
	Password          string
	ProjectName       string
	UserDomainName    string
	ProjectDomainName string
	RegionName        string
	Interface         string // public, internal (default), admin
	EndpointOverride  string // the Placement URL; required for noauth
}

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
	auth    Auth
	timeout time.Duration
	mu      sync.Mutex
	client  *gophercloud.ServiceClient
}

// NewPlacement returns a client; it does not connect yet.
func NewPlacement(a Auth, timeout time.Duration) *Placement {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return &Placement{auth: a, timeout: timeout}
}

func (p *Placement) service(ctx context.Context) (*gophercloud.ServiceClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client != nil {
		return p.client, nil
	}
	var sc *gophercloud.ServiceClient
	switch p.auth.AuthType {
	case "noauth":
		pc, err := gopenstack.NewClient(p.auth.EndpointOverride)
		if err != nil {
			return nil, fmt.Errorf("placement: %w: %w", errdefs.ErrInvalidArgument, err)
		}
		pc.HTTPClient = http.Client{Timeout: p.timeout}
		pc.TokenID = "admin" // noauth2 grants admin to the token "admin"
		sc = &gophercloud.ServiceClient{ProviderClient: pc, Endpoint: gophercloud.NormalizeURL(p.auth.EndpointOverride), Type: "placement"}
	default:
		ao := gophercloud.AuthOptions{IdentityEndpoint: p.auth.AuthURL, Username: p.auth.Username, Password: p.auth.Password,
			TenantName: p.auth.ProjectName, DomainName: p.auth.UserDomainName, AllowReauth: true,
			Scope: &gophercloud.AuthScope{ProjectName: p.auth.ProjectName, DomainName: p.auth.ProjectDomainName}}
		pc, err := gopenstack.NewClient(p.auth.AuthURL)
		if err != nil {
			return nil, fmt.Errorf("placement: %w: %w", errdefs.ErrInvalidArgument, err)
		}
		pc.HTTPClient = http.Client{Timeout: p.timeout}
		if err := gopenstack.Authenticate(ctx, pc, ao); err != nil {
			return nil, fmt.Errorf("placement: keystone at %s: %w: %w", p.auth.AuthURL, errdefs.ErrUnavailable, err)
		}
		eo := gophercloud.EndpointOpts{Region: p.auth.RegionName, Availability: availability(p.auth.Interface)}
		if sc, err = gopenstack.NewPlacementV1(pc, eo); err != nil {
			return nil, fmt.Errorf("placement: %w: %w", errdefs.ErrNotFound, err)
		}
		if p.auth.EndpointOverride != "" {
			sc.Endpoint = gophercloud.NormalizeURL(p.auth.EndpointOverride)
		}
	}
	sc.Microversion = microversion
	p.client = sc
	return sc, nil
}

func availability(iface string) gophercloud.Availability {
	switch iface {
	case "public":
		return gophercloud.AvailabilityPublic
	case "admin":
		return gophercloud.AvailabilityAdmin
	}
	return gophercloud.AvailabilityInternal
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
	ctx, cancel := context.WithTimeout(ctx, 4*p.timeout)
	defer cancel()
	var err error
	for i := 0; i < writeAttempts; i++ {
		var sc *gophercloud.ServiceClient
		if sc, err = p.service(ctx); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		var again bool
		if again, err = f(sc); !again {
			break
		}
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
