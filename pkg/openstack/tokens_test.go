package openstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
)

// fakeKeystone issues ferry's service token for its password and answers
// token validations (GET /v3/auth/tokens, X-Subject-Token) for the tokens
// it knows, each with its roles, only to a caller holding the service token.
type fakeKeystone struct {
	url       string
	gets      atomic.Int32
	roles     map[string][]string // subject token → role names
	expiresIn time.Duration
}

func newFakeKeystone(t *testing.T, roles map[string][]string) *fakeKeystone {
	k := &fakeKeystone{roles: roles, expiresIn: time.Hour}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v3/auth/tokens", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Auth struct {
				Identity struct {
					Password struct {
						User struct{ Name, Password string }
					}
				}
			}
		}
		json.NewDecoder(r.Body).Decode(&body)
		if u := body.Auth.Identity.Password.User; u.Name != "ferry" || u.Password != "s3cret" {
			http.Error(w, `{"error": {"code": 401}}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("X-Subject-Token", "service-token")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"token": {"expires_at": %q, "catalog": [{"type": "identity", "name": "keystone",
			"endpoints": [{"interface": "internal", "region": "RegionOne", "url": %q}]}]}}`,
			time.Now().Add(time.Hour).UTC().Format(time.RFC3339), k.url+"/v3")
	})
	mux.HandleFunc("GET /v3/auth/tokens", func(w http.ResponseWriter, r *http.Request) {
		k.gets.Add(1)
		if r.Header.Get("X-Auth-Token") != "service-token" {
			http.Error(w, `{"error": {"code": 401}}`, http.StatusUnauthorized)
			return
		}
		roles, ok := k.roles[r.Header.Get("X-Subject-Token")]
		if !ok {
			http.Error(w, `{"error": {"code": 404, "message": "Could not find token"}}`, http.StatusNotFound)
			return
		}
		var rs []string
		for _, n := range roles {
			rs = append(rs, fmt.Sprintf(`{"id": "id-%s", "name": %q}`, n, n))
		}
		w.Header().Set("X-Subject-Token", r.Header.Get("X-Subject-Token"))
		fmt.Fprintf(w, `{"token": {"expires_at": %q, "user": {"id": "u1", "name": "operator"}, "project": {"id": "p1", "name": "admin"},
			"roles": [%s]}}`, time.Now().Add(k.expiresIn).UTC().Format(time.RFC3339), strings.Join(rs, ","))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	k.url = srv.URL
	return k
}

func TestTokensValidate(t *testing.T) {
	k := newFakeKeystone(t, map[string][]string{"tok-admin": {"reader", "admin"}, "tok-member": {"member"}})
	v := NewTokens(Auth{AuthType: "password", AuthURL: k.url + "/v3", Username: "ferry", Password: "s3cret", ProjectName: "service",
		UserDomainName: "Default", ProjectDomainName: "Default"}, 5*time.Second, nil)
	ctx := context.Background()
	tok, err := v.Validate(ctx, "tok-admin")
	if err != nil {
		t.Fatal(err)
	}
	if !tok.HasRole("admin") || tok.UserName != "operator" || tok.ProjectID != "p1" || tok.Expires.IsZero() {
		t.Errorf("admin token = %+v", tok)
	}
	if tok, err := v.Validate(ctx, "tok-member"); err != nil || tok.HasRole("admin") {
		t.Errorf("member token = %+v, %v", tok, err)
	}
	_, err = v.Validate(ctx, "tok-forged")
	if !errors.Is(err, errdefs.ErrNotFound) || strings.Contains(err.Error(), "tok-forged") {
		t.Errorf("unknown token: %v, want ErrNotFound without the token", err)
	}
	if _, err := v.Validate(ctx, ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("no token: %v", err)
	}
	// A valid answer is kept; a refusal is asked again.
	before := k.gets.Load()
	v.Validate(ctx, "tok-admin")
	v.Validate(ctx, "tok-forged")
	if n := k.gets.Load() - before; n != 1 {
		t.Errorf("%d validations reached Keystone, want 1 (the admin token's answer is cached)", n)
	}
	// Once the cache lapses, Keystone is asked again.
	v.now = func() time.Time { return time.Now().Add(cacheFor + time.Second) }
	before = k.gets.Load()
	v.Validate(ctx, "tok-admin")
	if n := k.gets.Load() - before; n != 1 {
		t.Errorf("after the cache lapsed: %d validations, want 1", n)
	}
}

func TestTokensKeystoneDown(t *testing.T) {
	k := newFakeKeystone(t, nil)
	url := k.url
	v := NewTokens(Auth{AuthType: "password", AuthURL: url + "/v3", Username: "ferry", Password: "wrong", ProjectName: "service"}, 5*time.Second, nil)
	_, err := v.Validate(context.Background(), "tok")
	if !errors.Is(err, errdefs.ErrUnavailable) || strings.Contains(err.Error(), "wrong") {
		t.Errorf("service credentials refused: %v, want ErrUnavailable without the password", err)
	}
}
