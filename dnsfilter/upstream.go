package dnsfilter

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
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

// Kinds of upstream errors, the values of the kind label. "mismatch"
// counts the datagrams dropped because they did not answer the query
// outstanding on their socket (another ID, another question, another
// source, not a response, unreadable), and the TCP and TLS answers that
// did not match.
var upstreamErrorKinds = []string{"timeout", "network", "servfail", "refused", "formerr", "truncated", "mismatch"}

const (
	errTimeout = iota
	errNetwork
	errServfail
	errRefused
	errFormerr
	errTruncated
	errMismatch
	numErrorKinds
)

// failThreshold is the number of consecutive failures that marks an
// upstream down until it answers again (a probe or a query).
const failThreshold = 3

// upstream is one configured resolver.
type upstream struct {
	name string
	addr string
	// sockets are the UDP sockets of plain DNS (nil for DNS over TLS);
	// tcp is the client of the retry over TCP when a UDP answer is
	// truncated.
	sockets *udpSockets
	tcp     *dns.Client
	// tls is the client of DNS over TLS (nil for plain DNS); idle holds
	// its open connections for reuse, so that a cache miss does not pay a
	// TLS handshake.
	tls   *dns.Client
	idle  chan *dns.Conn
	fails atomic.Int32
	// lastOK is when the active probe last got an answer (Unix ns).
	lastOK atomic.Int64

	up       prometheus.Gauge
	duration prometheus.Observer
	errors   [numErrorKinds]prometheus.Counter
}

func newUpstream(name string, timeout time.Duration, m *metrics) *upstream {
	a, _ := parseUpstream(name) // validated by settings
	u := &upstream{name: name, addr: a.addr}
	if a.tls {
		u.tls = &dns.Client{Net: "tcp-tls", Timeout: timeout, TLSConfig: &tls.Config{ServerName: a.serverName, MinVersion: tls.VersionTLS12}}
		u.idle = make(chan *dns.Conn, maxIdleTLS)
	} else {
		u.sockets = newUDPSockets(a.addr)
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

// errNoMatch is returned when a TCP or TLS answer does not match the
// query.
var errNoMatch = errors.New("answer to another query")

// exchange sends m to u once (with a TCP retry when the UDP answer is
// truncated) and classifies failures. m gets a new random ID for each
// message sent.
func (u *upstream) exchange(ctx context.Context, m *dns.Msg, timeout time.Duration) (*dns.Msg, int, error) {
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var r *dns.Msg
	var err error
	m.Id = dns.Id()
	if u.tls != nil {
		r, err = u.exchangeTLS(tctx, m)
	} else {
		r, err = u.sockets.exchange(tctx, m, u.errors[errMismatch])
		if err == nil && r.Truncated {
			u.errors[errTruncated].Inc()
			m.Id = dns.Id()
			r, _, err = u.tcp.ExchangeContext(tctx, m, u.addr)
		}
	}
	u.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			return nil, errTimeout, err
		}
		return nil, errNetwork, err
	}
	if r.Id != m.Id || !matchesQuery(m, r) {
		return nil, errMismatch, errNoMatch
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

// matchesQuery reports whether r answers q: a response with the same
// question (the name compared without regard to case). An error answer
// (SERVFAIL, REFUSED, FORMERR, NOTIMP) may omit the question; it is never
// cached, it only moves the query on to the next upstream.
func matchesQuery(q, r *dns.Msg) bool {
	if !r.Response {
		return false
	}
	if len(r.Question) == 0 {
		switch r.Rcode {
		case dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeFormatError, dns.RcodeNotImplemented:
			return true
		}
		return false
	}
	if len(r.Question) != 1 || len(q.Question) != 1 {
		return false
	}
	a, b := &q.Question[0], &r.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
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
			if conn, err = u.tls.DialContext(ctx, u.addr); err != nil {
				return nil, err
			}
		}
		r, _, err := u.tls.ExchangeWithConnContext(ctx, m, conn)
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

// Bounds of the UDP sockets of one upstream. A socket carries one query
// at a time and is closed after udpMaxUses queries or udpMaxAge, whichever
// comes first, so that the source port keeps changing and a port someone
// learnt is soon worthless; at most udpMaxIdle wait for the next query.
const (
	udpMaxUses = 100
	udpMaxAge  = 5 * time.Second
	udpMaxIdle = 32
)

// udpSockets are the connected UDP sockets of one upstream. Each is bound
// by the kernel to a random ephemeral port when it is opened, and carries
// one query at a time with a random ID: an answer must come from the
// upstream's address and port (the kernel drops other sources on a
// connected socket, and the source is checked again), carry the query's
// ID and question, and be a response; any other datagram is counted and
// dropped, never taken for the answer, and the socket is closed after the
// exchange so that its port is not used again. Datagrams that reach an
// idle socket are found before its next query is sent (drain), counted,
// and the socket closed. A socket that timed out or failed is closed too.
// This is how the CoreDNS forward plugin reuses sockets (one query per
// socket at a time, expiry), with the answer checks of a recursive
// resolver (unbound: ID, source and question) and a bound on what one
// port may carry; unbound itself opens a socket per query.
type udpSockets struct {
	addr    string
	maxUses int
	maxAge  time.Duration

	mu sync.Mutex
	// idle is first in, first out, so that every socket gets its turn
	// and none outlives maxAge by much while queries flow.
	idle []*udpConn
	bufs sync.Pool
	// opened counts the sockets opened.
	opened atomic.Int64
}

// udpConn is one connected UDP socket.
type udpConn struct {
	c    *net.UDPConn
	peer netip.AddrPort
	born time.Time
	uses int
}

func newUDPSockets(addr string) *udpSockets {
	p := &udpSockets{addr: addr, maxUses: udpMaxUses, maxAge: udpMaxAge}
	p.bufs.New = func() any { return new([dns.MaxMsgSize]byte) }
	return p
}

// get returns an idle socket young enough on which nothing arrived while
// it waited, or opens one. Datagrams found waiting are counted on dropped
// and their socket closed: between two queries nothing may reach a
// socket, and forged answers queued in advance must not be read as the
// answer to the next query.
func (p *udpSockets) get(ctx context.Context, dropped prometheus.Counter) (*udpConn, bool, error) {
	now := time.Now()
	for {
		p.mu.Lock()
		if len(p.idle) == 0 {
			p.mu.Unlock()
			break
		}
		c := p.idle[0]
		p.idle[0] = nil
		p.idle = p.idle[1:]
		p.mu.Unlock()
		if now.Sub(c.born) >= p.maxAge {
			c.c.Close()
			continue
		}
		n, clean := drain(c.c)
		if n > 0 {
			dropped.Add(float64(n))
		}
		if !clean {
			c.c.Close()
			continue
		}
		return c, true, nil
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "udp", p.addr)
	if err != nil {
		return nil, false, err
	}
	uc := nc.(*net.UDPConn)
	p.opened.Add(1)
	peer := uc.RemoteAddr().(*net.UDPAddr).AddrPort()
	return &udpConn{c: uc, peer: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()), born: now}, false, nil
}

// put keeps c for the next query, or closes it when it is spent, too old,
// when too many wait already or when sockets are not reused (drain).
func (p *udpSockets) put(c *udpConn) {
	if c.uses >= p.maxUses || time.Since(c.born) >= p.maxAge || !udpReuse {
		c.c.Close()
		return
	}
	p.mu.Lock()
	if len(p.idle) < udpMaxIdle {
		if len(p.idle) == cap(p.idle) {
			// Move the queue to the front of its array before it grows.
			p.idle = append(make([]*udpConn, 0, udpMaxIdle), p.idle...)
		}
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		c.c.Close()
	}
}

// idleLen is the number of sockets waiting for a query.
func (p *udpSockets) idleLen() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// exchange sends m (whose ID the caller chose at random) on a socket and
// waits until ctx ends for the datagram that answers it, counting on
// dropped each datagram that does not. A reused socket that fails at once
// (an ICMP error left by an earlier datagram) is replaced by a new one.
func (p *udpSockets) exchange(ctx context.Context, m *dns.Msg, dropped prometheus.Counter) (*dns.Msg, error) {
	pkt, err := m.Pack()
	if err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(udpMaxAge)
	}
	for {
		c, reused, err := p.get(ctx, dropped)
		if err != nil {
			return nil, err
		}
		c.uses++
		c.c.SetDeadline(deadline)
		r, clean, err := p.roundTrip(c, pkt, m, dropped)
		switch {
		case err == nil && clean:
			p.put(c)
			return r, nil
		case err == nil:
			// Something else reached this port: do not use it again.
			c.c.Close()
			return r, nil
		}
		c.c.Close()
		if reused && !errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
			continue
		}
		return nil, err
	}
}

// roundTrip writes pkt on c and reads until the answer to m. clean is
// false when a datagram was dropped meanwhile.
func (p *udpSockets) roundTrip(c *udpConn, pkt []byte, m *dns.Msg, dropped prometheus.Counter) (*dns.Msg, bool, error) {
	if _, err := c.c.Write(pkt); err != nil {
		return nil, true, err
	}
	buf := p.bufs.Get().(*[dns.MaxMsgSize]byte)
	defer p.bufs.Put(buf)
	clean := true
	for {
		n, from, err := c.c.ReadFromUDPAddrPort(buf[:])
		if err != nil {
			return nil, clean, err
		}
		if r := answerFrom(buf[:n], from, c.peer, m); r != nil {
			return r, clean, nil
		}
		dropped.Inc()
		clean = false
	}
}

// answerFrom returns the message in pkt if it came from peer and answers
// m (same ID and question), or nil.
func answerFrom(pkt []byte, from, peer netip.AddrPort, m *dns.Msg) *dns.Msg {
	if from.Addr().Unmap() != peer.Addr() || from.Port() != peer.Port() {
		return nil
	}
	if len(pkt) < headerLen || binary.BigEndian.Uint16(pkt) != m.Id || binary.BigEndian.Uint16(pkt[2:])&flagQR == 0 {
		return nil
	}
	r := new(dns.Msg)
	if err := r.Unpack(pkt); err != nil || !matchesQuery(m, r) {
		return nil
	}
	return r
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
