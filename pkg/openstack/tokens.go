package openstack

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"time"

	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Token is what Keystone says of a valid token.
type Token struct {
	UserID, UserName string
	ProjectID        string
	Roles            []string
	Expires          time.Time
}

// HasRole reports whether the token carries the role.
func (t Token) HasRole(role string) bool {
	for _, r := range t.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// Tokens validates Keystone tokens (GET /v3/auth/tokens with the token as
// X-Subject-Token) with the service's own credentials, as
// keystonemiddleware does. A valid token's answer is kept for a while
// (cacheFor, never past its expiry), keyed by the token's hash, so that a
// poller does not cost Keystone a request each time; a refused token is
// asked about again each time.
type Tokens struct {
	s     *session
	mu    sync.Mutex
	cache map[[32]byte]cached
	now   func() time.Time
}

type cached struct {
	t     Token
	until time.Time
}

const (
	cacheFor  = 2 * time.Minute
	cacheSize = 256
)

// NewTokens returns a validator; it does not connect yet.
func NewTokens(a Auth, timeout time.Duration, log *logrus.Entry) *Tokens {
	return &Tokens{s: newSession(api{kind: "identity", version: "v3/", fromCatalog: gopenstack.NewIdentityV3}, a, timeout, log),
		cache: map[[32]byte]cached{}, now: time.Now}
}

// Validate asks Keystone about token: an invalid or expired one is
// errdefs.ErrNotFound, an unreachable Keystone errdefs.ErrUnavailable. The
// token itself is never in an error.
func (v *Tokens) Validate(ctx context.Context, token string) (Token, error) {
	if token == "" {
		return Token{}, fmt.Errorf("keystone: %w: no token", errdefs.ErrNotFound)
	}
	key := sha256.Sum256([]byte(token))
	now := v.now()
	v.mu.Lock()
	c, ok := v.cache[key]
	v.mu.Unlock()
	if ok && now.Before(c.until) {
		return c.t, nil
	}
	ctx, cancel := context.WithTimeout(ctx, v.s.timeout)
	defer cancel()
	sc, err := v.s.service(ctx)
	if err != nil {
		return Token{}, fmt.Errorf("keystone: validate a token: %w", err)
	}
	res := tokens.Get(ctx, sc, token)
	tok, err := res.ExtractToken()
	if err != nil {
		return Token{}, fmt.Errorf("keystone: validate a token: %w", classify(err))
	}
	roles, _ := res.ExtractRoles()
	user, _ := res.ExtractUser()
	project, _ := res.ExtractProject()
	t := Token{Expires: tok.ExpiresAt}
	for _, r := range roles {
		t.Roles = append(t.Roles, r.Name)
	}
	if user != nil {
		t.UserID, t.UserName = user.ID, user.Name
	}
	if project != nil {
		t.ProjectID = project.ID
	}
	if !t.Expires.IsZero() && !now.Before(t.Expires) {
		return Token{}, fmt.Errorf("keystone: %w: the token expired at %s", errdefs.ErrNotFound, t.Expires.Format(time.RFC3339))
	}
	v.keep(key, t, now)
	return t, nil
}

func (v *Tokens) keep(key [32]byte, t Token, now time.Time) {
	until := now.Add(cacheFor)
	if !t.Expires.IsZero() && t.Expires.Before(until) {
		until = t.Expires
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.cache) >= cacheSize {
		for k, c := range v.cache {
			if !now.Before(c.until) {
				delete(v.cache, k)
			}
		}
		if len(v.cache) >= cacheSize {
			v.cache = map[[32]byte]cached{}
		}
	}
	v.cache[key] = cached{t: t, until: until}
}
