package proxy

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/balise-net/balise/internal/identity"
	"github.com/balise-net/balise/internal/policy"
)

// Auth learns who is asking (Options.Auth); identity.Service implements
// it with Kerberos, the directory and the address bindings.
//
// Identity is asked for sparingly, for privacy (Quebec's Law 25) and for
// cost: only for a listed host whose verdict could change with who asks
// (policy.IdentityMatters: some rule or live grant for that service names
// a user or a directory group) and that the workstation's own decision
// blocks, and only for clients in AuthClients. Unlisted browsing is never
// challenged nor tied to a person, and costs nothing more.
type Auth interface {
	// Verify checks a Negotiate header value (Proxy-Authorization on the
	// proxy, Authorization on the portal's sign-in) sent by client: the
	// user, the header value to send back, and when the ticket ends.
	Verify(header string, client netip.Addr) (identity.Verified, error)
	// Groups returns user's directory groups, waiting at most the
	// directory's timeout; nil when none are known in time.
	Groups(ctx context.Context, user string) []string
	// Bind records that user authenticated from client at now (the DNS
	// filter and the transparent proxy then decide for that user).
	Bind(client netip.Addr, user string, now time.Time)
	// Bound returns the user bound to client, while exactly one is, with
	// the groups last known, without waiting (transparent mode).
	Bound(client netip.Addr, now time.Time) (user string, groups []string, ok bool)
	// LogName is how user appears in decision lines ("" for none).
	LogName(user string) string
}

// who is the identity a decision is taken for: empty for a workstation
// decided by its address alone.
type who struct {
	user   string
	groups []string
	// expires is when the ticket that proved user ends (zero: never
	// checked, e.g. a binding): past it the connection is asked again.
	expires time.Time
}

// query is the engine's question for host from client as w.
func (w who) query(host string, client netip.Addr, now time.Time) policy.Query {
	return policy.Query{Host: host, Client: client, User: w.user, Groups: w.groups, Time: now}
}

// Authentication outcomes, counted in balise_proxy_authentications_total.
const (
	authChallenged = iota // 407 sent: no credentials for a host that needs them
	authOK                // a ticket verified
	authFailed            // credentials refused (bad, replayed, NTLM...)
	authBound             // transparent: decided for the address's bound user
	numAuthResults
)

var authResultNames = [numAuthResults]string{"challenged", "ok", "failed", "bound"}

// needsIdentity reports whether d, the workstation's own decision about
// a listed host, could change with who asks and the client may be asked.
func (p *Proxy) needsIdentity(s *settings, pol *policy.Policy, client netip.Addr, host string, d policy.Decision, now time.Time) bool {
	if s.Auth == nil || !d.Listed() || d.IP || !s.authClient(client) {
		return false
	}
	if s.AuthAlways {
		return true
	}
	return d.Verdict == policy.Block && pol.IdentityMattersFor(d, now)
}

// identify decides host again for the person behind an explicit-proxy
// request when that could change d (see Auth). The identity comes from the
// connection (browsers authenticate connections) or from the request's
// Proxy-Authorization, which is verified, bound to the client's address
// and kept on the connection. It returns the decision to act on, the
// identity, and true when the client must be challenged (407) because it
// sent no usable credentials.
func (p *Proxy) identify(r *http.Request, client netip.Addr, host string, pol *policy.Policy, d policy.Decision, now time.Time) (policy.Decision, who, bool) {
	s := p.cfg()
	if s.Auth == nil || !d.Listed() {
		return d, who{}, false
	}
	cc := connOf(r)
	if cc != nil {
		if w := cc.identity(); w.user != "" {
			if w.expires.IsZero() || time.Now().Before(w.expires) {
				return pol.Decide(w.query(host, client, now)), w, false
			}
			cc.setIdentity(who{}) // the ticket ended: ask again
		}
	}
	if !p.needsIdentity(s, pol, client, host, d, now) {
		return d, who{}, false
	}
	h := r.Header.Get("Proxy-Authorization")
	if h == "" {
		p.m.auth[authChallenged].Inc()
		return d, who{}, true
	}
	v, err := s.Auth.Verify(h, client)
	if err != nil {
		p.m.auth[authFailed].Inc()
		if ok, dropped := p.refusalLog.Allow(time.Now()); ok {
			p.opts.Logger.Warn("authentication refused", "client", client.String(), "host", host, "error", err.Error(), "not_logged_before", dropped)
		}
		return d, who{}, true
	}
	p.m.auth[authOK].Inc()
	w := who{user: v.User, groups: s.Auth.Groups(r.Context(), v.User), expires: v.Expires}
	s.Auth.Bind(client, v.User, now)
	if cc != nil {
		cc.setIdentity(w)
	}
	return pol.Decide(w.query(host, client, now)), w, false
}

// identifyBound decides host again, in transparent mode, for the user
// bound to the client's address (who signed in on the portal, or
// authenticated on the explicit proxy), when that could change d.
func (p *Proxy) identifyBound(client netip.Addr, host string, pol *policy.Policy, d policy.Decision, now time.Time) (policy.Decision, who) {
	s := p.cfg()
	if !p.needsIdentity(s, pol, client, host, d, now) {
		return d, who{}
	}
	user, groups, ok := s.Auth.Bound(client, now)
	if !ok {
		return d, who{}
	}
	p.m.auth[authBound].Inc()
	w := who{user: user, groups: groups}
	return pol.Decide(w.query(host, client, now)), w
}

// signInOffered reports whether a block page for d should offer the
// portal's sign-in: the verdict could change with who asks and the client
// may authenticate, but its address is bound to nobody.
func (p *Proxy) signInOffered(pol *policy.Policy, client netip.Addr, host string, d policy.Decision, now time.Time) bool {
	s := p.cfg()
	if !p.needsIdentity(s, pol, client, host, d, now) {
		return false
	}
	_, _, ok := s.Auth.Bound(client, now)
	return !ok
}

// logName is how w appears in decision lines.
func (p *Proxy) logName(w who) string {
	if w.user == "" || p.cfg().Auth == nil {
		return ""
	}
	return p.cfg().Auth.LogName(w.user)
}

// challenge407 writes the explicit proxy's 407: Proxy-Authenticate:
// Negotiate, with the block page as its body (what a browser shows when it
// cannot authenticate).
func challenge407(h http.Header, n int) {
	setBlockHeaders(h, n)
	h.Set("Proxy-Authenticate", "Negotiate")
}

// challengeConnect authenticates a CONNECT before its connection is
// hijacked, when its host needs it (see identify): a 407 is written on
// the kept-alive connection, so that the browser answers on it, and true
// returned. On success the identity is kept on the connection for
// hijackConnect and the tunnel.
func (p *Proxy) challengeConnect(w http.ResponseWriter, r *http.Request, client netip.Addr) bool {
	host, _, err := net.SplitHostPort(r.URL.Host)
	if err != nil || host == "" {
		return false // hijackConnect refuses it
	}
	pol := p.opts.Policy.Load()
	now := p.opts.Clock()
	d := pol.Decide(policy.Query{Host: host, Client: client, Time: now})
	if d.Invalid {
		return false
	}
	d, _, challenge := p.identify(r, client, host, pol, d, now)
	if !challenge {
		return false
	}
	p.m.request(modeExplicit, kindConnect, d, -1)
	body := p.blockPage(pol, client, host, d, now, r.Header.Get("Accept-Language"))
	challenge407(w.Header(), len(body))
	w.WriteHeader(http.StatusProxyAuthRequired)
	w.Write(body)
	return true
}
