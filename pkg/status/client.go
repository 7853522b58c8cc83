package status

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Client reads ferryds' status APIs, as `ferry` does: the URL of each
// host's ferryd comes from its Locator, and every request carries the
// caller's Keystone token.
type Client struct {
	Locate Locator
	Token  func() string
	HTTP   *http.Client
}

// Locator finds a compute host's ferryd.
type Locator struct {
	// Hosts maps a compute host (Nova's name for it) to its ferryd's base
	// URL.
	Hosts map[string]string
	// Template is the URL of any other host, "{host}" replaced by its
	// name; "" reaches only Hosts.
	Template string
}

// URL is the base URL of host's ferryd, "" when none is configured.
func (l Locator) URL(host string) string {
	if u, ok := l.Hosts[host]; ok {
		return strings.TrimRight(u, "/")
	}
	if l.Template == "" || host == "" {
		return ""
	}
	return strings.TrimRight(strings.ReplaceAll(l.Template, "{host}", url.PathEscape(host)), "/")
}

// NewClient makes a client with a per-request timeout and TLS settings
// (nil: the system's roots).
func NewClient(l Locator, token func() string, tlsCfg *tls.Config, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 2}
	return &Client{Locate: l, Token: token, HTTP: &http.Client{Timeout: timeout, Transport: tr}}
}

// Migration reads one migration from host's ferryd by Nova's migration
// uuid. ErrNotFound: that ferryd does not hold it (it did not run it, or
// its journal was pruned); ErrUnavailable: no ferryd is configured for the
// host, or it did not answer.
func (c *Client) Migration(ctx context.Context, host, id string) (Migration, error) {
	var m Migration
	err := c.get(ctx, host, "/v1/migrations/"+url.PathEscape(id), &m)
	return m, err
}

// Migrations lists what host's ferryd holds.
func (c *Client) Migrations(ctx context.Context, host string) ([]Migration, error) {
	var l List
	if err := c.get(ctx, host, "/v1/migrations", &l); err != nil {
		return nil, err
	}
	return l.Migrations, nil
}

// Plan asks host's ferryd for the dry run of a live migration of instance
// to dest ("" leaves it to the planner), measuring the guest's dirty rate
// over sample (0: the server's default). ErrNotFound: the guest is not on
// that host; ErrInvalidArgument: the ferryd refused the query.
func (c *Client) Plan(ctx context.Context, host string, r PlanRequest) (Plan, error) {
	q := url.Values{"instance": {r.Instance}}
	if r.Dest != "" {
		q.Set("dest", r.Dest)
	}
	sample := r.Sample
	if sample > 0 {
		q.Set("sample", sample.String())
	}
	if r.BandwidthBps > 0 {
		q.Set("bandwidth_mibs", strconv.FormatUint(max(r.BandwidthBps>>20, 1), 10))
	}
	// The answer takes the sample's time and more: a client of its own
	// with the request timeout on top.
	hc := *c.HTTP
	if hc.Timeout > 0 {
		hc.Timeout += max(sample, DefaultSample) + 15*time.Second
	}
	var p Plan
	err := c.getWith(ctx, &hc, host, "/v1/plan?"+q.Encode(), &p)
	return p, err
}

func (c *Client) get(ctx context.Context, host, path string, out any) error {
	return c.getWith(ctx, c.HTTP, host, path, out)
}

func (c *Client) getWith(ctx context.Context, hc *http.Client, host, path string, out any) error {
	base := c.Locate.URL(host)
	if base == "" {
		return fmt.Errorf("ferryd on %s: %w: no status URL configured for it", host, errdefs.ErrUnavailable)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return fmt.Errorf("ferryd on %s: %w: %w", host, errdefs.ErrInvalidArgument, err)
	}
	if c.Token != nil {
		if tok := c.Token(); tok != "" {
			req.Header.Set("X-Auth-Token", tok)
		}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("ferryd on %s at %s: %w: %w", host, base, errdefs.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("ferryd on %s at %s: %w: %w", host, base, errdefs.ErrUnavailable, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("ferryd on %s: %w", host, errdefs.ErrNotFound)
	case resp.StatusCode == http.StatusBadRequest:
		return fmt.Errorf("ferryd on %s: %w: %s", host, errdefs.ErrInvalidArgument, errorText(body))
	case resp.StatusCode == http.StatusConflict:
		return fmt.Errorf("ferryd on %s: %w: %s", host, errdefs.ErrFailedPrecondition, errorText(body))
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("ferryd on %s at %s: %w: %s: %s", host, base, errdefs.ErrFailedPrecondition, resp.Status, firstLine(body))
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("ferryd on %s at %s: %w: %s: %s", host, base, errdefs.ErrUnavailable, resp.Status, firstLine(body))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("ferryd on %s at %s: %w: answer is not the status API's JSON: %w", host, base, errdefs.ErrUnavailable, err)
	}
	return nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// errorText is the message of an Error body, else its first line.
func errorText(b []byte) string {
	var e Error
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return firstLine([]byte(e.Error))
	}
	return firstLine(b)
}
