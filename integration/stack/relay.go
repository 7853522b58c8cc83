package stack

import (
	"errors"
	"io"
	"net"
	"sync"
)

// relay forwards TCP connections from listen to target: the machine's
// RabbitMQ listens on 127.0.0.1 only, which the lab hosts cannot reach, and
// the stack does not reconfigure the broker.
type relay struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

func startRelay(listen, target string) (*relay, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.serve() // owner: r (close waits)
	return r, nil
}

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go r.pipe(c) // owner: r
	}
}

func (r *relay) track(c net.Conn, add bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns == nil {
		return false
	}
	if add {
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
	return true
}

func (r *relay) pipe(c net.Conn) {
	defer r.wg.Done()
	defer c.Close()
	u, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer u.Close()
	if !r.track(c, true) || !r.track(u, true) {
		return
	}
	defer r.track(c, false)
	defer r.track(u, false)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(u, c) // owner: pipe (waits for both)
	go cp(c, u)
	<-done
	<-done
}

func (r *relay) close() error {
	if r == nil {
		return nil
	}
	err := r.ln.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
