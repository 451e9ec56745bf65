package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Listeners are independent: one that fails stops alone. An accept error
// the system calls temporary (no descriptor left, a connection aborted
// before it was accepted) is retried after a pause that doubles from 5 ms
// to 1 s, as net/http does; any other error stops that listener for good,
// is logged and counted (balise_proxy_listener_failures_total), and is
// returned on the channel its Start function gave. The other listeners,
// the tunnels and the connections already accepted go on.

const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// listenerMetrics count what happens to listeners and to connections
// re-decided after a policy change.
type listenerMetrics struct {
	acceptErrors     [numModes]prometheus.Counter
	listenerFailures [numModes]prometheus.Counter
	connsRedecided   [numModes]prometheus.Counter
}

func newListenerMetrics(reg prometheus.Registerer) (*listenerMetrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	acc := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_proxy_accept_errors_total",
		Help: "Temporary errors accepting a connection (retried after a pause), by mode.",
	}, []string{"mode"})
	fail := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_proxy_listener_failures_total",
		Help: "Proxy listeners stopped for good by an accept error, by mode; the other listeners go on and /readyz fails.",
	}, []string{"mode"})
	red := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_proxy_connections_redecided_total",
		Help: "Kept-alive client connections closed because a grant revocation, a denial or a reload blocked what they carry, by mode.",
	}, []string{"mode"})
	for _, c := range []prometheus.Collector{acc, fail, red} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m := &listenerMetrics{}
	for mo := range numModes {
		m.acceptErrors[mo] = acc.WithLabelValues(modeNames[mo])
		m.listenerFailures[mo] = fail.WithLabelValues(modeNames[mo])
		m.connsRedecided[mo] = red.WithLabelValues(modeNames[mo])
	}
	return m, nil
}

// retryListener retries temporary accept errors with a growing pause and
// returns only the errors that end the listener.
type retryListener struct {
	net.Listener
	onRetry func(error) // called for each temporary error
	sleep   func(d time.Duration, stop <-chan struct{}) bool

	once   sync.Once
	closed chan struct{}
}

func newRetryListener(ln net.Listener, onRetry func(error)) *retryListener {
	return &retryListener{Listener: ln, onRetry: onRetry, sleep: sleepOrStop, closed: make(chan struct{})}
}

// sleepOrStop waits d or until stop is closed; it reports whether the
// whole pause passed.
func sleepOrStop(d time.Duration, stop <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

// Accept returns the next connection, pausing and retrying on temporary
// errors.
func (l *retryListener) Accept() (net.Conn, error) {
	var pause time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		if !isTemporary(err) {
			return nil, err
		}
		if l.onRetry != nil {
			l.onRetry(err)
		}
		pause = min(max(2*pause, acceptBackoffMin), acceptBackoffMax)
		if !l.sleep(pause, l.closed) {
			return nil, net.ErrClosed
		}
	}
}

// Close closes the listener and ends a pause in progress.
func (l *retryListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// isTemporary reports whether an accept error is worth retrying: the
// errors the system calls temporary (EMFILE, ENFILE, ECONNABORTED,
// EAGAIN, EINTR...), never a closed listener.
func isTemporary(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// listen wraps ln for mode and service (the log's name for it): temporary
// errors are counted and retried. When ProxyProtocolFrom is set as the
// listener starts, connections then follow the PROXY protocol settings in
// force (proxyproto.go); otherwise the listener is left as it is, at no
// cost per connection.
func (p *Proxy) listen(ln net.Listener, mode int, service string) net.Listener {
	addr := ln.Addr().String()
	rl := newRetryListener(ln, func(err error) {
		p.lm.acceptErrors[mode].Inc()
		p.opts.Logger.Debug("accept failed; retrying", "service", service, "addr", addr, "error", err)
	})
	if len(p.cfg().ProxyProtocolFrom) == 0 {
		return rl
	}
	return p.proxyProtocol(rl, mode)
}

// listenerFailed records that the listener of service at addr stopped
// for good with err.
func (p *Proxy) listenerFailed(mode int, service, addr string, err error) {
	p.lm.listenerFailures[mode].Inc()
	p.opts.Logger.Error("listener stopped; the other listeners go on", "service", service, "addr", addr, "error", err)
}

// serveUntil runs srv on ln until ctx ends or ln fails for good. When ctx
// ends it shuts srv down and closes every tunnel, then sends nil. When ln
// fails it closes srv (this listener's connections only) and sends the
// error; the rest of the proxy goes on.
func (p *Proxy) serveUntil(ctx context.Context, srv *http.Server, ln net.Listener, mode int, service string) <-chan error {
	result := make(chan error, 1)
	rl := p.listen(ln, mode, service)
	addr := ln.Addr().String()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(rl) }()
	go func() {
		select {
		case err := <-errc:
			if ctx.Err() != nil || errors.Is(err, http.ErrServerClosed) {
				p.shutdown(srv)
				result <- nil
				return
			}
			p.listenerFailed(mode, service, addr, err)
			srv.Close()
			result <- err
		case <-ctx.Done():
			p.shutdown(srv)
			<-errc
			result <- nil
		}
	}()
	return result
}
