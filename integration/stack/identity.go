package stack

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
)

// writeFernetKeys creates a key repository as `keystone-manage
// fernet_setup` does — key 0 staged, key 1 primary, each 32 random bytes
// in URL-safe base64 — without a Python start per repository.
func writeFernetKeys(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, name := range []string{"0", "1"} {
		var k [32]byte
		if _, err := rand.Read(k[:]); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(base64.URLEncoding.EncodeToString(k[:])), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// catalogEntry is one service of the catalog.
type catalogEntry struct {
	typ, name string
	port      int
	path      string
}

var catalog = []catalogEntry{
	{"image", "glance", PortGlance, ""},
	{"placement", "placement", PortPlacement, ""},
	{"compute", "nova", PortNova, "/v2.1"},
	{"network", "neutron", PortNeutron, ""},
}

// setupIdentity fills a freshly bootstrapped Keystone: the service project,
// the service role, one user per service (admin and service on the service
// project, as the install guides and keystonemiddleware's service-token
// check want), and the catalog's public and internal endpoints.
func (e env) setupIdentity(ctx context.Context, a *API) error {
	id := func(path string, body map[string]any, key string) (string, error) {
		var out map[string]map[string]any
		if err := Do(ctx, a.Identity, "POST", path, body, &out, 201); err != nil {
			return "", err
		}
		s, _ := out[key]["id"].(string)
		return s, nil
	}
	find := func(path, key, name string) (string, error) {
		var out map[string]any
		if err := Do(ctx, a.Identity, "GET", path+"?name="+name, nil, &out); err != nil {
			return "", err
		}
		list, _ := out[key].([]any)
		if len(list) != 1 {
			return "", fmt.Errorf("stack: keystone: %d %s named %s", len(list), key, name)
		}
		m, _ := list[0].(map[string]any)
		s, _ := m["id"].(string)
		return s, nil
	}
	project, err := id("projects", map[string]any{"project": map[string]any{"name": "service", "domain_id": "default"}}, "project")
	if err != nil {
		return err
	}
	admin, err := find("roles", "roles", "admin")
	if err != nil {
		return err
	}
	svcRole, err := id("roles", map[string]any{"role": map[string]any{"name": "service"}}, "role")
	if err != nil {
		return err
	}
	for _, u := range ServiceUsers {
		uid, err := id("users", map[string]any{"user": map[string]any{"name": u, "password": ServicePass, "domain_id": "default"}}, "user")
		if err != nil {
			return err
		}
		for _, r := range []string{admin, svcRole} {
			if err := Do(ctx, a.Identity, "PUT", fmt.Sprintf("projects/%s/users/%s/roles/%s", project, uid, r), nil, nil, 204); err != nil {
				return err
			}
		}
	}
	for _, c := range catalog {
		sid, err := id("services", map[string]any{"service": map[string]any{"type": c.typ, "name": c.name}}, "service")
		if err != nil {
			return err
		}
		for _, iface := range []string{"public", "internal"} {
			if _, err := id("endpoints", map[string]any{"endpoint": map[string]any{"service_id": sid, "interface": iface,
				"region_id": Region, "url": e.url(c.port, c.path)}}, "endpoint"); err != nil {
				return err
			}
		}
	}
	return nil
}
