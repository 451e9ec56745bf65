package proxy

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
)

// Destinations the proxy never connects to: loopback, link-local,
// unspecified, multicast (and broadcast), in every form that reaches them
// (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo), Balise's own
// listeners, and Options.DenyDestinations. Options.AllowDestinations
// exempts networks from the first set (a lab, a test origin on loopback),
// never from Balise's own listeners nor from DenyDestinations.
//
// The rule is enforced in the Control hook of the net.Dialer every
// forwarding path dials through (tunnels, and the origin connections of
// plain HTTP, upgrades included), so it sees each address
// actually dialled, after resolution: a refused address is skipped and the
// next one is tried, and a name whose DNS answer points at loopback is
// caught like a literal. With a parent proxy, the parent does the
// connecting: names are resolved through the configured resolver and
// checked before the request or tunnel is handed over.

// Why a destination is refused.
const (
	whyLoopback    = "loopback"
	whyLinkLocal   = "link-local"
	whyUnspecified = "unspecified"
	whyMulticast   = "multicast"
	whyBroadcast   = "broadcast"
	whyListener    = "balise-listener"
	whyDenied      = "deny_destinations"
)

var (
	prefixThisNet   = netip.MustParsePrefix("0.0.0.0/8")
	prefixNAT64     = netip.MustParsePrefix("64:ff9b::/96")
	prefixNAT64L    = netip.MustParsePrefix("64:ff9b:1::/48")
	prefix6to4      = netip.MustParsePrefix("2002::/16")
	prefixTeredo    = netip.MustParsePrefix("2001::/32")
	prefixV4Compat  = netip.MustParsePrefix("::/96")
	addrBroadcastV4 = netip.AddrFrom4([4]byte{255, 255, 255, 255})
)

// destinationError is a destination the proxy refuses to connect to.
type destinationError struct {
	addr netip.AddrPort // as dialled
	why  string         // one of the why* constants
}

func (e *destinationError) Error() string {
	return "destination " + e.addr.String() + " refused: " + e.why
}

// asDestinationError returns the refusal err carries, if any.
func asDestinationError(err error) (*destinationError, bool) {
	var de *destinationError
	ok := errors.As(err, &de)
	return de, ok
}

// forms returns the addresses a dialled address reaches: itself
// (unmapped, without zone) and the IPv4 addresses it embeds through
// IPv4-compatible, NAT64 (64:ff9b::/96, and 64:ff9b:1::/48 in both of
// RFC 6052's layouts), 6to4 and Teredo (server and client) encodings.
// The dialled address is refused when any of its forms is.
func forms(a netip.Addr) (out [4]netip.Addr, n int) {
	a = a.Unmap().WithZone("")
	out[0], n = a, 1
	if !a.Is6() {
		return out, n
	}
	b := a.As16()
	// An embedded 0.0.0.0/8 or 255.255.255.255 is what the other layout
	// of an address, or an empty Teredo field, decodes to: no translator
	// or relay reaches it, so it is not a form of anything.
	v4 := func(x, y, z, w byte) {
		e := netip.AddrFrom4([4]byte{x, y, z, w})
		if !prefixThisNet.Contains(e) && e != addrBroadcastV4 {
			out[n] = e
			n++
		}
	}
	switch {
	case prefixNAT64.Contains(a):
		v4(b[12], b[13], b[14], b[15])
	case prefixNAT64L.Contains(a):
		v4(b[12], b[13], b[14], b[15])
		v4(b[6], b[7], b[9], b[10])
	case prefix6to4.Contains(a):
		v4(b[2], b[3], b[4], b[5])
	case prefixTeredo.Contains(a):
		v4(b[4], b[5], b[6], b[7])
		v4(b[12]^0xff, b[13]^0xff, b[14]^0xff, b[15]^0xff)
	case prefixV4Compat.Contains(a) && !a.IsUnspecified() && !a.IsLoopback():
		v4(b[12], b[13], b[14], b[15])
	}
	return out, n
}

// special returns why an (unmapped) address is always refused, or "".
func special(a netip.Addr) string {
	switch {
	case a.IsLoopback():
		return whyLoopback
	case a.IsUnspecified() || (a.Is4() && prefixThisNet.Contains(a)):
		return whyUnspecified
	case a.IsLinkLocalUnicast():
		return whyLinkLocal
	case a.IsMulticast():
		return whyMulticast
	case a == addrBroadcastV4:
		return whyBroadcast
	}
	return ""
}

// ownListener is one of Balise's listening addresses.
type ownListener struct {
	ap    netip.AddrPort // address unmapped, without zone
	proxy bool           // a listener of this proxy (explicit or transparent)
}

// destinations decides which addresses the proxy may connect to. It is
// safe for concurrent use.
type destinations struct {
	lists atomic.Pointer[destLists] // swapped by setLists on reload
	local *localAddrs               // this host's interface addresses

	mu    sync.RWMutex
	own   []ownListener
	ports map[uint16]bool // ports of own
}

// destLists are Options.DenyDestinations and AllowDestinations.
type destLists struct {
	deny, allow []netip.Prefix
}

func newDestinations(deny, allow []netip.Prefix, local *localAddrs) *destinations {
	g := &destinations{local: local, ports: map[uint16]bool{}}
	g.setLists(deny, allow)
	return g
}

// setLists puts new deny and allow lists in force for the next dial (a
// reload); connections already open are re-decided by Redecide.
func (g *destinations) setLists(deny, allow []netip.Prefix) {
	g.lists.Store(&destLists{deny: deny, allow: allow})
}

// addListener records one of Balise's listening addresses (proxy: one of
// this proxy's own).
func (g *destinations) addListener(ap netip.AddrPort, proxy bool) {
	l := ownListener{ap: netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()), proxy: proxy}
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, o := range g.own {
		if o.ap == l.ap {
			g.own[i].proxy = o.proxy || proxy
			return
		}
	}
	g.own = append(g.own, l)
	g.ports[l.ap.Port()] = true
}

// isOwn reports whether ap (any form) reaches one of Balise's listeners
// (proxyOnly: one of this proxy's): the listener's own address, the
// unspecified address (which connects to this host), or, for a wildcard
// listener, any address of this host on its port.
func (g *destinations) isOwn(ap netip.AddrPort, proxyOnly bool) bool {
	g.mu.RLock()
	ours := g.ports[ap.Port()]
	g.mu.RUnlock()
	if !ours {
		return false
	}
	fs, n := forms(ap.Addr())
	for _, a := range fs[:n] {
		if g.reachesOwn(a, ap.Port(), proxyOnly) {
			return true
		}
	}
	return false
}

func (g *destinations) reachesOwn(a netip.Addr, port uint16, proxyOnly bool) bool {
	wildcard := false
	g.mu.RLock()
	for _, l := range g.own {
		if l.ap.Port() != port || (proxyOnly && !l.proxy) {
			continue
		}
		la := l.ap.Addr()
		if la == a || a.IsUnspecified() {
			g.mu.RUnlock()
			return true
		}
		wildcard = wildcard || la.IsUnspecified()
	}
	g.mu.RUnlock()
	return wildcard && (a.IsLoopback() || g.local.has(a))
}

// check returns a *destinationError when the proxy must not connect to
// ap, nil when it may.
func (g *destinations) check(ap netip.AddrPort) error {
	if g.isOwn(ap, false) {
		return &destinationError{addr: ap, why: whyListener}
	}
	l := g.lists.Load()
	fs, n := forms(ap.Addr())
	for _, a := range fs[:n] {
		if contains(l.deny, a) {
			return &destinationError{addr: ap, why: whyDenied}
		}
	}
	for _, a := range fs[:n] {
		if why := special(a); why != "" && !contains(l.allow, a) && !contains(l.allow, fs[0]) {
			return &destinationError{addr: ap, why: why}
		}
	}
	return nil
}

func contains(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// control is the net.Dialer Control hook: it sees each address actually
// dialled ("ip:port", after resolution) and refuses the forbidden ones.
func (g *destinations) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &destinationError{why: "unparsable address " + strconv.Quote(address)}
	}
	return g.check(ap)
}

// Answers to a refused destination: RFC 9209's destination_ip_prohibited.
const (
	destProxyStatus = "destination_ip_prohibited"
	destBody        = "Balise : destination interdite (adresse réservée, réseau interne ou Balise elle-même).\n" +
		"Balise: destination not allowed (reserved address, internal network or Balise itself).\n"
)

// refusedDestination counts and logs a refused destination when err is
// one (dest as the client named it) and reports whether it was.
func (p *Proxy) refusedDestination(err error, mode int, client netip.Addr, dest string) (*destinationError, bool) {
	de, ok := asDestinationError(err)
	if ok {
		p.refuseConn(mode, refusalDestination, client, dest)
	}
	return de, ok
}

// dialErrorResponse answers a forward that could not reach its origin: a
// 403 for a refused destination, a 502 otherwise.
func (p *Proxy) dialErrorResponse(r *http.Request, mode int, err error) *http.Response {
	if de, ok := p.refusedDestination(err, mode, clientAddr(r.RemoteAddr), r.URL.Host); ok {
		return textResponse(r, http.StatusForbidden, proxyStatus(destProxyStatus, de.why), destBody)
	}
	return textResponse(r, http.StatusBadGateway, proxyStatus(proxyStatusForDialError(err), ""),
		"Balise : destination injoignable / destination unreachable\n")
}

// refuseConnectDial answers a CONNECT whose destination could not be
// dialled, on the raw client connection: 403 for a refused destination,
// 502 otherwise.
func (p *Proxy) refuseConnectDial(raw net.Conn, client netip.Addr, dest string, err error) {
	if de, ok := p.refusedDestination(err, modeExplicit, client, dest); ok {
		writeConnectRefusal(raw, http.StatusForbidden, proxyStatus(destProxyStatus, de.why), destBody)
		return
	}
	p.logger().Debug("dial failed", "err", err)
	writeConnectRefusal(raw, http.StatusBadGateway, proxyStatus(proxyStatusForDialError(err), ""), "Balise : destination injoignable / destination unreachable\n")
}
