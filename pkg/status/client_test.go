package status

import (
	"context"
	"errors"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
)

func TestLocator(t *testing.T) {
	l := Locator{Hosts: map[string]string{"lab-a": "https://198.18.0.11:9779/"}, Template: "https://{host}.ferry.example:9779"}
	for host, want := range map[string]string{
		"lab-a":     "https://198.18.0.11:9779",
		"compute-7": "https://compute-7.ferry.example:9779",
		"a/b":       "https://a%2Fb.ferry.example:9779",
		"":          "",
	} {
		if got := l.URL(host); got != want {
			t.Errorf("%q: %q, want %q", host, got, want)
		}
	}
	if got := (Locator{}).URL("lab-a"); got != "" {
		t.Errorf("no configuration: %q", got)
	}
}

// The client against the real handler: the caller's token is sent, one
// migration and the list are read, and each failure has its class.
func TestClient(t *testing.T) {
	srv := newTestServer(t, Options{Tokens: fakeTokens{"tok-admin": {"admin"}, "tok-member": {"member"}}})
	ctx := context.Background()
	token := "tok-admin"
	c := NewClient(Locator{Hosts: map[string]string{"lab-a": srv.URL}}, func() string { return token }, nil, 5*time.Second)
	m, err := c.Migration(ctx, "lab-a", id1)
	if err != nil || m.ID != id1 || m.Phase != "completed" || m.Record.TotalSeconds != 42 {
		t.Fatalf("one: %+v %v", m, err)
	}
	ms, err := c.Migrations(ctx, "lab-a")
	if err != nil || len(ms) != 2 {
		t.Fatalf("list: %+v %v", ms, err)
	}
	if _, err := c.Migration(ctx, "lab-a", "5b2f0000-0000-4000-8000-0000000000ff"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("an unknown id: %v", err)
	}
	if _, err := c.Migrations(ctx, "lab-b"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("a host without a URL: %v", err)
	}
	token = "tok-member"
	if _, err := c.Migrations(ctx, "lab-a"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("a token without the role: %v", err)
	}
	srv.Close()
	token = "tok-admin"
	if _, err := c.Migrations(ctx, "lab-a"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("a ferryd that is down: %v", err)
	}
}
