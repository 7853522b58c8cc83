package stack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
)

// API is the admin's view of the stack's REST APIs, through gophercloud's
// service clients (Keystone's catalog finds them). Requests and responses
// are plain JSON maps and structs: the tests read what the API says, not
// what a client library makes of it.
type API struct {
	Identity, Compute, Network, Image, Placement *gophercloud.ServiceClient
}

// Microversions the API asks for.
const (
	ComputeMicroversion   = "2.93" // Zed's newest
	PlacementMicroversion = "1.39" // Zed's newest
)

// Dial authenticates as the admin (or any user of the Default domain) and
// finds every service of the stack's catalog (gophercloud asks each
// endpoint for its versions, so the services must be up).
func Dial(ctx context.Context, authURL, user, password, project string) (*API, error) {
	a, err := dialIdentity(ctx, authURL, user, password, project)
	if err != nil {
		return nil, err
	}
	pc, eo := a.Identity.ProviderClient, gophercloud.EndpointOpts{Region: Region, Availability: gophercloud.AvailabilityPublic}
	var errs []error
	for _, c := range []struct {
		sc  **gophercloud.ServiceClient
		new func(*gophercloud.ProviderClient, gophercloud.EndpointOpts) (*gophercloud.ServiceClient, error)
	}{{&a.Compute, openstack.NewComputeV2}, {&a.Network, openstack.NewNetworkV2}, {&a.Image, openstack.NewImageV2}, {&a.Placement, openstack.NewPlacementV1}} {
		sc, err := c.new(pc, eo)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		*c.sc = sc
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("stack: the catalog at %s: %w", authURL, errors.Join(errs...))
	}
	a.Compute.Microversion = ComputeMicroversion
	a.Placement.Microversion = PlacementMicroversion
	return a, nil
}

// dialIdentity authenticates and reaches Keystone only (before the
// catalog is filled).
func dialIdentity(ctx context.Context, authURL, user, password, project string) (*API, error) {
	pc, err := openstack.NewClient(authURL)
	if err != nil {
		return nil, err
	}
	// Debian runs the APIs under uwsgi, which closes a connection after
	// each response (without saying so, for Keystone and nova-api): a
	// reused connection is reset under a POST, which Go does not retry.
	pc.HTTPClient = http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	if err := openstack.Authenticate(ctx, pc, gophercloud.AuthOptions{
		IdentityEndpoint: authURL, Username: user, Password: password, DomainName: "Default",
		AllowReauth: true,
		Scope:       &gophercloud.AuthScope{ProjectName: project, DomainName: "Default"},
	}); err != nil {
		return nil, fmt.Errorf("stack: authenticate %s at %s: %w", user, authURL, err)
	}
	eo := gophercloud.EndpointOpts{Region: Region, Availability: gophercloud.AvailabilityPublic}
	a := &API{}
	if a.Identity, err = openstack.NewIdentityV3(pc, eo); err != nil {
		return nil, err
	}
	return a, nil
}

// Do sends one request to a service: path is relative to the service's
// endpoint (as gophercloud's ServiceURL joins it), body is JSON-encoded when
// not nil, the response decoded into out when not nil. ok lists the
// accepted status codes (default 200–204).
func Do(ctx context.Context, sc *gophercloud.ServiceClient, method, path string, body, out any, ok ...int) error {
	if sc == nil {
		return fmt.Errorf("stack: %s %s: service not in the catalog", method, path)
	}
	if len(ok) == 0 {
		ok = []int{200, 201, 202, 204}
	}
	opts := &gophercloud.RequestOpts{JSONBody: body, JSONResponse: out, OkCodes: ok}
	if out == nil {
		opts.KeepResponseBody = false
	}
	_, err := sc.Request(ctx, method, sc.ServiceURL(path), opts)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}
