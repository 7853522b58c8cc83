//go:build integration

// Package notify_test proves companion mode's notifications against the
// real peers: RabbitMQ, and an oslo.messaging notification listener
// (python3-oslo.messaging, Debian 12) as a consumer of Nova's
// notifications runs one. What ferry sends is built from the Instance that
// rpc/nova/testdata/notify/gen.py gave python3-nova, and what the listener
// decodes is compared with what Nova itself built for it.
package notify_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/integration/testlog"

	"opendev.org/x/ferry/integration/rabbit"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/rpc/nova"
	"opendev.org/x/ferry/rpc/oslo"
)

var (
	broker rabbit.Broker // guest: the listener's
	own    rabbit.Broker // this package's own user: the notifier's, whose connections the outage cuts
	vhost  string
)

func TestMain(m *testing.M) {
	ctx := context.Background()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := rabbit.EnsureRunning(ctx); err != nil {
		fail(err)
	}
	var err error
	if broker, err = rabbit.FromEnv(); err != nil {
		fail(err)
	}
	vhost = fmt.Sprintf("ferry-notify-%d", os.Getpid())
	drop, err := rabbit.NewVHost(ctx, broker, vhost)
	if err != nil {
		fail(err)
	}
	var dropUser func()
	own, dropUser, err = rabbit.NewUser(ctx, broker, vhost, fmt.Sprintf("ferry-notify-%d", os.Getpid()), "ferry-notify-pw")
	if err != nil {
		drop()
		fail(err)
	}
	code := m.Run()
	dropUser()
	drop()
	os.Exit(code)
}

func here() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Dir(self)
}

func testLog(t *testing.T) *logrus.Entry { return testlog.New(t, logrus.DebugLevel) }

// capture is Nova's output for the fixture instance (rpc/nova/testdata/notify).
type capture struct {
	Host     string                     `json:"host"`
	Glance   string                     `json:"glance"`
	Context  map[string]json.RawMessage `json:"context"`
	Instance *nova.Object               `json:"instance"`
	Notes    []noteOf                   `json:"notifications"`
}

// noteOf is one notification Nova sent.
type noteOf struct {
	Group   string         `json:"group"` // post, rollback, abort, force_complete
	Topics  string         `json:"topics"`
	Context map[string]any `json:"context"`
	Message struct {
		EventType   string `json:"event_type"`
		PublisherID string `json:"publisher_id"`
		Priority    string `json:"priority"`
		Payload     any    `json:"payload"`
	} `json:"message"`
}

func loadCapture(t *testing.T) capture {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(here(), "..", "..", "rpc", "nova", "testdata", "notify", "notifications.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c capture
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// received is one notification as the oslo listener handed it over.
type received struct {
	Priority    string         `json:"priority"`
	Ctxt        map[string]any `json:"ctxt"`
	PublisherID string         `json:"publisher_id"`
	EventType   string         `json:"event_type"`
	Payload     any            `json:"payload"`
	Metadata    struct {
		MessageID string `json:"message_id"`
		Timestamp string `json:"timestamp"`
	} `json:"metadata"`
}

// listener runs py/listener.py until the test ends.
type listener struct {
	in  chan received
	log *logrus.Entry
}

func startListener(t *testing.T, topics ...string) *listener {
	t.Helper()
	args := append([]string{filepath.Join(here(), "py", "listener.py"), broker.URL(vhost), "nova"}, topics...)
	cmd := exec.Command("/usr/bin/python3", args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = testlog.Writer(t)
	if err := cmd.Start(); err != nil {
		t.Fatalf("/usr/bin/python3 listener.py: %v", err)
	}
	l := &listener{in: make(chan received, 256), log: testLog(t)}
	ready := make(chan struct{})
	go func() { // owner: the test (the process ends at cleanup, which ends this)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			if strings.Contains(sc.Text(), `"ready": true`) {
				close(ready)
				continue
			}
			var r received
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				l.log.WithError(err).Errorf("listener printed %q", sc.Text())
				continue
			}
			l.in <- r
		}
		close(l.in)
	}()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("the oslo listener did not start within 30s")
	}
	return l
}

func (l *listener) next(t *testing.T, within time.Duration) (received, bool) {
	t.Helper()
	select {
	case r, ok := <-l.in:
		return r, ok
	case <-time.After(within):
		return received{}, false
	}
}

// quiet reports whether nothing more arrives within d.
func (l *listener) quiet(d time.Duration) bool {
	select {
	case r := <-l.in:
		l.log.WithField("event_type", r.EventType).Error("unexpected notification")
		return false
	case <-time.After(d):
		return true
	}
}

func notifier(t *testing.T, b rabbit.Broker, onResumed func()) *oslo.Notifier {
	t.Helper()
	u, err := oslo.ParseTransportURL(b.URL(vhost))
	if err != nil {
		t.Fatal(err)
	}
	n, err := oslo.NewNotifier(oslo.NotifierOptions{URL: u, Heartbeat: 10 * time.Second, OnResumed: onResumed, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// migrationOf is a journalled migration of the fixture's instance.
func migrationOf(t *testing.T, c capture, id string) migration.Migration {
	t.Helper()
	mig := nova.NewObject("Migration", "1.7")
	mig.Data["uuid"] = json.RawMessage(`"` + id + `"`)
	st, err := json.Marshal(nova.State{Instance: c.Instance, Migration: mig, Context: nova.Context(c.Context), NovaID: 12})
	if err != nil {
		t.Fatal(err)
	}
	uuid, _ := nova.UUID(c.Instance, "uuid")
	return migration.Migration{Request: migration.Request{ID: id, InstanceUUID: uuid, State: st}}
}

// noteReports are the notification reports of a completed migration, an
// operator's abort and the rollback that follows, in that order.
func noteReports(b *nova.Bookkeeper, m migration.Migration) []string {
	var out []string
	names := b.Reports(m, migration.PhaseRunning, migration.PhaseCompleted)
	names = append(names, b.CommandReports(m, "abort")...)
	names = append(names, b.Reports(m, migration.PhaseRunning, migration.PhaseCancelled)...)
	for _, n := range names {
		if strings.HasPrefix(n, "notify-") {
			out = append(out, n)
		}
	}
	return out
}

// inOrder is Nova's notifications of the groups named, in that order.
func inOrder(c capture, groups ...string) []noteOf {
	var out []noteOf
	for _, g := range groups {
		for _, n := range c.Notes {
			if n.Group == g {
				out = append(out, n)
			}
		}
	}
	return out
}

var pyTimestamp = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?$`)

// For both drivers and every format, what ferry's Notifier sends reaches
// an oslo notification listener on Nova's exchange and topics, decoded by
// oslo itself into what Nova's own code builds: event type, publisher,
// priority, the whole payload, and the context's keys and values (but its
// timestamp, the moment of sending).
func TestNotificationsReachOslo(t *testing.T) {
	c := loadCapture(t)
	l := startListener(t, "notifications", "versioned_notifications")
	n := notifier(t, broker, nil)
	defer n.Close()
	run := 0
	for _, driver := range []string{"messagingv2", "messaging"} {
		for _, format := range []string{"unversioned", "versioned", "both"} {
			run++ // each run a migration of its own: the same one's notifications carry the same ids, which oslo drops
			id := fmt.Sprintf("5f3c2a10-7e4b-4d8e-a1c2-33445566aa%02d", run)
			t.Run(driver+"/"+format, func(t *testing.T) {
				b := nova.NewBookkeeper(nova.BookOptions{Host: c.Host, Companion: true, Notify: &nova.NotifyOptions{Notifier: n,
					Drivers: []string{driver}, Topics: []string{"notifications"}, VersionedTopics: []string{"versioned_notifications"},
					Format: format, Payload: nova.PayloadOptions{ImageAPI: c.Glance}}, Log: testLog(t)}, nil, nova.Computes{}, nil, nil)
				m := migrationOf(t, c, id)
				for i, name := range noteReports(b, m) {
					r := migration.Report{Seq: i + 1, Name: name, Owed: time.Now()}
					if err := b.Deliver(t.Context(), m, r); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
				}
				for _, want := range inOrder(c, "post", "abort", "rollback") {
					if format == "unversioned" && want.Topics == "versioned" || format == "versioned" && want.Topics == "legacy" {
						continue
					}
					got, ok := l.next(t, 20*time.Second)
					if !ok {
						t.Fatalf("no %s within 20s", want.Message.EventType)
					}
					if got.EventType != want.Message.EventType || got.PublisherID != want.Message.PublisherID ||
						got.Priority != strings.ToLower(want.Message.Priority) {
						t.Fatalf("got %s from %s at %s, want %s from %s at %s", got.EventType, got.PublisherID, got.Priority,
							want.Message.EventType, want.Message.PublisherID, want.Message.Priority)
					}
					if diff := cmp.Diff(want.Message.Payload, got.Payload); diff != "" {
						t.Errorf("%s payload (-nova +oslo's decoding of ferry's):\n%s", got.EventType, diff)
					}
					for k, v := range want.Context {
						if k != "timestamp" && !cmp.Equal(v, got.Ctxt[k]) {
							t.Errorf("%s context %s = %v, want %v", got.EventType, k, got.Ctxt[k], v)
						}
					}
					if !pyTimestamp.MatchString(got.Metadata.Timestamp) || got.Metadata.MessageID == "" {
						t.Errorf("%s metadata %+v: want a message_id and Python's timestamp", got.EventType, got.Metadata)
					}
				}
				if !l.quiet(500 * time.Millisecond) {
					t.Error("more notifications than Nova sends")
				}
			})
		}
	}
}

// The rights docs/companion.md names are enough for the notifier: on its
// virtual host, configure on the control exchange and <topic>.info (oslo
// declares both), write on both (the publish, the binding) and read on the
// exchange (the binding).
func TestNotifierPermissions(t *testing.T) {
	ctx := context.Background()
	user := fmt.Sprintf("ferry-notify-min-%d", os.Getpid())
	b, drop, err := rabbit.NewUser(ctx, broker, vhost, user, "ferry-notify-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer drop()
	if _, err := rabbit.Ctl(ctx, "-q", "set_permissions", "-p", vhost, user,
		`^(nova|notifications\.info)$`, `^(nova|notifications\.info)$`, `^nova$`); err != nil {
		t.Fatal(err)
	}
	l := startListener(t, "notifications")
	n := notifier(t, b, nil)
	defer n.Close()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = n.Notify(sctx, "notifications", true, oslo.Notification{MessageID: "0b1e7c1a-6f0e-4c33-9a55-6c8e3f1d2a10",
		PublisherID: "compute.src1", EventType: "compute.instance.live_migration._post.start", Priority: "INFO",
		Payload: json.RawMessage(`{"instance_id": "i"}`), Timestamp: time.Now()})
	if err != nil {
		t.Fatalf("Notify with the documented rights: %v", err)
	}
	if r, ok := l.next(t, 20*time.Second); !ok || r.EventType != "compute.instance.live_migration._post.start" {
		t.Errorf("the listener got %+v (%v)", r, ok)
	}
}
