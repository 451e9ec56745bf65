package proxy

import (
	"bufio"
	"container/list"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Bounds of the resolution cache. They are not configurable: a proxy
// serving a hospital's workstations sees far fewer distinct names in five
// minutes than resolveCacheSize.
const (
	// resolveCacheSize is the most names the cache holds (answers and
	// negative answers together); past it the least recently used name
	// is evicted, in constant time.
	resolveCacheSize = 10000
	// resolveMinTTL and resolveMaxTTL clamp the lifetime of an answer:
	// the smallest TTL of its CNAME chain and address records.
	resolveMinTTL = time.Second
	resolveMaxTTL = 5 * time.Minute
	// resolveMaxNegTTL caps the lifetime of a negative answer (NXDOMAIN,
	// or no address of either family), which is the SOA minimum of the
	// answer (RFC 2308), resolveMinTTL without an SOA.
	resolveMaxNegTTL = 30 * time.Second
	// hostsRecheck is how often the hosts file is checked for changes
	// (as Go's resolver does).
	hostsRecheck = 5 * time.Second
	// maxCNAMEHops bounds the CNAME chain followed in an answer.
	maxCNAMEHops = 16
)

// resolver resolves destination names for the dialer, caching A and AAAA
// answers for their TTL. Its order is that of Go's resolver on a host
// whose nsswitch says "files dns": the hosts file first (re-read when it
// changes, checked at most every hostsRecheck), then "localhost" and its
// subdomains answer loopback without a query (RFC 6761), then DNS through
// the configured server (Options.Resolver) or those of resolv.conf, with
// its search list and ndots. IP literals never reach it. It is safe for
// concurrent use; concurrent lookups of one name share one query.
type resolver struct {
	servers  []string // "host:port", tried in order
	conf     *dns.ClientConfig
	hosts    *hostsFile
	timeout  time.Duration // bounds one lookup, whatever its callers
	now      func() time.Time
	udp, tcp dns.Client

	mu       sync.Mutex
	entries  map[string]*list.Element // of *resolveEntry
	lru      list.List                // front: most recently used
	inflight map[string]*resolveCall
	max      int
}

// resolveEntry is a cached answer: addresses, or a negative answer.
type resolveEntry struct {
	name    string
	addrs   []netip.Addr // nil: negative
	expires time.Time
}

// resolveCall is a lookup under way that later askers wait for.
type resolveCall struct {
	done  chan struct{}
	addrs []netip.Addr
	err   error
}

// newResolver returns a resolver querying server ("host:port"), or the
// servers of resolvConf when server is empty (127.0.0.1:53 and [::1]:53
// when it has none, as Go's resolver does).
func newResolver(server, resolvConf, hostsPath string, timeout time.Duration) *resolver {
	conf, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		conf = &dns.ClientConfig{Ndots: 1, Timeout: 5, Attempts: 2}
	}
	if conf.Timeout <= 0 {
		conf.Timeout = 5
	}
	if conf.Attempts <= 0 {
		conf.Attempts = 2
	}
	r := &resolver{
		conf:     conf,
		hosts:    &hostsFile{path: hostsPath},
		timeout:  timeout,
		now:      time.Now,
		entries:  map[string]*list.Element{},
		inflight: map[string]*resolveCall{},
		max:      resolveCacheSize,
	}
	switch {
	case server != "":
		r.servers = []string{server}
	case len(conf.Servers) > 0:
		for _, s := range conf.Servers {
			r.servers = append(r.servers, net.JoinHostPort(s, conf.Port))
		}
	default:
		r.servers = []string{"127.0.0.1:53", "[::1]:53"}
	}
	per := time.Duration(conf.Timeout) * time.Second
	r.udp = dns.Client{Net: "udp", Timeout: per, UDPSize: dns.DefaultMsgSize}
	r.tcp = dns.Client{Net: "tcp", Timeout: per}
	return r
}

// lookup returns the addresses of host (a name, not an IP literal). A
// failure is a *net.DNSError: IsNotFound for a name without address,
// IsTimeout when no server answered in time. The slice is shared: callers
// must not modify it.
func (r *resolver) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if addrs := r.hosts.lookup(name, r.now()); len(addrs) > 0 {
		return addrs, nil
	}
	if isLocalhostName(name) {
		return []netip.Addr{netip.IPv6Loopback(), netip.AddrFrom4([4]byte{127, 0, 0, 1})}, nil
	}
	if name == "" {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	r.mu.Lock()
	if el, ok := r.entries[name]; ok {
		e := el.Value.(*resolveEntry)
		if r.now().Before(e.expires) {
			r.lru.MoveToFront(el)
			r.mu.Unlock()
			if e.addrs == nil {
				return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
			}
			return e.addrs, nil
		}
	}
	c, ok := r.inflight[name]
	if !ok {
		c = &resolveCall{done: make(chan struct{})}
		r.inflight[name] = c
		// The query outlives a caller that gives up: the others wait
		// for it, and its answer is cached.
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
		go func() {
			defer cancel()
			r.resolve(qctx, name, host, c)
		}()
	}
	r.mu.Unlock()
	select {
	case <-c.done:
		return c.addrs, c.err
	case <-ctx.Done():
		return nil, &net.DNSError{Err: ctx.Err().Error(), Name: host, IsTimeout: errors.Is(ctx.Err(), context.DeadlineExceeded)}
	}
}

// resolve runs the query for c and caches its answer.
func (r *resolver) resolve(ctx context.Context, name, host string, c *resolveCall) {
	addrs, ttl, err := r.query(ctx, name, host)
	r.mu.Lock()
	delete(r.inflight, name)
	if err == nil || isNotFound(err) {
		r.store(name, addrs, ttl)
	}
	r.mu.Unlock()
	c.addrs, c.err = addrs, err
	close(c.done)
}

// store caches an answer (addrs nil: negative); r.mu is held.
func (r *resolver) store(name string, addrs []netip.Addr, ttl time.Duration) {
	expires := r.now().Add(ttl)
	if el, ok := r.entries[name]; ok {
		e := el.Value.(*resolveEntry)
		e.addrs, e.expires = addrs, expires
		r.lru.MoveToFront(el)
		return
	}
	if r.lru.Len() >= r.max {
		old := r.lru.Back()
		r.lru.Remove(old)
		delete(r.entries, old.Value.(*resolveEntry).name)
	}
	r.entries[name] = r.lru.PushFront(&resolveEntry{name: name, addrs: addrs, expires: expires})
}

// cached returns how many names the cache holds.
func (r *resolver) cached() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lru.Len()
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// query resolves name through DNS, trying the search list as resolv.conf
// says. It returns the addresses and their lifetime, or a negative answer
// (IsNotFound) and its lifetime, or another failure.
func (r *resolver) query(ctx context.Context, name, host string) ([]netip.Addr, time.Duration, error) {
	negTTL := resolveMaxNegTTL
	for _, fqdn := range r.conf.NameList(name) {
		addrs, ttl, neg, err := r.queryName(ctx, fqdn, host)
		if err != nil {
			return nil, 0, err
		}
		if len(addrs) > 0 {
			return addrs, ttl, nil
		}
		negTTL = min(negTTL, neg)
	}
	return nil, negTTL, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// queryName asks for the A and AAAA records of fqdn at once. Addresses
// come IPv6 first when there are both, and the lifetime is the smallest
// of the two answers. Without any, neg is the negative lifetime.
func (r *resolver) queryName(ctx context.Context, fqdn, host string) (addrs []netip.Addr, ttl, neg time.Duration, err error) {
	type result struct {
		addrs []netip.Addr
		ttl   time.Duration
		neg   time.Duration
		err   error
	}
	var v6 result
	done := make(chan struct{})
	go func() {
		defer close(done)
		v6.addrs, v6.ttl, v6.neg, v6.err = r.queryType(ctx, fqdn, host, dns.TypeAAAA)
	}()
	var v4 result
	v4.addrs, v4.ttl, v4.neg, v4.err = r.queryType(ctx, fqdn, host, dns.TypeA)
	<-done
	switch {
	case len(v6.addrs) > 0 && len(v4.addrs) > 0:
		return append(v6.addrs, v4.addrs...), min(v6.ttl, v4.ttl), 0, nil
	case len(v6.addrs) > 0:
		// The other family failed or has none: the answer stands.
		return v6.addrs, v6.ttl, 0, nil
	case len(v4.addrs) > 0:
		return v4.addrs, v4.ttl, 0, nil
	case v4.err != nil:
		return nil, 0, 0, v4.err
	case v6.err != nil:
		return nil, 0, 0, v6.err
	}
	return nil, 0, min(v4.neg, v6.neg), nil
}

// queryType asks the servers in turn for one record type of fqdn, over
// UDP then TCP when the answer is truncated. A negative answer (NXDOMAIN
// or no record) is no error: it returns no address and its lifetime.
func (r *resolver) queryType(ctx context.Context, fqdn, host string, qtype uint16) ([]netip.Addr, time.Duration, time.Duration, error) {
	q := new(dns.Msg)
	q.SetQuestion(fqdn, qtype)
	q.SetEdns0(dns.DefaultMsgSize, false)
	timeouts, tries := 0, 0
	var server string
	for range r.conf.Attempts {
		for _, server = range r.servers {
			if ctx.Err() != nil {
				return nil, 0, 0, &net.DNSError{Err: "i/o timeout", Name: host, Server: server, IsTimeout: true}
			}
			tries++
			m, _, err := r.udp.ExchangeContext(ctx, q, server)
			if err == nil && m.Truncated {
				m, _, err = r.tcp.ExchangeContext(ctx, q, server)
			}
			if err != nil {
				if isTimeout(err) || ctx.Err() != nil {
					timeouts++
				}
				continue
			}
			switch m.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
			default:
				continue // SERVFAIL, REFUSED...: the next server
			}
			addrs, ttl := addrsOf(m, fqdn, qtype)
			if len(addrs) > 0 {
				return addrs, ttl, 0, nil
			}
			return nil, 0, negativeTTL(m), nil
		}
	}
	if timeouts == tries {
		return nil, 0, 0, &net.DNSError{Err: "i/o timeout", Name: host, Server: server, IsTimeout: true}
	}
	return nil, 0, 0, &net.DNSError{Err: "server misbehaving", Name: host, Server: server, IsTemporary: true}
}

// addrsOf returns the qtype addresses of name in m's answer, following
// its CNAME chain, and the smallest TTL of the records used, clamped to
// [resolveMinTTL, resolveMaxTTL].
func addrsOf(m *dns.Msg, name string, qtype uint16) ([]netip.Addr, time.Duration) {
	ttl := uint32(resolveMaxTTL / time.Second)
	var addrs []netip.Addr
	for range maxCNAMEHops {
		next := ""
		for _, rr := range m.Answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, name) {
				continue
			}
			var a netip.Addr
			switch v := rr.(type) {
			case *dns.CNAME:
				if next == "" {
					next = v.Target
					ttl = min(ttl, h.Ttl)
				}
				continue
			case *dns.A:
				if qtype != dns.TypeA {
					continue
				}
				a, _ = netip.AddrFromSlice(v.A.To4())
			case *dns.AAAA:
				if qtype != dns.TypeAAAA {
					continue
				}
				a, _ = netip.AddrFromSlice(v.AAAA.To16())
			default:
				continue
			}
			if a.IsValid() {
				addrs = append(addrs, a)
				ttl = min(ttl, h.Ttl)
			}
		}
		if len(addrs) > 0 || next == "" {
			break
		}
		name = next
	}
	return addrs, clampDuration(time.Duration(ttl)*time.Second, resolveMinTTL, resolveMaxTTL)
}

// negativeTTL is the lifetime of a negative answer: the smaller of its
// SOA's TTL and minimum field (RFC 2308), clamped to [resolveMinTTL,
// resolveMaxNegTTL].
func negativeTTL(m *dns.Msg) time.Duration {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			d := time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
			return clampDuration(d, resolveMinTTL, resolveMaxNegTTL)
		}
	}
	return resolveMinTTL
}

func clampDuration(d, lo, hi time.Duration) time.Duration {
	return max(lo, min(d, hi))
}

// isLocalhostName reports whether name (lower case) is "localhost" or
// one of its subdomains, which always mean this host (RFC 6761 §6.3).
func isLocalhostName(name string) bool {
	return name == "localhost" || strings.HasSuffix(name, ".localhost") ||
		name == "localhost.localdomain" || strings.HasSuffix(name, ".localhost.localdomain")
}

// hostsFile is the hosts file (/etc/hosts), parsed once and again when
// its size or modification time changes, checked at most every
// hostsRecheck.
type hostsFile struct {
	path string

	mu      sync.RWMutex
	checked time.Time
	mtime   time.Time
	size    int64
	byName  map[string][]netip.Addr // lower-case name without final dot
}

// lookup returns the addresses the hosts file gives name (lower case).
func (h *hostsFile) lookup(name string, now time.Time) []netip.Addr {
	h.mu.RLock()
	fresh := now.Sub(h.checked) < hostsRecheck && !h.checked.IsZero()
	addrs := h.byName[name]
	h.mu.RUnlock()
	if fresh {
		return addrs
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.checked) >= hostsRecheck || h.checked.IsZero() {
		h.checked = now
		fi, err := os.Stat(h.path)
		switch {
		case err != nil:
			h.byName, h.mtime, h.size = nil, time.Time{}, 0
		case !fi.ModTime().Equal(h.mtime) || fi.Size() != h.size:
			h.byName = parseHosts(h.path)
			h.mtime, h.size = fi.ModTime(), fi.Size()
		}
	}
	return h.byName[name]
}

// parseHosts reads a hosts(5) file: an address, then names; "#" starts
// a comment. An unreadable file gives no entry.
func parseHosts(path string) map[string][]netip.Addr {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	out := map[string][]netip.Addr{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		a, err := netip.ParseAddr(fields[0])
		if err != nil {
			continue
		}
		for _, n := range fields[1:] {
			n = strings.ToLower(strings.TrimSuffix(n, "."))
			out[n] = append(out[n], a)
		}
	}
	return out
}
