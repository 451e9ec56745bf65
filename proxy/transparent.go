package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// Transparent mode: the gateway redirects workstations' TCP 80 and 443 to
// Balise, which learns the original destination from the socket, decides
// on the Host header (HTTP) or the ClientHello's server name (HTTPS), and
// forwards to that original destination.

// ListenTransparent opens a listener for redirected connections: a plain
// TCP listener for REDIRECT, an IP_TRANSPARENT one with Options.TPROXY.
func (p *Proxy) ListenTransparent(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{}
	if p.opts.TPROXY {
		lc.Control = transparentControl
	}
	return lc.Listen(ctx, "tcp", addr)
}

// originalDst returns where c was going before the gateway redirected it.
func (p *Proxy) originalDst(c net.Conn) (netip.AddrPort, error) {
	c = socketOf(c) // never a PROXY header's destination
	if p.opts.OriginalDestination != nil {
		return p.opts.OriginalDestination(c)
	}
	if p.opts.TPROXY {
		return netip.ParseAddrPort(c.LocalAddr().String())
	}
	return redirectedDst(c)
}

type origDstKey struct{}

// origDst is a transparent HTTP connection's original destination, as
// found when the connection was accepted.
type origDst struct {
	ap   netip.AddrPort // invalid when unknown
	loop bool           // ap is Balise itself
}

// StartTransparentHTTP serves redirected port-80 traffic on ln until ctx
// ends: each request is decided on its Host header and forwarded to the
// connection's original destination, or answered with the block page. It
// logs msg="listening" service=transparent-http before it returns.
func (p *Proxy) StartTransparentHTTP(ctx context.Context, ln net.Listener) <-chan error {
	p.addSelf(ln.Addr())
	srv := &http.Server{
		Handler:           http.HandlerFunc(p.serveTransparentHTTP),
		ReadHeaderTimeout: p.opts.HeaderTimeout,
		IdleTimeout:       p.opts.IdleTimeout,
		MaxHeaderBytes:    p.opts.MaxHeaderBytes,
		ErrorLog:          log.New(io.Discard, "", 0),
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ConnContext: func(cctx context.Context, c net.Conn) context.Context {
			var o origDst
			if ap, err := p.originalDst(c); err == nil && ap.IsValid() {
				o = origDst{ap: ap, loop: p.isLoop(c, ap)}
			}
			return context.WithValue(cctx, origDstKey{}, o)
		},
	}
	p.trackConns(srv, modeTransparent)
	p.opts.Logger.Info("listening", "service", "transparent-http", "addr", ln.Addr().String())
	return p.serveUntil(ctx, srv, ln, modeTransparent, "transparent-http")
}

func (p *Proxy) serveTransparentHTTP(w http.ResponseWriter, r *http.Request) {
	client := clientAddr(r.RemoteAddr)
	if !p.allowed(client) {
		p.m.refusals[modeTransparent][refusalClient].Inc()
		p.refuse(w, http.StatusForbidden, "http_request_denied", "client address not allowed", "Balise : adresse non autorisée / address not allowed\n")
		return
	}
	o, _ := r.Context().Value(origDstKey{}).(origDst)
	orig := o.ap
	if o.loop || p.looped(r.Header) {
		p.m.refusals[modeTransparent][refusalLoop].Inc()
		p.refuse(w, http.StatusLoopDetected, "http_request_error", "request loop", "Balise: request loop\n")
		return
	}
	if !orig.IsValid() {
		p.m.refusals[modeTransparent][refusalBadRequest].Inc()
		p.refuse(w, http.StatusBadGateway, "destination_unavailable", "no usable original destination", "Balise: no usable original destination\n")
		return
	}
	if r.Method == http.MethodConnect {
		// Redirected port-80 traffic is plain HTTP: a CONNECT here would
		// open a tunnel no ClientHello was read for.
		p.refuseConn(modeTransparent, refusalBadRequest, client, orig.String())
		p.refuse(w, http.StatusMethodNotAllowed, "http_request_error", "CONNECT on the transparent HTTP port",
			"Balise : CONNECT refusé sur ce port / CONNECT not allowed on this port\n")
		return
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "" {
		host = orig.Addr().String()
	}
	pol := p.opts.Policy.Load()
	now := p.opts.Clock()
	d := pol.Decide(policy.Query{Host: host, Client: client, Time: now})
	if d.Invalid {
		p.m.refusals[modeTransparent][refusalBadRequest].Inc()
		p.refuse(w, http.StatusBadRequest, "http_request_error", "invalid host name", "Balise: invalid host name\n")
		return
	}
	d, id := p.identifyBound(client, host, pol, d, now)
	if cc := connOf(r); cc != nil {
		cc.setIdentity(id) // re-decisions of this connection use it
	}
	pol, d = p.noteAllowed(r, host, client, id, pol, d, now)
	p.m.request(modeTransparent, kindHTTP, d, -1)
	p.logDecision("transparent", client, id, host, d, now)
	if d.Verdict == policy.Block {
		if strings.HasPrefix(r.URL.Path, ReservedPath) {
			p.serveReserved(w, r, client)
			return
		}
		body := p.blockPage(pol, client, host, d, now, r.Header.Get("Accept-Language"))
		setBlockHeaders(w.Header(), len(body))
		w.WriteHeader(http.StatusForbidden)
		if r.Method != http.MethodHead {
			w.Write(body)
		}
		return
	}
	// Forward to where the client was going, not to what Host names.
	dest := orig.String()
	r.URL.Scheme = "http"
	r.URL.Host = dest
	if isUpgrade(r.Header) {
		p.serveUpgrade(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.forward(w, r, modeTransparent, dest, false)
		}), w, r)
		return
	}
	p.forward(w, r, modeTransparent, dest, false)
}

// StartTransparentHTTPS serves redirected port-443 traffic on ln until ctx
// ends: each connection is decided on its ClientHello's server name, then
// spliced to its original destination, shown the block page (with the CA)
// or closed with a TLS alert. It logs msg="listening"
// service=transparent-https before it returns. The channel receives nil
// once ctx ended and every tunnel closed, or the error that stopped ln
// for good (the rest of the proxy goes on).
func (p *Proxy) StartTransparentHTTPS(ctx context.Context, ln net.Listener) <-chan error {
	p.addSelf(ln.Addr())
	addr := ln.Addr().String()
	p.opts.Logger.Info("listening", "service", "transparent-https", "addr", addr)
	rl := p.listen(ln, modeTransparent, "transparent-https")
	result := make(chan error, 1)
	stop := context.AfterFunc(ctx, func() { rl.Close() })
	go func() {
		defer stop()
		var err error
		for {
			var c net.Conn
			c, err = rl.Accept()
			if err != nil {
				break
			}
			go p.handleTransparentTLS(ctx, c)
		}
		if ctx.Err() != nil {
			p.tunnel.closeAll(causeShutdown, 5*time.Second)
			result <- nil
			return
		}
		rl.Close()
		p.listenerFailed(modeTransparent, "transparent-https", addr, err)
		result <- err
	}()
	return result
}

func (p *Proxy) handleTransparentTLS(ctx context.Context, c net.Conn) {
	client := clientAddr(c.RemoteAddr().String())
	if !p.allowed(client) {
		p.m.refusals[modeTransparent][refusalClient].Inc()
		c.Close()
		return
	}
	orig, err := p.originalDst(c)
	if err != nil || !orig.IsValid() {
		p.m.refusals[modeTransparent][refusalBadRequest].Inc()
		c.Close()
		return
	}
	if p.isLoop(c, orig) {
		p.m.refusals[modeTransparent][refusalLoop].Inc()
		c.Close()
		return
	}
	if !p.tunnel.begin(c) {
		return
	}
	handed := false
	defer func() {
		if !handed {
			p.tunnel.settle(c)
			p.tunnel.end()
		}
	}()
	if !p.tunnel.acquire(client, p.cfg().MaxTunnelsPerClient) {
		p.m.refusals[modeTransparent][refusalLimit].Inc()
		c.Close()
		return
	}
	released := false
	defer func() {
		if !released {
			p.tunnel.release(client)
		}
	}()
	dest := orig.String()
	hello, ch, ok := p.readHello(modeTransparent, c, nil, client, dest)
	if !ok {
		return
	}
	pol := p.opts.Policy.Load()
	now := p.opts.Clock()
	host := ch.ServerName
	var d policy.Decision
	if host != "" {
		d = pol.Decide(policy.Query{Host: host, Client: client, Time: now})
		if d.Invalid {
			p.refuseTunnel(modeTransparent, refusalNotTLS, -1, c, client, dest, policy.Decision{}, true)
			return
		}
	} else {
		host = orig.Addr().String()
		d = pol.Decide(policy.Query{Host: host, Client: client, Time: now})
		if !p.cfg().AllowNoSNI {
			p.refuseTunnel(modeTransparent, refusalNoSNI, reasonNoSNI, c, client, dest, d, true)
			return
		}
	}
	d, w := p.identifyBound(client, host, pol, d, now)
	p.logDecision("transparent", client, w, host, d, now)
	p.m.request(modeTransparent, kindConnect, d, -1)
	if d.Verdict == policy.Block {
		if p.certs != nil && ch.ServerName != "" {
			released = true
			p.icept.serve(modeTransparent, c, hello, client, host, d)
			return
		}
		denyTLS(c)
		c.Close()
		return
	}
	if d.Listed() && !d.IP {
		p.checkSNIAddr(ctx, host, orig.Addr())
	}
	origin, err := p.dial.dialTunnel(ctx, orig.String())
	if err != nil {
		if _, refused := p.refusedDestination(err, modeTransparent, client, orig.String()); refused {
			denyTLS(c)
		}
		c.Close()
		return
	}
	var hosts []string
	if d.Listed() {
		hosts = []string{host}
	}
	released, handed = true, true
	p.startTunnel(&tunnel{p: p, mode: modeTransparent, client: c, origin: origin, clientAddr: client, who: w,
		hosts: hosts, replay: hello, until: earliestUntil(d)})
}

// maxSNIChecks bounds the background SNI/address checks running at once;
// beyond it a connection is not checked.
const maxSNIChecks = 32

// checkSNIAddr counts, in the background, a transparent connection whose
// server name does not resolve to the address it was going to. It never
// waits: when maxSNIChecks checks are already running, it drops this one
// and reports false.
func (p *Proxy) checkSNIAddr(ctx context.Context, host string, addr netip.Addr) bool {
	select {
	case p.sniChecks <- struct{}{}:
	default:
		return false
	}
	go func() {
		defer func() { <-p.sniChecks }()
		if !p.resolvesTo(ctx, host, addr) {
			p.m.sniMismatch[modeTransparent].Inc()
		}
	}()
	return true
}

// resolvesTo reports whether host resolves (through the proxy's
// resolution cache) to addr; on lookup failure it gives the benefit of the
// doubt.
func (p *Proxy) resolvesTo(ctx context.Context, host string, addr netip.Addr) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	addrs, err := p.dial.res.lookup(ctx, host)
	if err != nil {
		return true
	}
	return slices.ContainsFunc(addrs, func(a netip.Addr) bool { return a.Unmap() == addr.Unmap() })
}
