package openstack

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
)

// fakePlacement answers GET/PUT /allocations/{c} and POST /allocations; the
// first writes fail with the given status and body. It tests the retry
// logic only; the integration tests run against a real Placement.
type fakePlacement struct {
	mu       sync.Mutex
	alloc    map[string]string // consumer → GET body
	failures []struct {
		code int
		body string
	}
	writes []string // bodies of accepted writes
	calls  []string
}

func (f *fakePlacement) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	if r.Header.Get("OpenStack-API-Version") != "placement 1.28" || r.Header.Get("X-Auth-Token") != "admin" {
		http.Error(w, "want microversion 1.28 and the noauth2 admin token", http.StatusBadRequest)
		return
	}
	if r.Method == http.MethodGet {
		b, ok := f.alloc[strings.TrimPrefix(r.URL.Path, "/allocations/")]
		if !ok {
			b = `{"allocations": {}}`
		}
		io.WriteString(w, b)
		return
	}
	if len(f.failures) > 0 {
		x := f.failures[0]
		f.failures = f.failures[1:]
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(x.code)
		io.WriteString(w, x.body)
		return
	}
	b, _ := io.ReadAll(r.Body)
	f.writes = append(f.writes, r.Method+" "+r.URL.Path+" "+string(b))
	w.WriteHeader(http.StatusNoContent)
}

const (
	migUUID     = "22222222-0000-4000-8000-000000000002"
	instUUID    = "11111111-0000-4000-8000-000000000001"
	conflict409 = `{"errors": [{"status": 409, "code": "placement.concurrent_update", "title": "Conflict", "detail": "consumer generation conflict"}]}`
)

func newFake(t *testing.T) (*fakePlacement, *Placement) {
	f := &fakePlacement{alloc: map[string]string{
		migUUID:  `{"allocations": {"rp-a": {"resources": {"VCPU": 1, "MEMORY_MB": 384}, "generation": 5}}, "project_id": "p", "user_id": "u", "consumer_generation": 1}`,
		instUUID: `{"allocations": {"rp-b": {"resources": {"VCPU": 1, "MEMORY_MB": 384}, "generation": 7}}, "project_id": "p", "user_id": "u", "consumer_generation": 3}`,
	}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, NewPlacement(Auth{AuthType: "noauth", EndpointOverride: srv.URL}, 0, nil)
}

func TestReleaseRetriesAConcurrentUpdate(t *testing.T) {
	f, p := newFake(t)
	f.failures = append(f.failures, struct {
		code int
		body string
	}{409, conflict409})
	if err := p.ReleaseMigration(context.Background(), migUUID); err != nil {
		t.Fatal(err)
	}
	if len(f.writes) != 1 {
		t.Fatalf("writes %v, want one after the retry", f.writes)
	}
	var body map[string]any
	_ = json.Unmarshal([]byte(strings.SplitN(f.writes[0], " ", 3)[2]), &body)
	if a, _ := body["allocations"].(map[string]any); len(a) != 0 || body["consumer_generation"] != float64(1) {
		t.Errorf("release wrote %v, want no allocations at consumer generation 1", body)
	}
	if got := strings.Join(f.calls, ","); got != "GET /allocations/"+migUUID+",PUT /allocations/"+migUUID+",GET /allocations/"+migUUID+",PUT /allocations/"+migUUID {
		t.Errorf("calls %s", got)
	}
}

func TestRevertMovesInOneWrite(t *testing.T) {
	f, p := newFake(t)
	if err := p.RevertMigration(context.Background(), migUUID, instUUID); err != nil {
		t.Fatal(err)
	}
	if len(f.writes) != 1 || !strings.HasPrefix(f.writes[0], "POST /allocations ") {
		t.Fatalf("writes %v, want one POST /allocations", f.writes)
	}
	var body map[string]map[string]any
	_ = json.Unmarshal([]byte(strings.SplitN(f.writes[0], " ", 3)[2]), &body)
	if a, _ := body[migUUID]["allocations"].(map[string]any); len(a) != 0 || body[migUUID]["consumer_generation"] != float64(1) {
		t.Errorf("migration entry %v", body[migUUID])
	}
	a, _ := body[instUUID]["allocations"].(map[string]any)
	if _, onA := a["rp-a"]; !onA || len(a) != 1 || body[instUUID]["consumer_generation"] != float64(3) {
		t.Errorf("instance entry %v, want the source's allocation only, at generation 3", body[instUUID])
	}
}

func TestNothingHeldIsAlreadySettled(t *testing.T) {
	f, p := newFake(t)
	delete(f.alloc, migUUID)
	if err := p.ReleaseMigration(context.Background(), migUUID); err != nil {
		t.Fatal(err)
	}
	if err := p.RevertMigration(context.Background(), migUUID, instUUID); err != nil {
		t.Fatal(err)
	}
	if len(f.writes) != 0 {
		t.Errorf("writes %v for a migration that holds nothing", f.writes)
	}
}

func TestErrorsAreClassified(t *testing.T) {
	for _, tt := range []struct {
		code int
		body string
		want error
		n    int // writes attempted
	}{
		{409, conflict409, errdefs.ErrConflict, 4}, // conflicts every time: gives up after 4
		{409, `{"errors": [{"status": 409, "code": "placement.undefined_code", "detail": "Unable to allocate inventory"}]}`, errdefs.ErrConflict, 1},
		{503, `unavailable`, errdefs.ErrUnavailable, 1},
	} {
		f, p := newFake(t)
		for i := 0; i < 4; i++ {
			f.failures = append(f.failures, struct {
				code int
				body string
			}{tt.code, tt.body})
		}
		err := p.RevertMigration(context.Background(), migUUID, instUUID)
		if !errors.Is(err, tt.want) {
			t.Errorf("%d %s: err %v, want %v", tt.code, tt.body, err, tt.want)
		}
		if n := 4 - len(f.failures); n != tt.n {
			t.Errorf("%d %s: %d writes, want %d", tt.code, tt.body, n, tt.n)
		}
	}
}

// closingServer speaks HTTP/1.1 as Placement under uwsgi does: it answers
// one request per connection without "Connection: close" and then drops the
// connection — after the client has already sent its next request on it.
func closingServer(t *testing.T) (url string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				body := `{"allocations": {"rp-1": {"resources": {"VCPU": 1}}}, "consumer_generation": 1, "project_id": "p", "user_id": "u"}`
				code := "200 OK"
				if req.Method != http.MethodGet {
					code, body = "204 No Content", ""
				}
				fmt.Fprintf(c, "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", code, len(body), body)
				// Wait for the client's next request on this connection, then
				// drop it unanswered.
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				br.Peek(1)
			}(c)
		}
	}()
	return "http://" + ln.Addr().String()
}

// A Placement that closes each connection after its response (uwsgi) never
// fails a write by closing the connection the write went out on.
func TestPlacementServerClosingConnections(t *testing.T) {
	p := NewPlacement(Auth{AuthType: "noauth", EndpointOverride: closingServer(t)}, 5*time.Second, nil)
	for i := 0; i < 20; i++ {
		if err := p.ReleaseMigration(context.Background(), "mig-1"); err != nil {
			t.Fatalf("release %d: %v", i, err)
		}
	}
}
