package config

import (
	"net/netip"
	"time"
)

// DNSSection is [dns]: the DNS filter. Each field already holds what the
// field of the same name in dnsfilter.Options (or dnsfilter.Access) wants
// (cmd/balise copies it): booleans are held in the option's sense
// (strip_ech = true is KeepECH = false) and a key's 0 that means "off"
// (cache_size) is held as -1, as the field's comment says.
type DNSSection struct {
	// Listen are the UDP and TCP addresses (default ["127.0.0.1:5353"]);
	// an empty array turns the filter off.
	Listen []string
	// Upstreams are resolvers, tried in order: "host:port" (plain DNS) or
	// "tls://host:853[#servername]" (DNS over TLS). Default
	// ["9.9.9.9:53", "149.112.112.112:53"].
	Upstreams []string
	// Timeout bounds one try of one upstream (default 1s).
	Timeout time.Duration
	// BlockResponse is "nxdomain", "refused", "null" or "sinkhole"
	// (default "nxdomain").
	BlockResponse string
	// Sinkhole are the addresses answered for blocked names when
	// BlockResponse is "sinkhole" (required then).
	Sinkhole []netip.Addr
	// KeepECH is the opposite of strip_ech (default true: ECH parameters
	// are removed from HTTPS/SVCB answers, KeepECH false).
	KeepECH bool
	// CacheSize bounds the answer cache in entries (default 100000). The
	// file's 0 (no cache) is held as -1, the value dnsfilter.Options uses
	// for no cache.
	CacheSize int
	// MinTTL and MaxTTL clamp cached answers' TTLs (default 0s and 24h).
	MinTTL time.Duration
	MaxTTL time.Duration
	// BlockedTTL is the TTL of blocked answers at most (default 60s).
	BlockedTTL time.Duration
	// NegativeTTL caps the caching of NXDOMAIN/NODATA (default 1h).
	NegativeTTL time.Duration
	// DisableStale is the opposite of serve_stale (default true: expired
	// cache entries are answered when every upstream fails, DisableStale
	// false).
	DisableStale bool
	// StaleTTL is the TTL of stale answers (default 30s).
	StaleTTL time.Duration
	// StaleMaxAge is how long past expiry an answer may be served stale
	// (default 24h).
	StaleMaxAge time.Duration
	// RateLimit is queries per second per client (default 200; 0 in the
	// file sets NoRateLimit and leaves RateLimit at 0); RateBurst the burst
	// (default the larger of 400 and RateLimit).
	RateLimit float64
	RateBurst int
	// NoRateLimit is rate_limit = 0: clients are not limited.
	NoRateLimit bool
	// AllowedClients may query the filter; others get REFUSED (default
	// 127.0.0.0/8 and ::1/128). Required when Listen reaches beyond
	// loopback.
	AllowedClients []netip.Prefix
	// MaxTCPPerClient bounds one client's concurrent TCP connections
	// (default 16).
	MaxTCPPerClient int
	// TCPIdleTimeout closes a TCP connection idle this long (default 10s).
	TCPIdleTimeout time.Duration
	// ForwardAny is the opposite of refuse_any (default true: ANY
	// queries get the RFC 8482 HINFO answer instead of being forwarded,
	// ForwardAny false).
	ForwardAny bool
	// RateLimitExempt are clients not rate limited (e.g. forwarding DNS
	// servers).
	RateLimitExempt []netip.Prefix
	// UDPSockets is the number of SO_REUSEPORT sockets per UDP address
	// (default 0: one per CPU, as in dnsfilter.Options).
	UDPSockets int
	// Forward sends zones to their own upstreams ([[dns.forward]]).
	Forward []Forward
}

// Forward is one [[dns.forward]]: queries in Zone (and below) go to
// Upstreams instead of the default ones.
type Forward struct {
	// Zone is a normalized domain name.
	Zone string
	// Upstreams use the syntax of DNSSection.Upstreams.
	Upstreams []string
}
