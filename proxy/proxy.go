package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/balise-net/balise/internal/decisionlog"
	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/policy"
	"github.com/elazarl/goproxy"
)

// Proxy is Balise's HTTP(S) proxy front-end. It is safe for concurrent
// use; one Proxy may serve several listeners.
type Proxy struct {
	opts   Options
	m      *metrics
	gp     *goproxy.ProxyHttpServer
	dial   *dialer
	dests  *destinations
	certs  *certCache // nil without a CA
	icept  *interceptor
	tunnel tunnelSet
	conns  connSet // client connections of the HTTP listeners
	via    string  // Via pseudonym, for loop detection
	via10  string  // Via entries added to messages received in HTTP/1.0
	via11  string  // and in HTTP/1.1
	lm     *listenerMetrics

	live atomic.Pointer[settings] // what a reload may change (cfg, Reconfigure)

	seenHosts    sync.Map // service id -> a host seen for it (for the portal)
	serviceHosts atomic.Pointer[map[string]string]

	selfMu    sync.RWMutex
	self      map[string]bool // "host:port" of our own listeners
	selfPorts map[uint16]bool // their ports
	local     localAddrs      // this host's interface addresses

	refusalLog decisionlog.RateBound // rate bound of refusal log lines

	sniChecks chan struct{} // slots for background SNI/address checks
	origins   *originPool   // idle origin (or parent proxy) connections
	parentKey string        // origins' key for plain HTTP through the parent
}

// New returns a Proxy configured by opts. It fails when opts.Policy is
// nil, when the parent proxy or its credentials are unusable, or when the
// metrics cannot be registered.
func New(opts Options) (*Proxy, error) {
	if opts.Policy == nil {
		return nil, errors.New("proxy: options: Policy is required")
	}
	opts.setDefaults()
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("proxy: metrics: %w", err)
	}
	p := &Proxy{opts: opts, m: m, self: map[string]bool{}, selfPorts: map[uint16]bool{},
		sniChecks: make(chan struct{}, maxSNIChecks)}
	p.lm, err = newListenerMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("proxy: metrics: %w", err)
	}
	s, err := newSettings(opts)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p.live.Store(s)
	p.tunnel.init()
	p.via = newViaToken()
	p.via10, p.via11 = "1.0 "+p.via, "1.1 "+p.via
	p.dests = newDestinations(opts.DenyDestinations, opts.AllowDestinations, &p.local)
	for _, ap := range opts.OwnListeners {
		p.dests.addListener(ap, false)
	}
	p.dial, err = newDialer(&p.opts, p.dests, func(d time.Duration) { m.dialDuration.Observe(d.Seconds()) })
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if opts.CA != nil {
		p.certs, err = newCertCache(opts.CA, opts.LeafValidity, opts.CertCacheSize, m.certHits.Inc, m.certMisses.Inc)
		if err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
	}
	p.icept = newInterceptor(p)
	p.SetServiceHosts(opts.ServiceHosts)

	p.origins = newOriginPool()
	if p.dial.parent != nil {
		p.parentKey = "parent " + p.dial.parent.Host
	}
	// goproxy routes the explicit listener's CONNECT requests to the
	// hijack (connect.go); plain HTTP never reaches it (forward.go).
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = log.New(io.Discard, "", 0)
	gp.Tr = nil
	gp.ConnectDial = nil
	gp.NonproxyHandler = http.HandlerFunc(p.servePortal)
	gp.OnRequest().HijackConnect(p.hijackConnect)
	p.gp = gp
	return p, nil
}

func (p *Proxy) dialContextTimed(ctx context.Context, network, addr string) (net.Conn, error) {
	start := time.Now()
	c, err := p.dial.dialDirect(ctx, network, addr)
	if err == nil {
		p.m.dialDuration.Observe(time.Since(start).Seconds())
	}
	return c, err
}

// SetServiceHosts replaces Options.ServiceHosts (after a reload). The
// map must not be modified afterwards.
func (p *Proxy) SetServiceHosts(m map[string]string) {
	p.serviceHosts.Store(&m)
}

// ListenAndServe listens on addr (TCP) and serves until ctx ends.
func (p *Proxy) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return p.Serve(ctx, ln)
}

// Serve answers proxy requests on ln until ctx ends, then closes ln, the
// idle client connections and every tunnel, and returns nil. When ln
// fails for good first (an accept error that is not temporary) it closes
// that listener's connections and returns the error; the proxy's other
// listeners and its tunnels go on. It logs msg="listening" with
// service=proxy and the bound address first.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	return <-p.Start(ctx, ln)
}

// Start is Serve in the background: it logs msg="listening" before it
// returns, then serves ln until ctx ends; the channel receives Serve's
// result: nil once ctx ended and everything stopped, or the error that
// stopped ln for good (the proxy's other listeners and tunnels go on).
func (p *Proxy) Start(ctx context.Context, ln net.Listener) <-chan error {
	addr := ln.Addr().String()
	p.addSelf(ln.Addr())
	srv := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: p.opts.HeaderTimeout,
		IdleTimeout:       p.opts.IdleTimeout,
		MaxHeaderBytes:    p.opts.MaxHeaderBytes,
		ErrorLog:          log.New(io.Discard, "", 0),
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	p.trackConns(srv, modeExplicit)
	p.opts.Logger.Info("listening", "service", "proxy", "addr", addr)
	return p.serveUntil(ctx, srv, ln, modeExplicit, "proxy")
}

// shutdown stops srv (Balise is stopping) and everything the proxy holds
// open: tunnels, intercepted connections, pooled origin connections.
func (p *Proxy) shutdown(srv *http.Server) {
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	p.tunnel.closeAll(causeShutdown, 5*time.Second)
	p.icept.close()
	p.origins.closeAll()
}

// Close closes the idle origin connections and stops their sweep; the
// connections of requests in progress are closed when they end. Serve
// and Start close idle connections themselves when they stop; Close is
// for a Proxy that is no longer used at all.
func (p *Proxy) Close() error {
	p.origins.close()
	return nil
}

func (p *Proxy) addSelf(a net.Addr) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return
	}
	p.dests.addListener(ap, true)
	p.selfMu.Lock()
	defer p.selfMu.Unlock()
	port := strconv.Itoa(int(ap.Port()))
	p.self[ap.String()] = true
	p.selfPorts[ap.Port()] = true
	if ap.Addr().IsUnspecified() || ap.Addr().IsLoopback() {
		p.self["localhost:"+port] = true
		p.self["127.0.0.1:"+port] = true
		p.self["[::1]:"+port] = true
	}
}

// isSelf reports whether an absolute URL's authority names one of our
// own listeners, so that the request is answered by the portal instead of
// looping through the proxy.
func (p *Proxy) isSelf(u string) bool {
	host, port, err := net.SplitHostPort(u)
	if err != nil {
		host, port = u, "80"
	}
	if host != "" && (host[0] >= '0' && host[0] <= '9' || strings.IndexByte(host, ':') >= 0) {
		if ap, ok := literalAddrPort(host, port); ok {
			if p.dests.isOwn(ap, true) {
				return true
			}
			host = ap.Addr().Unmap().WithZone("").String()
		}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return false
	}
	p.selfMu.RLock()
	defer p.selfMu.RUnlock()
	if !p.selfPorts[uint16(n)] {
		return false // none of our listeners: no need to build the key
	}
	return p.self[net.JoinHostPort(strings.ToLower(strings.TrimSuffix(host, ".")), port)]
}

// clientAddr returns the client's address from a request's RemoteAddr.
func clientAddr(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// allowed reports whether the settings in force serve client c.
func (p *Proxy) allowed(c netip.Addr) bool { return p.cfg().allows(c) }

// ServeHTTP is the proxy listener's handler: the client check, then
// CONNECT, the portal, or plain HTTP forwarding.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	client := clientAddr(r.RemoteAddr)
	if !p.allowed(client) {
		p.m.refusals[modeExplicit][refusalClient].Inc()
		p.refuse(w, http.StatusForbidden, "http_request_denied", "client address not allowed to use this proxy",
			"Balise : ce proxy ne dessert pas votre adresse.\nBalise: this proxy does not serve your address.\n")
		return
	}
	if r.Method == http.MethodConnect {
		if p.cfg().Auth != nil && p.challengeConnect(w, r, client) {
			return
		}
		p.gp.ServeHTTP(&hijackWriter{ResponseWriter: w}, r) // to hijackConnect
		return
	}
	if !r.URL.IsAbs() || p.isSelf(r.URL.Host) {
		p.servePortal(w, r)
		return
	}
	if r.URL.Scheme != "http" && r.URL.Scheme != "https" {
		p.m.refusals[modeExplicit][refusalBadRequest].Inc()
		p.refuse(w, http.StatusBadRequest, "http_request_error", "unsupported scheme", "Balise: unsupported scheme\n")
		return
	}
	if p.looped(r.Header) {
		p.m.refusals[modeExplicit][refusalLoop].Inc()
		p.refuse(w, http.StatusLoopDetected, "http_request_error", "request loop", "Balise: request loop\n")
		return
	}
	if strings.HasPrefix(r.URL.Path, ReservedPath) {
		pol := p.opts.Policy.Load()
		now := p.opts.Clock()
		host := r.URL.Hostname()
		d := pol.Decide(policy.Query{Host: host, Client: client, Time: now})
		if d.Verdict == policy.Block {
			// A request posted on a connection the browser has not
			// authenticated yet (another of its pooled connections) is
			// challenged like the page was, so that it records the
			// person.
			if _, _, challenge := p.identify(r, client, host, pol, d, now); challenge {
				body := p.blockPage(pol, client, host, d, now, r.Header.Get("Accept-Language"))
				challenge407(w.Header(), len(body))
				w.WriteHeader(http.StatusProxyAuthRequired)
				w.Write(body)
				return
			}
			p.serveReserved(w, r, client)
			return
		}
	}
	if resp := p.decideRequest(r); resp != nil {
		writeResponse(w, resp)
		return
	}
	dest, tlsOrigin := r.URL.Host, r.URL.Scheme == "https"
	if r.URL.Port() == "" {
		port := "80"
		if tlsOrigin {
			port = "443"
		}
		dest = net.JoinHostPort(r.URL.Hostname(), port)
	}
	if isUpgrade(r.Header) {
		// WebSocket and other upgrades: the connection stays tracked
		// (re-decided) while its bytes are relayed.
		p.serveUpgrade(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.forward(w, r, modeExplicit, dest, tlsOrigin)
		}), w, r)
		return
	}
	p.forward(w, r, modeExplicit, dest, tlsOrigin)
}

// looped reports whether a request already went through this Balise
// (its Via pseudonym in any Via entry).
func (p *Proxy) looped(h http.Header) bool {
	for _, v := range h["Via"] {
		if strings.Contains(v, p.via) {
			return true
		}
	}
	return false
}

// newViaToken returns this instance's Via pseudonym: requests that
// already carry it have looped back through Balise. Another Balise (a
// parent or child proxy) has its own.
func newViaToken() string {
	var b [4]byte
	rand.Read(b[:])
	return "balise-" + hex.EncodeToString(b[:])
}

// refuse answers a request Balise will not carry, with an RFC 9209
// Proxy-Status header.
func (p *Proxy) refuse(w http.ResponseWriter, status int, errType, details, body string) {
	h := w.Header()
	h.Set("Proxy-Status", proxyStatus(errType, details))
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Connection", "close")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// decideRequest decides a plain HTTP (absolute-form) request: nil when
// it may go, the answer to give otherwise (block page, bad request).
func (p *Proxy) decideRequest(r *http.Request) *http.Response {
	client := clientAddr(r.RemoteAddr)
	host := r.URL.Hostname()
	pol := p.opts.Policy.Load()
	now := p.opts.Clock()
	d := pol.Decide(policy.Query{Host: host, Client: client, Time: now})
	if d.Invalid {
		p.m.refusals[modeExplicit][refusalBadRequest].Inc()
		return textResponse(r, http.StatusBadRequest, proxyStatus("http_request_error", "invalid host name"), "Balise: invalid host name\n")
	}
	d, w, challenge := p.identify(r, client, host, pol, d, now)
	if challenge {
		body := p.blockPage(pol, client, host, d, now, r.Header.Get("Accept-Language"))
		resp := blockResponse(r, body)
		resp.StatusCode, resp.Status = http.StatusProxyAuthRequired, "407 Proxy Authentication Required"
		challenge407(resp.Header, len(body))
		return resp
	}
	pol, d = p.noteAllowed(r, host, client, w, pol, d, now)
	p.m.request(modeExplicit, kindHTTP, d, -1)
	p.logDecision("http", client, w, host, d, now)
	if d.Verdict == policy.Block {
		body := p.blockPage(pol, client, host, d, now, r.Header.Get("Accept-Language"))
		return blockResponse(r, body)
	}
	return nil
}

func (p *Proxy) logDecision(front string, client netip.Addr, w who, host string, d policy.Decision, now time.Time) {
	if !d.Listed() {
		return
	}
	if _, ok := p.seenHosts.Load(d.Service); !ok && !d.IP {
		p.seenHosts.Store(d.Service, host)
	}
	if p.opts.Decisions == nil {
		return
	}
	p.opts.Decisions.Log(now, decisionlog.Entry{Front: front, Client: client, User: p.logName(w), Host: host, Decision: d,
		Groups: p.opts.Policy.Load().Groups(w.query(host, client, now))})
}

func blockResponse(r *http.Request, body []byte) *http.Response {
	resp := &http.Response{
		StatusCode:    http.StatusForbidden,
		Status:        "403 Forbidden",
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{},
		ContentLength: int64(len(body)),
		Request:       r,
		Body:          io.NopCloser(bytes.NewReader(body)),
	}
	setBlockHeaders(resp.Header, len(body))
	if r.Method == http.MethodHead {
		resp.Body = http.NoBody
	}
	return resp
}

func textResponse(r *http.Request, status int, ps, body string) *http.Response {
	resp := &http.Response{
		StatusCode:    status,
		Status:        strconv.Itoa(status) + " " + http.StatusText(status),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{},
		ContentLength: int64(len(body)),
		Request:       r,
		Body:          io.NopCloser(strings.NewReader(body)),
	}
	resp.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp.Header.Set("Cache-Control", "no-store")
	if ps != "" {
		resp.Header.Set("Proxy-Status", ps)
	}
	return resp
}

// serveReserved answers /.balise/ on a blocked host (and on the portal)
// through the exception register.
func (p *Proxy) serveReserved(w http.ResponseWriter, r *http.Request, client netip.Addr) {
	if p.opts.Exceptions == nil {
		http.NotFound(w, r)
		return
	}
	ctx := r.Context()
	if cc := connOf(r); cc != nil {
		if id := cc.identity(); id.user != "" {
			// A request sent over an authenticated connection records
			// the person, so that the officer may grant them.
			ctx = exceptions.WithUser(ctx, id.user)
		}
	}
	r2 := r.Clone(ctx)
	r2.RemoteAddr = client.String()
	p.opts.Exceptions.ServeHTTP(w, r2)
}

// hijackWriter makes sure bytes the client sent right behind its CONNECT
// request (already buffered by the HTTP server) are not lost on hijack.
type hijackWriter struct {
	http.ResponseWriter
}

func (h *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("hijack not supported")
	}
	c, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		c = &prefixConn{Conn: c, prefix: append([]byte(nil), b...)}
	}
	return c, brw, nil
}

// logger returns the operational logger.
func (p *Proxy) logger() *slog.Logger { return p.opts.Logger }
