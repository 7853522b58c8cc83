package status

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/openstack"
	"opendev.org/x/ferry/pkg/virt"
)

// Engine is what the API reads: migration.Manager.
type Engine interface {
	List() []migration.Migration
	Status(id string) (migration.Migration, bool)
	// Progress is the monitor's latest sample of a running job.
	Progress(id string) (virt.JobStats, time.Time, bool)
}

// Tokens validates Keystone tokens: *openstack.Tokens.
type Tokens interface {
	Validate(ctx context.Context, token string) (openstack.Token, error)
}

// Options configure a Server.
type Options struct {
	Listen string // host:port
	// TLSCert and TLSKey are PEM files; both empty: plain HTTP (loopback).
	TLSCert, TLSKey string
	// Tokens, when set, is asked about every request's token; nil: no
	// token is needed (loopback only).
	Tokens Tokens
	Role   string // the role a token must hold; default admin
	Engine Engine
	// Planner answers GET /v1/plan; nil: 501.
	Planner Planner
	// Metrics serves /metrics; nil: not served.
	Metrics http.Handler
	Log     *logrus.Entry
}

// Server serves the API on its own listener.
type Server struct {
	o   Options
	ln  net.Listener
	srv *http.Server
}

// New binds the listener and loads the TLS key pair, so that either
// failing stops ferryd at start; nothing is served before Serve.
func New(o Options) (*Server, error) {
	if o.Engine == nil {
		return nil, fmt.Errorf("status: %w: no engine", errdefs.ErrInvalidArgument)
	}
	s := &Server{o: o.withDefaults()}
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	if o.TLSCert != "" || o.TLSKey != "" {
		kp, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("status: %w: TLS key pair %s, %s: %w", errdefs.ErrInvalidArgument, o.TLSCert, o.TLSKey, err)
		}
		s.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("status: listen on %s: %w", o.Listen, err)
	}
	s.ln = ln
	return s, nil
}

func (o Options) withDefaults() Options {
	if o.Role == "" {
		o.Role = "admin"
	}
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	return o
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until ctx ends, then lets the requests in flight finish
// (for at most five seconds) and returns; it closes the listener.
func (s *Server) Serve(ctx context.Context) error {
	// net/http's own complaints (TLS handshakes of scanners, bad
	// requests) go to ferryd's log at debug, not to stderr as bare text.
	w := s.o.Log.WriterLevel(logrus.DebugLevel)
	defer w.Close()
	s.srv.ErrorLog = log.New(w, "", 0)
	// Read before serving: net/http configures HTTP/2 on the server's
	// TLSConfig as it starts (a data race with a read after).
	tls := s.srv.TLSConfig != nil
	done := make(chan error, 1)
	go func() { // owner: Serve (waits below)
		if tls {
			done <- s.srv.ServeTLS(s.ln, "", "")
			return
		}
		done <- s.srv.Serve(s.ln)
	}()
	s.o.Log.WithFields(logrus.Fields{"listen": s.ln.Addr().String(), "tls": tls,
		"keystone": s.o.Tokens != nil}).Info("status API serving")
	select {
	case err := <-done:
		return fmt.Errorf("status: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

// Handler is the API, authentication included.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/migrations", s.list)
	mux.HandleFunc("GET /v1/migrations/{id}", s.one)
	mux.HandleFunc("GET /v1/plan", s.plan)
	if s.o.Metrics != nil {
		mux.Handle("GET /metrics", s.o.Metrics)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, "the status API is read-only")
			return
		}
		writeError(w, http.StatusNotFound, "not found")
	})
	return s.authenticated(mux)
}

// authenticated lets a request through when no token is needed, or when
// Keystone says its token is valid and holds the role.
func (s *Server) authenticated(next http.Handler) http.Handler {
	if s.o.Tokens == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := r.Header.Get("X-Auth-Token")
		if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); token == "" && ok {
			token = strings.TrimSpace(b)
		}
		if token == "" {
			writeError(w, http.StatusUnauthorized, "a Keystone token is required (X-Auth-Token)")
			return
		}
		t, err := s.o.Tokens.Validate(r.Context(), token)
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
			writeError(w, http.StatusUnauthorized, "the token is not valid")
			return
		case err != nil:
			s.o.Log.WithError(err).Warn("status API: token not validated")
			writeError(w, http.StatusServiceUnavailable, "Keystone cannot validate the token now")
			return
		case !t.HasRole(s.o.Role):
			writeError(w, http.StatusForbidden, "the token lacks the "+s.o.Role+" role")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	ms := s.o.Engine.List()
	out := List{Migrations: make([]Migration, 0, len(ms))}
	for _, m := range ms {
		out.Migrations = append(out.Migrations, s.wire(m))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) one(w http.ResponseWriter, r *http.Request) {
	m, ok := s.o.Engine.Status(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, "no such migration")
		return
	}
	writeJSON(w, http.StatusOK, s.wire(m))
}

// wire is m as the API shows it, with its job's latest sample while it runs.
func (s *Server) wire(m migration.Migration) Migration {
	out := Wire(m)
	if js, at, ok := s.o.Engine.Progress(m.ID); ok {
		out.Progress = progressOf(js, at)
	}
	return out
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Error is the body of every refusal.
type Error struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) { writeJSON(w, code, Error{Error: msg}) }
