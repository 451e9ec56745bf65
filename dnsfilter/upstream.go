package dnsfilter

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// upstreamAddr is a parsed upstream string.
type upstreamAddr struct {
	addr       string // host:port
	tls        bool
	serverName string
}

// parseUpstream reads "host", "host:port", "tls://host[:port][#name]".
func parseUpstream(s string) (upstreamAddr, error) {
	var u upstreamAddr
	rest := s
	port := "53"
	if r, ok := strings.CutPrefix(s, "tls://"); ok {
		u.tls, rest, port = true, r, "853"
		if h, name, ok := strings.Cut(rest, "#"); ok {
			rest, u.serverName = h, name
			if name == "" {
				return u, fmt.Errorf("invalid upstream %q: empty server name", s)
			}
		}
	} else if strings.Contains(s, "://") {
		return u, fmt.Errorf("invalid upstream %q: only plain host:port and tls:// are supported", s)
	}
	host, p, err := net.SplitHostPort(rest)
	if err != nil {
		host, p = strings.Trim(rest, "[]"), port
	}
	if host == "" {
		return u, fmt.Errorf("invalid upstream %q: no host", s)
	}
	if n, err := strconv.Atoi(p); err != nil || n <= 0 || n > 65535 {
		return u, fmt.Errorf("invalid upstream %q: bad port %q", s, p)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		if _, ok := dns.IsDomainName(host); !ok {
			return u, fmt.Errorf("invalid upstream %q: bad host %q", s, host)
		}
	}
	if u.tls && u.serverName == "" {
		if _, err := netip.ParseAddr(host); err != nil {
			u.serverName = host
		}
	}
	u.addr = net.JoinHostPort(host, p)
	return u, nil
}

// Kinds of upstream errors, the values of the kind label.
var upstreamErrorKinds = []string{"timeout", "network", "servfail", "refused", "formerr", "truncated"}

const (
	errTimeout = iota
	errNetwork
	errServfail
	errRefused
	errFormerr
	errTruncated
)

// failThreshold is the number of consecutive failures that marks an
// upstream down until it answers again (a probe or a query).
const failThreshold = 3

// upstream is one configured resolver.
type upstream struct {
	name     string
	addr     string
	udp, tcp *dns.Client
	// idle holds open DNS-over-TLS connections for reuse (nil for plain
	// DNS), so that a cache miss does not pay a TLS handshake.
	idle  chan *dns.Conn
	fails atomic.Int32
	// lastOK is when the active probe last got an answer (Unix ns).
	lastOK atomic.Int64

	up       prometheus.Gauge
	duration prometheus.Observer
	errors   [6]prometheus.Counter
}

func newUpstream(name string, timeout time.Duration, m *metrics) *upstream {
	a, _ := parseUpstream(name) // validated by settings
	u := &upstream{name: name, addr: a.addr}
	if a.tls {
		c := &dns.Client{Net: "tcp-tls", Timeout: timeout, TLSConfig: &tls.Config{ServerName: a.serverName, MinVersion: tls.VersionTLS12}}
		u.udp, u.tcp = c, c
		u.idle = make(chan *dns.Conn, maxIdleTLS)
	} else {
		u.udp = &dns.Client{Net: "udp", Timeout: timeout, UDPSize: ednsSize}
		u.tcp = &dns.Client{Net: "tcp", Timeout: timeout}
	}
	u.up = m.upstreamUp.WithLabelValues(name)
	u.up.Set(1)
	u.duration = m.upstreamDuration.WithLabelValues(name)
	for i, k := range upstreamErrorKinds {
		u.errors[i] = m.upstreamErrors.WithLabelValues(name, k)
	}
	return u
}

func (u *upstream) fail(kind int) {
	u.errors[kind].Inc()
	if u.fails.Add(1) >= failThreshold {
		u.up.Set(0)
	}
}

func (u *upstream) ok() {
	if u.fails.Swap(0) >= failThreshold {
		u.up.Set(1)
	}
}

var errAllFailed = errors.New("every upstream failed")

// exchange sends m to u once (with a TCP retry when the UDP answer is
// truncated) and classifies failures.
func (u *upstream) exchange(ctx context.Context, m *dns.Msg, timeout time.Duration) (*dns.Msg, int, error) {
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var r *dns.Msg
	var err error
	if u.idle != nil {
		r, err = u.exchangeTLS(tctx, m)
	} else {
		r, _, err = u.udp.ExchangeContext(tctx, m, u.addr)
	}
	if err == nil && r.Truncated && u.udp != u.tcp {
		u.errors[errTruncated].Inc()
		r, _, err = u.tcp.ExchangeContext(tctx, m, u.addr)
	}
	u.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			return nil, errTimeout, err
		}
		return nil, errNetwork, err
	}
	if r.Id != m.Id {
		return nil, errNetwork, errors.New("answer with another id")
	}
	switch r.Rcode {
	case dns.RcodeServerFailure:
		return nil, errServfail, errors.New("SERVFAIL")
	case dns.RcodeRefused:
		return nil, errRefused, errors.New("REFUSED")
	case dns.RcodeFormatError, dns.RcodeNotImplemented:
		return nil, errFormerr, fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
	}
	return r, 0, nil
}

// maxIdleTLS bounds the idle DNS-over-TLS connections kept per upstream.
const maxIdleTLS = 4

// exchangeTLS sends m on an idle DNS-over-TLS connection if there is one
// (and on a new one if that fails: the server may have closed it), and
// keeps the connection for the next query.
func (u *upstream) exchangeTLS(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	for {
		var conn *dns.Conn
		reused := false
		select {
		case conn = <-u.idle:
			reused = true
		default:
			var err error
			if conn, err = u.udp.DialContext(ctx, u.addr); err != nil {
				return nil, err
			}
		}
		r, _, err := u.udp.ExchangeWithConnContext(ctx, m, conn)
		if err != nil {
			conn.Close()
			if reused && ctx.Err() == nil {
				continue
			}
			return nil, err
		}
		select {
		case u.idle <- conn:
		default:
			conn.Close()
		}
		return r, nil
	}
}

// pool is an ordered list of upstreams with failover.
type pool struct {
	ups     []*upstream
	timeout time.Duration
}

// exchange tries the healthy upstreams in order, then the others, until
// one answers with something other than SERVFAIL, REFUSED or FORMERR.
func (p *pool) exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	var last error = errAllFailed
	for pass := 0; pass < 2; pass++ {
		for _, u := range p.ups {
			if down := u.fails.Load() >= failThreshold; down != (pass == 1) {
				continue
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			m.Id = dns.Id()
			r, kind, err := u.exchange(ctx, m, p.timeout)
			if err != nil {
				u.fail(kind)
				last = fmt.Errorf("%s: %w", u.name, err)
				continue
			}
			u.ok()
			return r, nil
		}
	}
	return nil, last
}

// allDown reports whether every upstream of p is marked down.
func (p *pool) allDown() bool {
	for _, u := range p.ups {
		if u.fails.Load() < failThreshold {
			return false
		}
	}
	return true
}

// probe asks every upstream of p for name/qtype and records who answered.
func (p *pool) probe(ctx context.Context, name string, qtype uint16, now func() time.Time) {
	for _, u := range p.ups {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.SetEdns0(ednsSize, false)
		r, kind, err := u.exchange(ctx, m, p.timeout)
		if err != nil && kind != errRefused {
			u.fail(kind)
			continue
		}
		_ = r
		u.ok()
		u.lastOK.Store(now().UnixNano())
	}
}

// zoneRoute is one conditional-forwarding zone.
type zoneRoute struct {
	zone string // lower case, no final dot
	pool *pool
}

// route returns the pool for host, or nil for the default upstreams. The
// longest matching zone wins.
func routeFor(zones []zoneRoute, host string) *pool {
	var best *zoneRoute
	for i := range zones {
		z := &zones[i]
		if host == z.zone || strings.HasSuffix(host, z.zone) && host[len(host)-len(z.zone)-1] == '.' {
			if best == nil || len(z.zone) > len(best.zone) {
				best = z
			}
		}
	}
	if best == nil {
		return nil
	}
	return best.pool
}
