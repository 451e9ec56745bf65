package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// interceptor shows the block page on blocked HTTPS connections: it
// terminates TLS with a leaf certificate from the institution's CA and
// answers every request with the block page. Allowed connections never
// reach it.
type interceptor struct {
	p   *Proxy
	ln  *chanListener
	srv *http.Server

	mu    sync.Mutex
	conns map[net.Conn]*interceptConn
	start sync.Once
}

// interceptConn is what the handler needs to know about a connection.
type interceptConn struct {
	mode   int
	client netip.Addr
	host   string
	d      policy.Decision

	// Under interceptor.mu: idle between requests; release set by
	// redecide once the host is allowed, so that the connection closes
	// when idle and the browser reconnects to the site itself.
	idle, release bool
}

type interceptKey struct{}

func newInterceptor(p *Proxy) *interceptor {
	ic := &interceptor{p: p, ln: newChanListener(), conns: make(map[net.Conn]*interceptConn)}
	ic.srv = &http.Server{
		Handler:           http.HandlerFunc(ic.serveHTTP),
		ReadHeaderTimeout: p.opts.HeaderTimeout,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    p.opts.MaxHeaderBytes,
		ErrorLog:          log.New(io.Discard, "", 0),
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			ic.mu.Lock()
			info := ic.conns[c]
			ic.mu.Unlock()
			return context.WithValue(ctx, interceptKey{}, info)
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateIdle, http.StateActive:
				ic.mu.Lock()
				info := ic.conns[c]
				closeNow := false
				if info != nil {
					info.idle = s == http.StateIdle
					closeNow = info.idle && info.release
				}
				ic.mu.Unlock()
				if closeNow {
					c.Close()
				}
				return
			case http.StateClosed, http.StateHijacked:
			default:
				return
			}
			ic.mu.Lock()
			info, ok := ic.conns[c]
			delete(ic.conns, c)
			ic.mu.Unlock()
			if ok {
				p.tunnel.release(info.client)
			}
		},
	}
	return ic
}

// serve terminates TLS on raw (whose first bytes pre were already read)
// and hands it to the block-page server. It owns one slot of the
// client's tunnel cap, released when the connection closes.
func (ic *interceptor) serve(mode int, raw net.Conn, pre []byte, client netip.Addr, host string, d policy.Decision) {
	p := ic.p
	var conn net.Conn = raw
	if len(pre) > 0 {
		conn = &prefixConn{Conn: raw, prefix: pre}
	}
	outOfScope := "" // the server name refused a certificate
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			name, d2, ok := ic.scope(host, hello.ServerName, client, d)
			if !ok {
				outOfScope = hello.ServerName
				return nil, errCertScope
			}
			host, d = name, d2
			return p.certs.get(name, time.Now())
		},
	}
	tc := tls.Server(conn, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.HeaderTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		tc.Close()
		p.tunnel.release(client)
		if outOfScope != "" {
			p.refuseConn(mode, refusalCertScope, client, outOfScope)
		}
		return
	}
	p.m.interceptions.Inc()
	ic.start.Do(func() { go ic.srv.Serve(ic.ln) })
	ic.mu.Lock()
	ic.conns[tc] = &interceptConn{mode: mode, client: client, host: host, d: d}
	ic.mu.Unlock()
	if !ic.ln.push(tc) {
		ic.mu.Lock()
		delete(ic.conns, tc)
		ic.mu.Unlock()
		tc.Close()
		p.tunnel.release(client)
	}
}

func (ic *interceptor) serveHTTP(w http.ResponseWriter, r *http.Request) {
	info, _ := r.Context().Value(interceptKey{}).(*interceptConn)
	if info == nil {
		http.Error(w, "Balise", http.StatusForbidden)
		return
	}
	p := ic.p
	if len(r.URL.Path) >= len(ReservedPath) && r.URL.Path[:len(ReservedPath)] == ReservedPath {
		p.serveReserved(w, r, info.client)
		return
	}
	pol := p.opts.Policy.Load()
	body := p.blockPage(pol, info.client, info.host, info.d, p.opts.Clock(), r.Header.Get("Accept-Language"))
	setBlockHeaders(w.Header(), len(body))
	w.WriteHeader(http.StatusForbidden)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// redecide closes the block-page connections whose host pol now allows
// the client (a grant approved, a break started, a window opened): at
// once when idle, else after the answer in progress, so that the browser
// reconnects and reaches the site instead of the block page. It returns
// how many it released.
func (ic *interceptor) redecide(pol *policy.Policy, now time.Time) int {
	n := 0
	var idle []net.Conn
	ic.mu.Lock()
	for c, info := range ic.conns {
		if info.release {
			continue
		}
		if d := pol.Decide(policy.Query{Host: info.host, Client: info.client, Time: now}); d.Verdict != policy.Allow {
			continue
		}
		info.release = true
		n++
		if info.idle {
			idle = append(idle, c)
		}
	}
	ic.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
	return n
}

func (ic *interceptor) close() {
	ic.ln.Close()
	ic.srv.Close()
}

// chanListener is a net.Listener fed by push: it lets one http.Server
// serve connections that were accepted (and hijacked) elsewhere.
type chanListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return interceptAddr{} }

type interceptAddr struct{}

func (interceptAddr) Network() string { return "intercept" }
func (interceptAddr) String() string  { return "intercept" }

// errCertScope refuses a block-page certificate for a name the
// interceptor is not showing a page for.
var errCertScope = errors.New("server name outside the block page's scope")

// scope returns the name the block-page certificate may be issued for
// on a connection blocked as host (decision d), given the ClientHello's
// server name sni: host itself when sni is empty or names it; sni, with
// its own decision, when it is itself a listed host blocked for client
// now. Any other server name gets no certificate (ok false): the
// institution's CA never vouches for a host Balise does not block.
func (ic *interceptor) scope(host, sni string, client netip.Addr, d policy.Decision) (name string, sd policy.Decision, ok bool) {
	h, err := policy.NormalizeHost(host)
	if err != nil {
		return "", d, false
	}
	if sni == "" {
		return h, d, true
	}
	s, err := policy.NormalizeHost(sni)
	if err != nil {
		return "", d, false
	}
	if s == h {
		return h, d, true
	}
	p := ic.p
	sd = p.opts.Policy.Load().Decide(policy.Query{Host: s, Client: client, Time: p.opts.Clock()})
	if sd.Invalid || !sd.Listed() || sd.Verdict != policy.Block {
		return "", d, false
	}
	return s, sd, true
}
