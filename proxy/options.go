package proxy

import (
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/balise-net/balise/internal/decisionlog"
	"github.com/balise-net/balise/internal/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// Exceptions is the exception-request register's web side.
type Exceptions interface {
	// Form returns the escaped HTML of the request form for a block page
	// (client, decision, host, lang "fr" or "en").
	Form(client netip.Addr, d policy.Decision, host string, lang string) template.HTML
	// ServeHTTP answers requests to the reserved path /.balise/ (form
	// posts). The proxy sets r.RemoteAddr to the client's address before
	// calling.
	http.Handler
}

// ReservedPath is the path prefix Balise answers itself on blocked hosts
// (and on its portal): the block page's form posts there.
const ReservedPath = "/.balise/"

// Options configure a Proxy. Only Policy is required; every other zero
// value has the default stated on its field. Proxy.Reconfigure applies a
// new Options to a running proxy; the fields it keeps from New are listed
// on that method.
type Options struct {
	// Policy holds the current policy; a reload swaps it. Required.
	Policy *atomic.Pointer[policy.Policy]
	// Logger receives operational messages ("listening", errors). Nil:
	// discarded.
	Logger *slog.Logger
	// Registerer receives the proxy's metrics. Nil: a private registry
	// (metrics are kept but not exported).
	Registerer prometheus.Registerer
	// Decisions writes one deduplicated line per decision about a listed
	// host. Nil: no decision lines.
	Decisions *decisionlog.Logger
	// Clock returns the current time for decisions. Nil: time.Now.
	// Timers (idle, lifetime, until) always run on the real clock.
	Clock func() time.Time

	// AllowedClients are the networks allowed to use the proxy. Empty:
	// loopback only (127.0.0.0/8 and ::1). Balise is never an open proxy.
	AllowedClients []netip.Prefix
	// ProxyProtocolFrom are the load balancers that send a PROXY protocol
	// header (v1 or v2): a connection from them must open with one, and
	// the client is the address it carries (for AllowedClients, limits,
	// decisions, identity); a connection from anyone else must not carry
	// one. Transparent listeners still take the original destination from
	// the socket. Reconfigure applies a changed list to the next
	// connections of listeners started with a non-empty one; a listener
	// started without reads no header until the next start. Empty: off,
	// connections are taken as they come (a PROXY header is a bad
	// request).
	ProxyProtocolFrom []netip.Prefix
	// ConnectPorts are the destination ports CONNECT may reach. Empty: 443.
	ConnectPorts []uint16
	// IPLiterals says how tunnels to IP-literal destinations are decided.
	// Zero (IPLiteralsSNI): the ClientHello must carry a server name,
	// decided like any host, and the address is decided too.
	IPLiterals IPLiteralMode
	// OpaquePorts are CONNECT ports whose traffic is not TLS: tunnels to
	// them are decided on the CONNECT host alone, without reading a
	// ClientHello. Empty: none; on every port of ConnectPorts the client's
	// first bytes must be a ClientHello Balise reads, or the tunnel is
	// closed.
	OpaquePorts []uint16

	// Resolver is a DNS server "host:port" used to resolve destinations.
	// Empty: the system resolver.
	Resolver string
	// DialTimeout bounds each connection to a destination. Zero: 10s.
	DialTimeout time.Duration
	// DenyDestinations are networks the proxy never connects to, on top
	// of the ones it always refuses (loopback, link-local, unspecified,
	// multicast, in IPv4-mapped, NAT64, 6to4 and Teredo forms too, and
	// Balise's own listeners). Checked on every address dialled, after
	// resolution. Nil: only those.
	DenyDestinations []netip.Prefix
	// AllowDestinations exempt networks from the always-refused set (a
	// lab, a test origin on loopback); never Balise's own listeners nor
	// DenyDestinations. Nil: no exemption.
	AllowDestinations []netip.Prefix
	// OwnListeners are the addresses of Balise's other listeners (DNS,
	// metrics, console): the proxy never connects to them, nor, for a
	// wildcard address, to any address of this host on that port,
	// whatever AllowDestinations says. The proxy's own listeners are added
	// as they start. Nil: only those.
	OwnListeners []netip.AddrPort

	// Parent is an upstream HTTP proxy every request and tunnel goes
	// through (CONNECT for tunnels); destinations are resolved through
	// Resolver and checked (DenyDestinations...) before they are handed
	// over. Nil: connect directly.
	Parent *url.URL
	// ParentCredentialsFile holds "user:password" for the parent proxy
	// (Basic authentication). Empty: no credentials. Read once by New.
	ParentCredentialsFile string

	// IdleTimeout closes tunnels that carried no byte in either direction
	// for this long, and idle keep-alive client connections. Zero: 5m.
	IdleTimeout time.Duration
	// MaxTunnelLifetime closes any tunnel this long after it opened.
	// Zero: 12h.
	MaxTunnelLifetime time.Duration
	// HeaderTimeout bounds reading a request's headers and a tunnel's
	// TLS ClientHello. Zero: 10s.
	HeaderTimeout time.Duration
	// MaxHeaderBytes bounds a request's headers. Zero: 65536.
	MaxHeaderBytes int
	// MaxTunnelsPerClient caps the concurrent tunnels of one client
	// address. Zero: 256. Negative: no cap.
	MaxTunnelsPerClient int

	// PortalURL is the public address of the portal, used for links on
	// block pages. Empty: no link.
	PortalURL string
	// PACProxy is the "host:port" written in the PAC file. Empty: the
	// address the PAC file was fetched from.
	PACProxy string
	// ServiceHosts maps a listed service id to one of its host names; the
	// portal decides on it to show the caller what it may reach now. A
	// service missing here is decided on a host Balise has seen for it
	// since it started, or shown without a verdict. Nil: only those.
	ServiceHosts map[string]string
	// DirectDomains go DIRECT in the PAC file (with their subdomains).
	// Nil: none.
	DirectDomains []string
	// DirectNetworks go DIRECT in the PAC file. Nil: none.
	DirectNetworks []netip.Prefix

	// CA is the institution's CA used to show the block page on blocked
	// HTTPS connections (and only on those). Nil: blocked CONNECTs get a
	// 403 with a Proxy-Status header.
	CA *CA
	// LeafValidity is the validity of block-page certificates. Zero: 24h.
	LeafValidity time.Duration
	// CertCacheSize bounds the block-page certificate cache. Zero: 1024.
	CertCacheSize int

	// Institution is the institution's name shown on the block page.
	// Empty: not shown.
	Institution string
	// BlockMessage and BlockMessageEN explain the institution's rule on
	// the block page (French, English). Empty: a generic sentence.
	BlockMessage   string
	BlockMessageEN string
	// TPROXY makes transparent listeners take a connection's original
	// destination from its local address (iptables/nftables TPROXY, with
	// IP_TRANSPARENT listeners) instead of SO_ORIGINAL_DST (REDIRECT).
	// False: REDIRECT (transparent_mode = "redirect").
	TPROXY bool
	// AllowNoSNI lets tunnels, explicit and transparent, whose ClientHello
	// carries no server name through, decided on the CONNECT host or the
	// destination address. False (no_sni = "deny"): they are refused,
	// except on OpaquePorts.
	AllowNoSNI bool
	// OriginalDestination returns where a redirected connection was going.
	// Nil: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST, or the local address
	// with TPROXY.
	OriginalDestination func(net.Conn) (netip.AddrPort, error)

	// Exceptions is the exception-request register. Nil: no form on the
	// block page and /.balise/ answers 404.
	Exceptions Exceptions

	// Auth learns who is asking (Kerberos on the explicit proxy and the
	// portal's sign-in, the address bindings in transparent mode); see
	// Auth for when it is asked. Nil: every decision is by address.
	Auth Auth
	// AuthClients are the clients that may be asked who they are
	// (proxy.auth.clients). Nil: nobody is, even with Auth set.
	AuthClients []netip.Prefix
	// AuthAlways challenges every request from AuthClients to a listed
	// host (proxy.auth.challenge = "always"). False ("listed"): only
	// those the workstation's decision blocks and whose verdict could
	// change with who asks.
	AuthAlways bool
}

// IPLiteralMode is how tunnels to IP-literal destinations are decided
// (config proxy.ip_literals). Plain HTTP to an IP literal is always
// decided on the address.
type IPLiteralMode int

const (
	// IPLiteralsSNI (the zero value, "sni"): a tunnel to an IP literal
	// must carry a TLS server name (not itself an address), which is
	// decided like any host; the address is decided too. On OpaquePorts
	// the address alone decides.
	IPLiteralsSNI IPLiteralMode = iota
	// IPLiteralsAllow ("allow"): decided on the address; a server name,
	// when there is one, is still checked like on any tunnel.
	IPLiteralsAllow
	// IPLiteralsDeny ("deny"): refused unless the server name is a
	// listed, allowed service.
	IPLiteralsDeny
)

// WithDefaults returns o with every zero field that has a default set to
// it, as New applies them. Config's defaults equal these (a test in
// cmd/balise checks it).
func (o Options) WithDefaults() Options {
	o.setDefaults()
	return o
}

// setDefaults gives every zero field its documented default.
func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if len(o.AllowedClients) == 0 {
		o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	if len(o.ConnectPorts) == 0 {
		o.ConnectPorts = []uint16{443}
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 5 * time.Minute
	}
	if o.MaxTunnelLifetime <= 0 {
		o.MaxTunnelLifetime = 12 * time.Hour
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = 10 * time.Second
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 65536
	}
	if o.MaxTunnelsPerClient == 0 {
		o.MaxTunnelsPerClient = 256
	}
	if o.LeafValidity <= 0 {
		o.LeafValidity = 24 * time.Hour
	}
	if o.CertCacheSize <= 0 {
		o.CertCacheSize = 1024
	}
}
