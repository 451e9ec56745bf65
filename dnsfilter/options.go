package dnsfilter

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/balise-net/balise/internal/decisionlog"
	"github.com/balise-net/balise/internal/policy"
)

// Block responses, the values of Options.BlockResponse.
const (
	BlockNXDOMAIN = "nxdomain"
	BlockRefused  = "refused"
	BlockNull     = "null"
	BlockSinkhole = "sinkhole"
)

// Options configure a Filter. Only Listen, Upstreams and Policy are
// required; every other field's zero value is stated.
type Options struct {
	// Listen are the addresses ("host:port", IPv4 or IPv6) to serve on,
	// each over UDP and TCP. Port 0 picks a free port, the same for UDP
	// and TCP. Empty: error.
	Listen []string
	// UDPSockets is the number of SO_REUSEPORT UDP sockets per listen
	// address, each with its own reading goroutine. Zero: one per CPU.
	// Systems without SO_REUSEPORT always use one.
	UDPSockets int
	// UDPNoBatch reads and writes one datagram per system call instead of
	// batches (recvmmsg/sendmmsg on Linux). Zero (false): batches.
	UDPNoBatch bool

	// Upstreams are the resolvers, tried in order: "host:port" or "host"
	// (plain DNS, port 53) or "tls://host[:port][#servername]" (DNS over
	// TLS, port 853). Empty: error.
	Upstreams []string
	// Forward sends the names of some zones to their own upstreams
	// (conditional forwarding, for Active Directory and internal zones).
	// The policy never applies to those names. Nil: none.
	Forward []Forward
	// Timeout bounds one try of one upstream. Zero: 1 s.
	Timeout time.Duration
	// ClientTimeout bounds how long a client waits for an answer when the
	// upstreams are slow or down: past it, a stale answer or SERVFAIL is
	// sent (RFC 8767's client response timer). Zero: 1.8 s.
	ClientTimeout time.Duration
	// ProbeInterval is the period of the active health probe of every
	// upstream. Zero: 5 s.
	ProbeInterval time.Duration

	// BlockResponse is how blocked names are answered: "nxdomain",
	// "refused", "null" (0.0.0.0 and ::, NODATA for other types) or
	// "sinkhole" (the Sinkhole addresses). Empty: "nxdomain".
	BlockResponse string
	// Sinkhole are the addresses of the block-page server, answered to A
	// and AAAA queries for blocked names when BlockResponse is "sinkhole"
	// (required then). Nil: none.
	Sinkhole []netip.Addr
	// BlockedTTL is the largest TTL of a blocked answer. Zero: 60 s.
	BlockedTTL time.Duration
	// KeepECH keeps the ech parameter of HTTPS and SVCB answers. Zero
	// (false): it is removed, so that TLS handshakes keep a readable SNI.
	KeepECH bool

	// CacheSize bounds the answer cache in entries. Zero: 100000
	// (DefaultCacheSize). Negative: no cache (and so no stale answers).
	CacheSize int
	// MinTTL and MaxTTL bound the TTLs of cached answers. Zero MinTTL: no
	// floor. Zero MaxTTL: 24 h.
	MinTTL, MaxTTL time.Duration
	// NegativeTTL caps how long NXDOMAIN and NODATA answers are cached
	// (RFC 2308). Zero: 1 h.
	NegativeTTL time.Duration
	// DisableStale turns serve-stale off. Zero (false): when every upstream
	// fails, expired answers are served (RFC 8767).
	DisableStale bool
	// StaleTTL is the TTL of stale answers. Zero: 30 s.
	StaleTTL time.Duration
	// StaleMaxAge is how long past its expiry an answer may be served
	// stale. Zero: 24 h.
	StaleMaxAge time.Duration

	// RateLimit is the number of queries per second each client may send
	// (token bucket). Zero: 200. Limited queries get REFUSED.
	RateLimit float64
	// RateBurst is the bucket's size. Zero: twice RateLimit.
	RateBurst int
	// NoRateLimit turns the per-client limit off (rate_limit = 0 in the
	// configuration). False: clients are limited to RateLimit.
	NoRateLimit bool
	// RateLimitExempt are clients never limited, such as DNS servers that
	// forward their own clients' queries to Balise. Nil: none.
	RateLimitExempt []netip.Prefix

	// Access says who may query the filter (AllowedClients), bounds DNS
	// over TCP per client, and says how ANY queries are answered; see
	// Access for each field's zero value (loopback only, 16 connections
	// per client, 10 s idle timeout, RFC 8482 answer to ANY). SetAccess
	// changes it while serving.
	Access Access

	// Policy holds the current policy; Decide is called on what it points
	// to for every query, so storing a new policy is a reload. Required.
	Policy *atomic.Pointer[policy.Policy]
	// Logger receives the listening lines and operational errors. Nil:
	// nothing is logged.
	Logger *slog.Logger
	// Registerer receives the balise_dns_* metrics. Nil: metrics are kept
	// but not registered anywhere.
	Registerer prometheus.Registerer
	// DecisionLog receives one entry per decision about a listed name
	// (front "dns"). Nil: decisions are not logged.
	DecisionLog *decisionlog.Logger
	// Clock is the time given to the policy and used for TTLs. Nil:
	// time.Now.
	Clock func() time.Time
	// Identity returns the user bound to a client address (the one user
	// last authenticated from it on the proxy, while the address is not
	// shared) and that user's directory groups as last known, without
	// waiting on the directory. It is asked only for listed names whose
	// verdict could change with who asks. DNS decision lines never carry
	// the user. Nil: every query is decided by network groups.
	Identity func(client netip.Addr, now time.Time) (user string, groups []string, ok bool)
}

// Forward is one conditional-forwarding zone.
type Forward struct {
	// Zone is the domain whose names (the apex and every name below it)
	// go to Upstreams, such as "cisss.local" or "_msdcs.cisss.local".
	Zone string
	// Upstreams use the syntax of Options.Upstreams. Empty: error.
	Upstreams []string
}

// settings are the Options with defaults applied.
type settings struct {
	Options
	blockResp   int
	sinkhole4   []netip.Addr
	sinkhole6   []netip.Addr
	blockedTTL  uint32
	minTTL      uint32
	maxTTL      uint32
	negativeTTL uint32
	staleTTL    uint32
}

const (
	respNXDOMAIN = iota
	respRefused
	respNull
	respSinkhole
)

func (o Options) settings() (*settings, error) {
	s := &settings{Options: o}
	var errs []error
	if len(o.Listen) == 0 {
		errs = append(errs, errors.New("listen: no address"))
	}
	if len(o.Upstreams) == 0 {
		errs = append(errs, errors.New("upstreams: no upstream"))
	}
	for i, u := range o.Upstreams {
		if _, err := parseUpstream(u); err != nil {
			errs = append(errs, fmt.Errorf("upstreams[%d]: %w", i, err))
		}
	}
	for i, fw := range o.Forward {
		if _, ok := dns.IsDomainName(fw.Zone); !ok || fw.Zone == "" {
			errs = append(errs, fmt.Errorf("forward[%d].zone: invalid zone %q", i, fw.Zone))
		}
		if len(fw.Upstreams) == 0 {
			errs = append(errs, fmt.Errorf("forward[%d].upstreams: no upstream", i))
		}
		for j, u := range fw.Upstreams {
			if _, err := parseUpstream(u); err != nil {
				errs = append(errs, fmt.Errorf("forward[%d].upstreams[%d]: %w", i, j, err))
			}
		}
	}
	if o.Policy == nil {
		errs = append(errs, errors.New("policy: nil pointer"))
	}
	switch strings.ToLower(o.BlockResponse) {
	case "", BlockNXDOMAIN:
		s.blockResp = respNXDOMAIN
	case BlockRefused:
		s.blockResp = respRefused
	case BlockNull:
		s.blockResp = respNull
	case BlockSinkhole:
		s.blockResp = respSinkhole
		if len(o.Sinkhole) == 0 {
			errs = append(errs, errors.New("sinkhole: no address for block_response sinkhole"))
		}
	default:
		errs = append(errs, fmt.Errorf("block_response: unknown value %q (want nxdomain, refused, null or sinkhole)", o.BlockResponse))
	}
	for _, a := range o.Sinkhole {
		a = a.Unmap()
		if a.Is4() {
			s.sinkhole4 = append(s.sinkhole4, a)
		} else if a.Is6() {
			s.sinkhole6 = append(s.sinkhole6, a)
		}
	}
	if o.RateLimit < 0 || o.RateBurst < 0 {
		errs = append(errs, errors.New("rate_limit: negative value"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s.Options = o.WithDefaults()
	s.blockedTTL = seconds(s.BlockedTTL)
	s.minTTL = seconds(s.MinTTL)
	s.maxTTL = seconds(s.MaxTTL)
	s.negativeTTL = seconds(s.NegativeTTL)
	s.staleTTL = seconds(s.StaleTTL)
	if s.minTTL > s.maxTTL {
		s.minTTL = s.maxTTL
	}
	return s, nil
}

// DefaultCacheSize is the answer cache's size when Options.CacheSize is
// zero (config dns.cache_size).
const DefaultCacheSize = 100000

// WithDefaults returns o with every zero field that has a default set to
// it, as New applies them (Access included). Config's defaults equal
// these (a test in cmd/balise checks it).
func (o Options) WithDefaults() Options {
	if o.BlockResponse == "" {
		o.BlockResponse = BlockNXDOMAIN
	}
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.UDPSockets <= 0 {
		o.UDPSockets = runtime.NumCPU()
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.ClientTimeout <= 0 {
		o.ClientTimeout = 1800 * time.Millisecond
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = 5 * time.Second
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = 24 * time.Hour
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = time.Hour
	}
	if o.BlockedTTL <= 0 {
		o.BlockedTTL = time.Minute
	}
	if o.StaleTTL <= 0 {
		o.StaleTTL = 30 * time.Second
	}
	if o.StaleMaxAge <= 0 {
		o.StaleMaxAge = 24 * time.Hour
	}
	if o.NoRateLimit {
		o.RateLimit, o.RateBurst = 0, 0
	} else if o.RateLimit == 0 {
		o.RateLimit = 200
	}
	if o.RateLimit > 0 && o.RateBurst == 0 {
		o.RateBurst = int(2 * o.RateLimit)
		if o.RateBurst < 1 {
			o.RateBurst = 1
		}
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Access = o.Access.WithDefaults()
	return o
}

func seconds(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	if d >= time.Duration(1<<31-1)*time.Second {
		return 1<<31 - 1
	}
	return uint32(d / time.Second)
}
