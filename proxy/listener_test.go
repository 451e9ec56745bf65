package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeListener returns the errors of errs, one per Accept, then conn,
// then blocks until closed. A fake, because the temporary errors (no
// descriptor left, EMFILE) cannot be caused on a real socket without
// starving every other test of this process of descriptors.
type fakeListener struct {
	mu     sync.Mutex
	errs   []error
	conn   net.Conn
	closed chan struct{}
	once   sync.Once
}

func (f *fakeListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		f.mu.Unlock()
		return nil, err
	}
	c := f.conn
	f.conn = nil
	f.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-f.closed
	return nil, net.ErrClosed
}

func (f *fakeListener) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

func (f *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

func emfile() error { return &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE} }

func TestRetryListenerBackoff(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	var errs []error
	for range 10 {
		errs = append(errs, emfile())
	}
	f := &fakeListener{errs: errs, conn: server, closed: make(chan struct{})}
	var retried int
	rl := newRetryListener(f, func(error) { retried++ })
	var pauses []time.Duration
	rl.sleep = func(d time.Duration, _ <-chan struct{}) bool { pauses = append(pauses, d); return true }
	c, err := rl.Accept()
	if err != nil || c != server {
		t.Fatalf("Accept() = %v, %v; want the connection after the temporary errors", c, err)
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	if retried != len(want) || len(pauses) != len(want) {
		t.Fatalf("retried %d times with pauses %v, want %d", retried, pauses, len(want))
	}
	for i, w := range want {
		if pauses[i] != w*time.Millisecond {
			t.Errorf("pause %d = %v, want %v", i, pauses[i], w*time.Millisecond)
		}
	}

	// A permanent error is returned at once, without a pause.
	boom := &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EINVAL}
	f.mu.Lock()
	f.errs = []error{boom}
	f.mu.Unlock()
	pauses = nil
	if _, err := rl.Accept(); !errors.Is(err, syscall.EINVAL) || len(pauses) != 0 {
		t.Errorf("Accept() after EINVAL = %v with pauses %v, want EINVAL at once", err, pauses)
	}
}

// TestRetryListenerCloseDuringPause checks that closing the listener ends
// a pause at once.
func TestRetryListenerCloseDuringPause(t *testing.T) {
	var errs []error
	for range 100 {
		errs = append(errs, emfile())
	}
	f := &fakeListener{errs: errs, closed: make(chan struct{})}
	rl := newRetryListener(f, nil)
	done := make(chan error, 1)
	go func() { _, err := rl.Accept(); done <- err }()
	time.Sleep(300 * time.Millisecond) // well into the backoff
	start := time.Now()
	rl.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept() after Close = %v, want net.ErrClosed", err)
		}
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Errorf("Accept returned %v after Close, want at once", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

// failingListener wraps a real listener; once failed, Accept returns a
// permanent error (what a listening socket shut down from outside gives).
type failingListener struct {
	net.Listener
	fail chan struct{}
}

func (l *failingListener) Accept() (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := l.Listener.Accept(); ch <- res{c, err} }()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-l.fail:
		l.Listener.Close()
		if r := <-ch; r.c != nil {
			r.c.Close()
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EINVAL}
	}
}

// TestListenerFailureLeavesOthers stops one of two listeners of a proxy
// for good: the other keeps serving CONNECT, a tunnel opened through the
// failed one keeps running, the failure is counted and Start's channel
// reports it.
func TestListenerFailureLeavesOthers(t *testing.T) {
	_, roots, port := originTLS(t)
	e := startEnv(t, testSpec(), func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, port)} })
	fl := newFailingListener(t)
	inner := fl.Listener
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := e.p.Start(ctx, fl)
	second := inner.Addr().String()

	open, code, err := tlsOverTunnel(t, second, "", "unlisted.test:"+port, "example.com", roots, false)
	if err != nil || code != 200 {
		t.Fatalf("tunnel through the second listener = %d %v", code, err)
	}
	defer open.Close()
	close(fl.fail)
	wantListenerFailed(t, e, done, "explicit")
	// The first listener still serves CONNECT.
	tc, code, err := tlsOverTunnel(t, e.addr, "", "unlisted.test:"+port, "example.com", roots, false)
	if err != nil || code != 200 {
		t.Fatalf("CONNECT on the other listener after the failure = %d %v", code, err)
	}
	tc.Close()
	// The tunnel opened through the failed listener goes on.
	if r, body := get(t, open, "example.com", "/after", ""); r.StatusCode != 200 || body != "origin:/after" {
		t.Errorf("tunnel of the failed listener = %d %q, want still open", r.StatusCode, body)
	}
}

// TestTransparentListenerFailure stops the transparent HTTPS listener for
// good: Start's channel reports it, it is counted, and the explicit
// listener still opens tunnels.
func TestTransparentListenerFailure(t *testing.T) {
	_, roots, port := originTLS(t)
	e := startEnv(t, testSpec(), func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, port)} })
	fl := newFailingListener(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := e.p.StartTransparentHTTPS(ctx, fl)
	close(fl.fail)
	wantListenerFailed(t, e, done, "transparent")
	tc, code, err := tlsOverTunnel(t, e.addr, "", "unlisted.test:"+port, "example.com", roots, false)
	if err != nil || code != 200 {
		t.Fatalf("CONNECT after the transparent listener failed = %d %v", code, err)
	}
	tc.Close()
}

// wantListenerFailed waits for a listener's Start channel to report the
// accept error that stopped it, and checks that it was counted once in
// mode.
func wantListenerFailed(t *testing.T, e *env, done <-chan error, mode string) {
	t.Helper()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("the %s listener's Start channel = %v, want the accept error", mode, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the failed %s listener was not reported", mode)
	}
	if got := e.metric("balise_proxy_listener_failures_total", map[string]string{"mode": mode}); got != 1 {
		t.Errorf("listener_failures_total{%s} = %v, want 1", mode, got)
	}
}

// newFailingListener listens on loopback; its Accept fails for good once
// fail is closed.
func newFailingListener(t *testing.T) *failingListener {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &failingListener{Listener: inner, fail: make(chan struct{})}
}
