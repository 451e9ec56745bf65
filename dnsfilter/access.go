package dnsfilter

import (
	"net/netip"
	"slices"
	"time"
)

// Access says who may use the filter and how much. It is part of Options
// and can be changed while serving with SetAccess (a reload): every query
// and every new TCP connection reads the current value.
type Access struct {
	// AllowedClients are the networks whose queries are answered. A query
	// from any other address gets REFUSED, decided before any cache or
	// upstream work, so that Balise is never an open resolver and leaks
	// nothing from its cache. Nil or empty: loopback only (127.0.0.0/8 and
	// ::1).
	AllowedClients []netip.Prefix
	// MaxTCPPerClient bounds one client's concurrent TCP connections (an
	// IPv6 client is its /64); a connection beyond it is closed at once.
	// Zero or negative: 16.
	MaxTCPPerClient int
	// TCPIdleTimeout closes a TCP connection that sends no query for this
	// long. Zero or negative: 10 s.
	TCPIdleTimeout time.Duration
	// ForwardAny answers ANY queries like any other type. Zero (false):
	// an ANY query gets the RFC 8482 answer, one synthesized HINFO record
	// "RFC8482", without asking an upstream.
	ForwardAny bool
}

// Defaults of Access.
const (
	defaultMaxTCPPerClient = 16
	defaultTCPIdleTimeout  = 10 * time.Second
)

// access is an Access with defaults applied; the filter holds the current
// one in an atomic pointer.
type access struct {
	allowed      []netip.Prefix
	maxPerClient int
	idle         time.Duration
	forwardAny   bool
}

var loopbackPrefixes = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// WithDefaults returns a with every zero field that has a default set to
// it, as New and SetAccess apply them.
func (a Access) WithDefaults() Access {
	if len(a.AllowedClients) == 0 {
		a.AllowedClients = slices.Clone(loopbackPrefixes)
	}
	if a.MaxTCPPerClient <= 0 {
		a.MaxTCPPerClient = defaultMaxTCPPerClient
	}
	if a.TCPIdleTimeout <= 0 {
		a.TCPIdleTimeout = defaultTCPIdleTimeout
	}
	return a
}

func newAccess(a Access) *access {
	a = a.WithDefaults()
	ac := &access{maxPerClient: a.MaxTCPPerClient, idle: a.TCPIdleTimeout, forwardAny: a.ForwardAny}
	for _, p := range a.AllowedClients {
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		ac.allowed = append(ac.allowed, p.Masked())
	}
	return ac
}

// allows reports whether client (unmapped) may query the filter.
func (a *access) allows(client netip.Addr) bool {
	for _, p := range a.allowed {
		if p.Contains(client) {
			return true
		}
	}
	return false
}

// SetAccess replaces the access settings while the filter serves: new
// queries and new TCP connections follow them at once, and open TCP
// connections waiting for a query get the new idle timeout counted from
// their last query (so a shorter one closes them at once when they have
// waited longer already). Connections a client holds beyond a lower
// MaxTCPPerClient stay until they end.
func (f *Filter) SetAccess(a Access) {
	ac := newAccess(a)
	f.access.Store(ac)
	f.mu.Lock()
	defer f.mu.Unlock()
	for tc := range f.tcpConns {
		if since := tc.idleSince.Load(); since != 0 {
			tc.c.SetReadDeadline(time.Unix(0, since).Add(ac.idle))
		}
	}
}

// clientKey is the unit the TCP connection limit counts by: an IPv4
// address, or the /64 of an IPv6 address (one host can use many addresses
// of its network).
func clientKey(a netip.Addr) netip.Addr {
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}
