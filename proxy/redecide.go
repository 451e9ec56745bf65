package proxy

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// Re-decision. A decision is taken when a tunnel opens or a request
// arrives, but what it allowed can stay open far longer: a tunnel, a
// kept-alive client connection between requests, a response still
// streaming, a WebSocket. When the policy in force changes (a reload, a
// list update, a grant approved, revoked or ended) the caller runs
// Redecide, which decides again, with the new policy, every open tunnel's
// listed hosts and every listed host each kept-alive client connection
// was allowed to reach, and closes what is now blocked. A client that the
// new settings no longer serve (allowed_clients) loses all its tunnels
// and connections.

// maxConnHosts bounds the listed hosts remembered per client connection;
// beyond, the oldest is forgotten (its next request is decided anyway).
const maxConnHosts = 16

// clientConn is one client connection of an HTTP listener (explicit or
// transparent) and the listed hosts it was allowed to reach.
type clientConn struct {
	c      net.Conn
	mode   int
	client netip.Addr

	mu       sync.Mutex
	who      who      // the user authenticated on this connection
	hosts    []string // listed hosts allowed on this connection
	upgrade  bool     // an upgrade request is being handled
	hijacked bool
	closed   bool
	cut      atomic.Bool // closed by a re-decision
	until    time.Time   // earliest until of the decisions that allowed hosts
	untilT   *time.Timer // re-decides cc at until
}

// allowedHost remembers that host, a listed host, was allowed on cc by a
// decision that holds until until (zero: no end); at until, redecide
// runs for cc (a response or WebSocket may outlive a break).
func (cc *clientConn) allowedHost(host string, until time.Time, now time.Time, redecide func()) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed {
		return
	}
	if !slices.Contains(cc.hosts, host) {
		if len(cc.hosts) == maxConnHosts {
			cc.hosts = slices.Delete(cc.hosts, 0, 1)
		}
		cc.hosts = append(cc.hosts, host)
	}
	if until.IsZero() || (!cc.until.IsZero() && !until.Before(cc.until)) {
		return
	}
	cc.until = until
	if cc.untilT != nil {
		cc.untilT.Stop()
	}
	cc.untilT = time.AfterFunc(max(until.Sub(now), 10*time.Millisecond), redecide)
}

// forget stops cc's timer once the connection is gone.
func (cc *clientConn) forget() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.closed = true
	if cc.untilT != nil {
		cc.untilT.Stop()
	}
}

func (cc *clientConn) listedHosts() []string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return slices.Clone(cc.hosts)
}

// identity returns the user authenticated on cc (empty: none).
func (cc *clientConn) identity() who {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.who
}

// setIdentity records the user authenticated on cc: browsers
// authenticate connections, so later requests on it are decided for that
// user without asking again.
func (cc *clientConn) setIdentity(w who) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.who = w
}

type connKey struct{}

// connOf returns the client connection a request arrived on, or nil.
func connOf(r *http.Request) *clientConn {
	cc, _ := r.Context().Value(connKey{}).(*clientConn)
	return cc
}

// connSet holds the open client connections of the HTTP listeners.
type connSet struct {
	mu sync.Mutex
	m  map[net.Conn]*clientConn
}

func (s *connSet) add(cc *clientConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[net.Conn]*clientConn)
	}
	s.m[cc.c] = cc
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	cc := s.m[c]
	delete(s.m, c)
	s.mu.Unlock()
	if cc != nil {
		cc.forget()
	}
}

func (s *connSet) get(c net.Conn) *clientConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[c]
}

func (s *connSet) snapshot() []*clientConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*clientConn, 0, len(s.m))
	for _, cc := range s.m {
		out = append(out, cc)
	}
	return out
}

// trackConns makes srv record its connections in p.conns (for mode):
// from accept to close, and past a hijack for upgrades (WebSocket), which
// stay tracked until their handler returns. CONNECT's hijacked
// connections become tunnels, tracked by p.tunnel.
func (p *Proxy) trackConns(srv *http.Server, mode int) {
	prev := srv.ConnContext
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if prev != nil {
			ctx = prev(ctx, c)
		}
		cc := &clientConn{c: c, mode: mode, client: clientAddr(c.RemoteAddr().String())}
		p.conns.add(cc)
		return context.WithValue(ctx, connKey{}, cc)
	}
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		switch st {
		case http.StateClosed:
			p.conns.remove(c)
		case http.StateHijacked:
			cc := p.conns.get(c)
			if cc == nil {
				return
			}
			cc.mu.Lock()
			cc.hijacked = true
			keep := cc.upgrade
			cc.mu.Unlock()
			if !keep {
				p.conns.remove(c)
			}
		}
	}
}

// serveUpgrade hands an upgrade request (WebSocket) to h and, when h
// hijacked the connection, closes it and forgets it once h returns: the
// upgraded connection stays re-decidable while it is open.
func (p *Proxy) serveUpgrade(h http.Handler, w http.ResponseWriter, r *http.Request) {
	cc := connOf(r)
	if cc != nil {
		cc.mu.Lock()
		cc.upgrade = true
		cc.mu.Unlock()
	}
	h.ServeHTTP(w, r)
	if cc == nil {
		return
	}
	cc.mu.Lock()
	cc.upgrade = false
	hijacked := cc.hijacked
	cc.mu.Unlock()
	if hijacked {
		cc.c.Close()
		p.conns.remove(cc.c)
	}
}

// noteAllowed records, on the connection r arrived on, that d (taken by
// pol at now for client) allowed a listed host. It returns the policy and
// decision to act on: when the policy changed while d was taken, Redecide
// may have missed the connection, so the host is decided again on the
// policy now in force.
func (p *Proxy) noteAllowed(r *http.Request, host string, client netip.Addr, w who, pol *policy.Policy, d policy.Decision, now time.Time) (*policy.Policy, policy.Decision) {
	if !d.Listed() || d.Verdict != policy.Allow {
		return pol, d
	}
	if cc := connOf(r); cc != nil {
		cc.allowedHost(host, d.Until, now, func() { p.redecideConnAt(cc) })
	}
	if cur := p.opts.Policy.Load(); cur != pol {
		return cur, cur.Decide(w.query(host, client, now))
	}
	return pol, d
}

// redecideConnAt runs when a decision that allowed a host on cc reaches
// its until.
func (p *Proxy) redecideConnAt(cc *clientConn) {
	cc.mu.Lock()
	cc.until, cc.untilT = time.Time{}, nil
	cc.mu.Unlock()
	if pol := p.opts.Policy.Load(); pol != nil {
		p.redecideConn(cc, pol, p.opts.Clock(), p.cfg())
	}
}

// redecideConn closes cc and reports true when s no longer serves its
// client or pol blocks a listed host it carried; otherwise the hosts'
// new untils are armed.
func (p *Proxy) redecideConn(cc *clientConn, pol *policy.Policy, now time.Time, s *settings) bool {
	if cc.cut.Load() {
		return false
	}
	if !s.allows(cc.client) {
		return p.cutConn(cc)
	}
	hosts := cc.listedHosts()
	ds := make([]policy.Decision, len(hosts))
	for i, h := range hosts {
		w := cc.identity()
		ds[i] = pol.Decide(w.query(h, cc.client, now))
		if ds[i].Verdict == policy.Block {
			p.logDecision(frontOfConn(cc.mode), cc.client, w, h, ds[i], now)
			return p.cutConn(cc)
		}
	}
	for i, h := range hosts {
		if ds[i].Listed() {
			cc.allowedHost(h, ds[i].Until, now, func() { p.redecideConnAt(cc) })
		}
	}
	return false
}

// cutConn closes cc for a re-decision, once; it reports whether this
// call closed it.
func (p *Proxy) cutConn(cc *clientConn) bool {
	if !cc.cut.CompareAndSwap(false, true) {
		return false
	}
	cc.c.Close()
	p.lm.connsRedecided[cc.mode].Inc()
	return true
}

// Redecide decides again, with the policy and settings in force, every
// open tunnel and kept-alive client connection, and closes those that
// are now blocked: a tunnel whose listed hosts (the CONNECT host, the TLS
// server name) are no longer all allowed closes with cause "redecided"; a
// client connection that carried a listed host now blocked is closed,
// cutting a response or WebSocket in progress. A client no longer in
// AllowedClients loses every tunnel and connection. Each blocked host
// gets a decision line. Tunnels still allowed have their until re-armed
// from the new decision. It returns the number of tunnels and connections
// closed.
func (p *Proxy) Redecide() (tunnels, conns int) {
	pol := p.opts.Policy.Load()
	if pol == nil {
		return 0, 0
	}
	now := p.opts.Clock()
	s := p.cfg()
	for _, t := range p.tunnel.nextGen() {
		if p.redecideTunnelWith(t, pol, now, s) {
			tunnels++
		}
	}
	for _, cc := range p.conns.snapshot() {
		if p.redecideConn(cc, pol, now, s) {
			conns++
		}
	}
	conns += p.icept.redecide(pol, now)
	if tunnels+conns > 0 {
		p.opts.Logger.Info("connections closed after a policy change", "tunnels", tunnels, "connections", conns)
	}
	return tunnels, conns
}

// redecideTunnel decides t again with the policy and settings in force:
// for a tunnel decided before a re-decision and opened after it.
func (p *Proxy) redecideTunnel(t *tunnel) {
	if pol := p.opts.Policy.Load(); pol != nil {
		p.redecideTunnelWith(t, pol, p.opts.Clock(), p.cfg())
	}
}

// redecideTunnelWith closes t (cause "redecided") and reports true when s
// no longer serves its client, no longer allows its CONNECT port
// (explicit tunnels), or pol blocks one of its listed hosts.
func (p *Proxy) redecideTunnelWith(t *tunnel, pol *policy.Policy, now time.Time, s *settings) bool {
	if t.closing.Load() {
		return false
	}
	if !s.allows(t.clientAddr) || t.mode == modeExplicit && t.port != 0 && !s.ports[t.port] {
		t.close(causeRedecided)
		return true
	}
	return t.redecide(pol, now)
}

// redecide decides t's listed hosts again with pol: it closes t (cause
// "redecided") and reports true when one is blocked, else re-arms the
// until timer from the new decisions.
func (t *tunnel) redecide(pol *policy.Policy, now time.Time) bool {
	return t.decideAgain(pol, now, causeRedecided, false)
}

// decideAgain decides t's listed hosts with pol at now. When one is
// blocked it logs that decision, closes t with cause and reports true;
// otherwise it re-arms the until timer at the earliest new until (none
// when no decision has one). logAllowed also logs the decisions that
// still allow.
func (t *tunnel) decideAgain(pol *policy.Policy, now time.Time, cause int, logAllowed bool) bool {
	var next time.Time
	for _, h := range t.hosts {
		d := pol.Decide(t.who.query(h, t.clientAddr, now))
		if d.Verdict == policy.Block || logAllowed {
			t.p.logDecision(frontOf(t.mode), t.clientAddr, t.who, h, d, now)
		}
		if d.Verdict == policy.Block {
			t.close(cause)
			return true
		}
		if d.Listed() && !d.Until.IsZero() && (next.IsZero() || d.Until.Before(next)) {
			next = d.Until
		}
	}
	if len(t.hosts) == 0 {
		return false
	}
	t.timerMu.Lock()
	defer t.timerMu.Unlock()
	if t.closing.Load() || next.Equal(t.until) {
		return false
	}
	if t.untilT != nil {
		t.untilT.Stop()
		t.untilT = nil
	}
	t.until = next
	if !next.IsZero() {
		t.armUntilLocked(next)
	}
	return false
}

// allows reports whether s serves client.
func (s *settings) allows(c netip.Addr) bool {
	if !c.IsValid() {
		return false
	}
	for _, n := range s.AllowedClients {
		if n.Contains(c) {
			return true
		}
	}
	return false
}

// authClient reports whether client may be asked who it is.
func (s *settings) authClient(c netip.Addr) bool {
	for _, n := range s.AuthClients {
		if n.Contains(c) {
			return true
		}
	}
	return false
}

func frontOfConn(mode int) string {
	if mode == modeTransparent {
		return "transparent"
	}
	return "http"
}
