package openstack

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Auth is how ferryd reaches one OpenStack service: nova.conf's section for
// it ([placement], [neutron]).
type Auth struct {
	AuthType          string // "password" (Keystone) or "noauth" (a service without Keystone)
	AuthURL           string
	Username          string
	Password          string
	ProjectName       string
	UserDomainName    string
	ProjectDomainName string
	RegionName        string
	Interface         string // public, internal (default), admin
	EndpointOverride  string // the service's URL; required for noauth
}

// session is one service's client: it authenticates on first use and
// again after a failed authentication, so a Keystone outage at ferryd's
// start costs nothing but a retry.
type session struct {
	api     api
	auth    Auth
	timeout time.Duration
	log     *logrus.Entry
	mu      sync.Mutex
	client  *gophercloud.ServiceClient
}

// api is one service's API as the session reaches it.
type api struct {
	kind         string // the catalog's service type
	version      string // the resource path below the endpoint ("v2.0/" for Neutron)
	microversion string
	fromCatalog  func(*gophercloud.ProviderClient, gophercloud.EndpointOpts) (*gophercloud.ServiceClient, error)
}

func newSession(a api, auth Auth, timeout time.Duration, log *logrus.Entry) *session {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &session{api: a, auth: auth, timeout: timeout, log: log}
}

func (s *session) service(ctx context.Context) (*gophercloud.ServiceClient, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client != nil {
		return s.client, nil
	}
	kind := s.api.kind
	var sc *gophercloud.ServiceClient
	switch s.auth.AuthType {
	case "noauth":
		pc, err := gopenstack.NewClient(s.auth.EndpointOverride)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: %w", kind, errdefs.ErrInvalidArgument, err)
		}
		pc.HTTPClient = s.httpClient()
		pc.TokenID = "admin" // noauth2 grants admin to the token "admin"
		sc = &gophercloud.ServiceClient{ProviderClient: pc, Type: kind}
	default:
		ao := gophercloud.AuthOptions{IdentityEndpoint: s.auth.AuthURL, Username: s.auth.Username, Password: s.auth.Password,
			TenantName: s.auth.ProjectName, DomainName: s.auth.UserDomainName, AllowReauth: true,
			Scope: &gophercloud.AuthScope{ProjectName: s.auth.ProjectName, DomainName: s.auth.ProjectDomainName}}
		pc, err := gopenstack.NewClient(s.auth.AuthURL)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: %w", kind, errdefs.ErrInvalidArgument, err)
		}
		pc.HTTPClient = s.httpClient()
		if err := gopenstack.Authenticate(ctx, pc, ao); err != nil {
			return nil, fmt.Errorf("%s: keystone at %s: %w: %w", kind, s.auth.AuthURL, errdefs.ErrUnavailable, err)
		}
		eo := gophercloud.EndpointOpts{Region: s.auth.RegionName, Availability: availability(s.auth.Interface)}
		if sc, err = s.api.fromCatalog(pc, eo); err != nil {
			return nil, fmt.Errorf("%s: %w: %w", kind, errdefs.ErrNotFound, err)
		}
	}
	if s.auth.EndpointOverride != "" {
		sc.Endpoint = gophercloud.NormalizeURL(s.auth.EndpointOverride)
		sc.ResourceBase = sc.Endpoint + s.api.version
	}
	sc.Microversion = s.api.microversion
	s.client = sc
	return sc, nil
}

// httpClient opens a connection per request. Debian's services run under
// uwsgi, which closes each connection after its response without saying
// so: a reused connection can be gone by the time a write goes out on it,
// and Go resends only idempotent requests, not the PUT and POST that settle
// a migration (seen 1 in 20–60 calls against Debian's Placement).
func (s *session) httpClient() http.Client {
	return http.Client{Timeout: s.timeout, Transport: &http.Transport{DisableKeepAlives: true, Proxy: http.ProxyFromEnvironment}}
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
