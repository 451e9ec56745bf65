package config

import (
	"net/netip"
	"net/url"
	"time"
)

// ProxySection is [proxy]: the explicit and transparent HTTP(S) proxy.
// Each field already holds what the field of the same name in
// proxy.Options wants (cmd/balise copies it): where a key's file value
// and the option's meaning differ (max_tunnels_per_client = 0), the
// field's comment says how it was mapped.
type ProxySection struct {
	// Listen are the explicit proxy's addresses (default
	// ["127.0.0.1:3128"]); an empty array turns it off.
	Listen []string
	// AllowedClients may use the proxy (default 127.0.0.0/8 and ::1/128).
	AllowedClients []netip.Prefix
	// ProxyProtocolFrom are the load balancers that send a PROXY protocol
	// header, v1 or v2 (default none: off). A connection from them must
	// open with one and is decided for the address it carries; anyone
	// else must not send one. Not with TransparentHTTP/TransparentHTTPS
	// (an error): behind a balancer the socket's original destination is
	// lost.
	ProxyProtocolFrom []netip.Prefix
	// ConnectPorts are the ports CONNECT may reach (default [443]).
	ConnectPorts []uint16
	// Resolver is a DNS server (host:port) used to reach destinations
	// ("" = the system resolver).
	Resolver string
	// IPLiterals is "allow", "sni" or "deny" (default "sni"): a tunnel to
	// an IP literal must carry a TLS server name, decided like any host
	// ("sni"); is decided on the address alone ("allow"); or is refused
	// unless its server name is a listed, allowed service ("deny"). Plain
	// HTTP to an IP literal is decided on the address.
	IPLiterals string
	// Parent is an upstream proxy URL (http://host:port, "" = direct), as
	// written; ParentURL is it parsed (nil = direct).
	Parent    string
	ParentURL *url.URL
	// ParentCredentialsFile holds "user:password" for Parent ("" = none).
	ParentCredentialsFile string
	// PortalURL is the public URL of the portal ("" = derived from the
	// request).
	PortalURL string
	// TransparentHTTP and TransparentHTTPS are the listeners for
	// redirected port-80 and port-443 traffic (empty = off).
	TransparentHTTP  []string
	TransparentHTTPS []string
	// TransparentMode is "redirect" or "tproxy" (default "redirect");
	// TPROXY is TransparentMode == "tproxy".
	TransparentMode string
	TPROXY          bool
	// NoSNI is "allow" or "deny" (default "deny"): tunnels, explicit and
	// transparent, whose ClientHello carries no server name (opaque
	// ports excepted). AllowNoSNI is NoSNI == "allow".
	NoSNI      string
	AllowNoSNI bool
	// OpaquePorts are CONNECT ports whose traffic is not TLS (default
	// none; each must be in ConnectPorts). On every other port the
	// client's first bytes must be a TLS ClientHello.
	OpaquePorts []uint16
	// DialTimeout bounds connecting to a destination (default 10s).
	DialTimeout time.Duration
	// IdleTimeout closes idle tunnels and keep-alive connections
	// (default 5m).
	IdleTimeout time.Duration
	// MaxTunnelLifetime closes any tunnel after this long (default 12h).
	MaxTunnelLifetime time.Duration
	// HeaderTimeout bounds reading a request's header (default 10s).
	HeaderTimeout time.Duration
	// MaxHeaderBytes bounds a request's header size (default 65536).
	MaxHeaderBytes int
	// MaxTunnelsPerClient bounds concurrent tunnels per client address
	// (default 256). The file's 0 (unlimited) is held as -1, the value
	// proxy.Options uses for no cap.
	MaxTunnelsPerClient int
	// DirectDomains and DirectNetworks go DIRECT in the PAC file.
	DirectDomains  []string
	DirectNetworks []netip.Prefix
	// DenyDestinations are networks the proxy never connects to, on top
	// of the ones always refused (loopback, link-local, unspecified,
	// multicast and their mapped forms, Balise's own listeners).
	DenyDestinations []netip.Prefix
	// AllowDestinations exempt networks from the always-refused set (a
	// lab, a test origin on loopback); never Balise's own listeners.
	AllowDestinations []netip.Prefix
	// TLS is [proxy.tls].
	TLS ProxyTLS
	// Auth is [proxy.auth] (see config/identity.go).
	Auth ProxyAuth
}

// ProxyTLS is [proxy.tls]: the institution's CA, used only to show the
// block page on blocked HTTPS connections.
type ProxyTLS struct {
	// CACert and CAKey are PEM files ("" = no interception: blocked HTTPS
	// gets a 403 with a Proxy-Status header).
	CACert string
	CAKey  string
	// LeafValidity is the lifetime of minted certificates (default 24h).
	LeafValidity time.Duration
	// CertCacheSize bounds the cache of minted certificates (default 1024).
	CertCacheSize int
}
