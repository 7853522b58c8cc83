package openstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
)

// fakeGlance serves one image's record and data as Glance's v2 API does
// (the integration tests fetch from the stack's real Glance); size is what
// the record says.
func fakeGlance(t *testing.T, id string, size int, data string) string {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/images/"+id, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"id": %q, "status": "active", "size": %d, "disk_format": "raw", "container_format": "bare"}`, id, size)
	})
	mux.HandleFunc("GET /v2/images/"+id+"/file", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		io.WriteString(w, data)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestGlanceFetch(t *testing.T) {
	const id = "3b1d7c36-46a2-4a5e-8d4c-3b1e5a1d2f10"
	for _, tt := range []struct {
		name  string
		size  int
		data  string
		max   int64
		id    string
		want  string
		class error
	}{
		{name: "the image", size: 7, data: "vmlinuz", max: 100, want: "vmlinuz"},
		{name: "larger than the bound by its record", size: 7, data: "vmlinuz", max: 6, class: errdefs.ErrFailedPrecondition},
		{name: "larger than the bound by what arrives", size: 0, data: "vmlinuz", max: 6, class: errdefs.ErrFailedPrecondition},
		{name: "shorter than its record", size: 9, data: "vmlinuz", max: 100, class: errdefs.ErrUnavailable},
		{name: "unknown", id: "7c2e9f41-8a55-4b0e-9f3c-1d2e3f4a5b6c", size: 7, data: "vmlinuz", max: 100, class: errdefs.ErrNotFound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url := fakeGlance(t, id, tt.size, tt.data)
			g := NewGlance(Auth{AuthType: "noauth", EndpointOverride: url}, 5*time.Second, nil)
			want := id
			if tt.id != "" {
				want = tt.id
			}
			var b bytes.Buffer
			f, n, err := g.Fetch(context.Background(), want, &b, tt.max)
			if tt.class != nil {
				if !errors.Is(err, tt.class) {
					t.Errorf("err %v, want %v", err, tt.class)
				}
				return
			}
			if err != nil || b.String() != tt.want || n != int64(len(tt.want)) || f != "raw" {
				t.Errorf("got %q (%d, %s) %v, want %q raw", b.String(), n, f, err, tt.want)
			}
		})
	}
}
