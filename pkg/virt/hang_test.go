package virt

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
)

// fakeDaemon is a libvirtd that speaks just enough of the remote protocol
// for a connection (auth list, open, close, lib version) and can be made to
// stop answering, as a SIGSTOPped daemon does: it reads nothing more and
// replies to nothing, while the socket stays open.
type fakeDaemon struct {
	ln     net.Listener
	mu     sync.Mutex
	hung   bool
	wake   chan struct{} // closed by resume
	conns  []net.Conn
	closed chan struct{}
}

// Procedures of libvirt's remote program.
const (
	procConnectOpen       = 1
	procConnectClose      = 2
	procAuthList          = 66
	procConnectGetVersion = 4
	procConnectGetLibVer  = 157
	remoteProgram         = 0x20008086
)

func newFakeDaemon(t *testing.T) *fakeDaemon {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "libvirt-sock"))
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDaemon{ln: ln, wake: make(chan struct{}), closed: make(chan struct{})}
	go d.serve()
	t.Cleanup(d.close)
	return d
}

func (d *fakeDaemon) uri() string {
	return "qemu+unix:///system?socket=" + d.ln.Addr().String()
}

// hang stops the daemon; resume lets it go on.
func (d *fakeDaemon) hang() {
	d.mu.Lock()
	d.hung = true
	d.wake = make(chan struct{})
	d.mu.Unlock()
}

func (d *fakeDaemon) resume() {
	d.mu.Lock()
	if d.hung {
		d.hung = false
		close(d.wake)
	}
	d.mu.Unlock()
}

func (d *fakeDaemon) close() {
	d.resume()
	d.ln.Close()
	d.mu.Lock()
	for _, c := range d.conns {
		c.Close()
	}
	d.mu.Unlock()
	<-d.closed
}

func (d *fakeDaemon) serve() {
	var wg sync.WaitGroup
	defer func() { wg.Wait(); close(d.closed) }()
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		d.mu.Lock()
		d.conns = append(d.conns, c)
		d.mu.Unlock()
		wg.Add(1)
		go func() { defer wg.Done(); d.handle(c) }()
	}
}

// pause blocks while the daemon is hung.
func (d *fakeDaemon) pause() {
	d.mu.Lock()
	hung, wake := d.hung, d.wake
	d.mu.Unlock()
	if hung {
		<-wake
	}
}

func (d *fakeDaemon) handle(c net.Conn) {
	defer c.Close()
	for {
		d.pause()
		hdr := make([]byte, 28)
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[0:4])
		if _, err := io.CopyN(io.Discard, c, int64(n)-28); err != nil {
			return
		}
		proc, serial := binary.BigEndian.Uint32(hdr[12:16]), binary.BigEndian.Uint32(hdr[20:24])
		var payload []byte
		switch proc {
		case procAuthList:
			payload = []byte{0, 0, 0, 1, 0, 0, 0, 0} // one entry: no auth
		case procConnectGetVersion, procConnectGetLibVer:
			payload = []byte{0, 0, 0, 0, 0, 0x89, 0x54, 0x40} // 9000000
		case procConnectOpen, procConnectClose:
		default:
			continue // never asked in these tests
		}
		d.pause() // a daemon stopped while the call was in flight answers nothing
		reply := make([]byte, 28, 28+len(payload))
		binary.BigEndian.PutUint32(reply[0:4], uint32(28+len(payload)))
		binary.BigEndian.PutUint32(reply[4:8], remoteProgram)
		binary.BigEndian.PutUint32(reply[8:12], 1)
		binary.BigEndian.PutUint32(reply[12:16], proc)
		binary.BigEndian.PutUint32(reply[16:20], 1) // reply
		binary.BigEndian.PutUint32(reply[20:24], serial)
		if _, err := c.Write(append(reply, payload...)); err != nil {
			return
		}
	}
}

// within fails the test when f has not returned after d: the property is
// that it returns at all (it hung for ever before), so d is generous.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
	}
}

var short = Timeouts{Dial: 2 * time.Second, Query: 300 * time.Millisecond, Control: time.Second, Watchdog: 100 * time.Millisecond}

func TestHungDaemonCallFailsAndCloseReturns(t *testing.T) {
	d := newFakeDaemon(t)
	c, err := Dial(context.Background(), d.uri(), short)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Version(context.Background()); err != nil {
		t.Fatalf("a live daemon: %v", err)
	}
	d.hang()
	// A call in flight when the daemon stops: its own deadline, then the
	// watchdog's verdict; Close must not wait on the daemon either.
	within(t, 10*time.Second, "a call to a hung daemon", func() {
		if _, err := do(c, context.Background(), c.timeouts.Query, "lib-version", "lib version", c.l.ConnectGetLibVersion); err == nil {
			t.Error("a call to a hung daemon succeeded")
		} else if !errors.Is(err, errdefs.ErrTimeout) && !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("call to a hung daemon: %v, want a timeout or unavailable", err)
		}
	})
	within(t, 10*time.Second, "the watchdog's verdict", func() { <-c.Disconnected() })
	within(t, 10*time.Second, "Close on a hung daemon", func() { c.Close() })
}

func TestCloseHungDaemonBeforeWatchdog(t *testing.T) {
	d := newFakeDaemon(t)
	slow := short
	slow.Watchdog = time.Hour // Close, not the watchdog, must cut the socket
	c, err := Dial(context.Background(), d.uri(), slow)
	if err != nil {
		t.Fatal(err)
	}
	d.hang()
	within(t, 10*time.Second, "Close on a hung daemon", func() { c.Close() })
	select {
	case <-c.Disconnected():
	default:
		t.Error("Close returned with the socket still open")
	}
}

func TestDialToHungDaemonLeavesNoConnection(t *testing.T) {
	d := newFakeDaemon(t)
	d.hang()
	within(t, 10*time.Second, "a dial to a hung daemon", func() {
		if _, err := Dial(context.Background(), d.uri(), short); !errors.Is(err, errdefs.ErrTimeout) {
			t.Errorf("dial to a hung daemon: %v, want a timeout", err)
		}
	})
	// The handshake the timeout abandoned must not complete later into a
	// connection nobody closes: once the daemon answers again, the socket the
	// dial opened is gone.
	d.mu.Lock()
	conns := append([]net.Conn(nil), d.conns...)
	d.mu.Unlock()
	for _, c := range conns {
		// What the client sent before the daemon hung is still buffered;
		// after it, the socket must read as closed.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.Copy(io.Discard, c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Error("the abandoned dial's socket is still open after 5s")
		}
	}
	d.resume()
}

// countingObserver counts what a Conn reports.
type countingObserver struct {
	mu    sync.Mutex
	calls map[string]int
	errs  map[string]int
	trips int
}

func (o *countingObserver) LibvirtCall(call string, _ time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls[call]++
	if err != nil {
		o.errs[call]++
	}
}

func (o *countingObserver) WatchdogTrip() { o.mu.Lock(); o.trips++; o.mu.Unlock() }

// The Observer hears the dial, each call by its fixed name (no URI, no
// domain), the watchdog's pings and its trip once the daemon hangs.
func TestObserverHearsCallsAndWatchdogTrip(t *testing.T) {
	d := newFakeDaemon(t)
	o := &countingObserver{calls: map[string]int{}, errs: map[string]int{}}
	c, err := Dial(context.Background(), d.uri(), short, WithObserver(o))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Version(context.Background()); err != nil {
		t.Fatalf("a live daemon: %v", err)
	}
	d.hang()
	within(t, 10*time.Second, "the watchdog's verdict", func() { <-c.Disconnected() })
	within(t, 10*time.Second, "Close on a hung daemon", func() { c.Close() })
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, call := range []string{"dial", "lib-version", "hypervisor-version", "ping"} {
		if o.calls[call] == 0 {
			t.Errorf("no %q call observed; saw %v", call, o.calls)
		}
	}
	if o.errs["dial"] != 0 || o.errs["lib-version"] != 0 {
		t.Errorf("errors observed on a live daemon's calls: %v", o.errs)
	}
	if o.trips != 1 || o.errs["ping"] == 0 {
		t.Errorf("watchdog trips %d, failed pings %d; want 1 trip after a failed ping", o.trips, o.errs["ping"])
	}
	for call := range o.calls {
		if strings.Contains(call, "/") || strings.Contains(call, " ") {
			t.Errorf("call name %q is not a fixed name", call)
		}
	}
}
