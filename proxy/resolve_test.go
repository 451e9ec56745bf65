package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// zoneDNS is a DNS server on loopback answering from a table of records
// (zone file lines) and counting the queries it receives per name and
// type. Names absent from the table are NXDOMAIN with an SOA whose
// minimum is negTTL.
type zoneDNS struct {
	addr   string
	mu     sync.Mutex
	rrs    map[string][]dns.RR // by lower-case owner name
	rcode  map[string]int      // forced response code by name
	counts map[string]int      // "name/TYPE"
	delay  time.Duration
	negTTL uint32
	drop   bool // answer nothing
}

func startZoneDNS(t *testing.T, records ...string) *zoneDNS {
	t.Helper()
	z := &zoneDNS{rrs: map[string][]dns.RR{}, rcode: map[string]int{}, counts: map[string]int{}, negTTL: 10}
	for _, s := range records {
		z.add(t, s)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	z.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(z.serve)}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return z
}

func (z *zoneDNS) add(t *testing.T, record string) {
	t.Helper()
	rr, err := dns.NewRR(record)
	if err != nil {
		t.Fatalf("dns.NewRR(%q): %v", record, err)
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	n := strings.ToLower(rr.Header().Name)
	z.rrs[n] = append(z.rrs[n], rr)
}

func (z *zoneDNS) serve(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) != 1 {
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	z.mu.Lock()
	z.counts[name+"/"+dns.TypeToString[q.Qtype]]++
	delay, drop, rcode, forced := z.delay, z.drop, 0, false
	if c, ok := z.rcode[name]; ok {
		rcode, forced = c, true
	}
	m := new(dns.Msg)
	m.SetReply(r)
	// Follow the chain as a recursive server would.
	found := false
	for cur, hops := name, 0; hops < 8; hops++ {
		next := ""
		for _, rr := range z.rrs[cur] {
			found = true
			if c, ok := rr.(*dns.CNAME); ok {
				m.Answer = append(m.Answer, rr)
				next = strings.ToLower(c.Target)
			} else if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		if next == "" {
			break
		}
		cur = next
	}
	if !found {
		m.Rcode = dns.RcodeNameError
	}
	if len(m.Answer) == 0 || !found {
		soa, _ := dns.NewRR(fmt.Sprintf("test. 3600 IN SOA ns.test. admin.test. 1 60 60 60 %d", z.negTTL))
		m.Ns = append(m.Ns, soa)
	}
	if forced {
		m.Rcode = rcode
		m.Answer, m.Ns = nil, nil
	}
	z.mu.Unlock()
	if drop {
		return
	}
	time.Sleep(delay)
	w.WriteMsg(m)
}

// queries returns how many queries of qtype ("A", "AAAA") name received.
func (z *zoneDNS) queries(name, qtype string) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.counts[dns.Fqdn(name)+"/"+qtype]
}

// testClock is a clock tests move by hand.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// testResolver returns a resolver querying z, without resolv.conf nor
// hosts file, on a clock the test moves.
func testResolver(t *testing.T, z *zoneDNS) (*resolver, *testClock) {
	t.Helper()
	dir := t.TempDir()
	r := newResolver(z.addr, filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "hosts"), 2*time.Second)
	clk := &testClock{}
	r.now = clk.now
	return r, clk
}

func mustLookup(t *testing.T, r *resolver, name string, want ...string) {
	t.Helper()
	addrs, err := r.lookup(context.Background(), name)
	if err != nil {
		t.Fatalf("lookup(%s): %v", name, err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.String())
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("lookup(%s) = %v, want %v", name, got, want)
	}
}

func TestResolveTTL(t *testing.T) {
	z := startZoneDNS(t, "short.test. 30 IN A 192.0.2.1", "short.test. 30 IN AAAA 2001:db8::1",
		"long.test. 86400 IN A 192.0.2.2", "zero.test. 0 IN A 192.0.2.3")
	r, clk := testResolver(t, z)
	mustLookup(t, r, "short.test", "2001:db8::1", "192.0.2.1")
	mustLookup(t, r, "Short.Test.", "2001:db8::1", "192.0.2.1")
	clk.advance(29 * time.Second)
	mustLookup(t, r, "short.test", "2001:db8::1", "192.0.2.1")
	if n := z.queries("short.test", "A"); n != 1 {
		t.Fatalf("A queries within the TTL = %d, want 1", n)
	}
	clk.advance(2 * time.Second)
	mustLookup(t, r, "short.test", "2001:db8::1", "192.0.2.1")
	if n, m := z.queries("short.test", "A"), z.queries("short.test", "AAAA"); n != 2 || m != 2 {
		t.Fatalf("A, AAAA queries after the TTL = %d, %d, want 2, 2", n, m)
	}

	// A day-long TTL is held 5 minutes at most; a zero TTL one second.
	mustLookup(t, r, "long.test", "192.0.2.2")
	mustLookup(t, r, "zero.test", "192.0.2.3")
	mustLookup(t, r, "zero.test", "192.0.2.3")
	if n := z.queries("zero.test", "A"); n != 1 {
		t.Fatalf("queries of zero.test within a second = %d, want 1", n)
	}
	clk.advance(resolveMaxTTL - time.Second)
	mustLookup(t, r, "long.test", "192.0.2.2")
	mustLookup(t, r, "zero.test", "192.0.2.3")
	if n, m := z.queries("long.test", "A"), z.queries("zero.test", "A"); n != 1 || m != 2 {
		t.Fatalf("queries of long.test, zero.test = %d, %d, want 1, 2", n, m)
	}
	clk.advance(2 * time.Second)
	mustLookup(t, r, "long.test", "192.0.2.2")
	if n := z.queries("long.test", "A"); n != 2 {
		t.Fatalf("queries of long.test after 5 min = %d, want 2", n)
	}
}

func TestResolveCNAMEChain(t *testing.T) {
	z := startZoneDNS(t, "www.chain.test. 300 IN CNAME cdn.chain.test.", "cdn.chain.test. 20 IN CNAME edge.cdn.test.",
		"edge.cdn.test. 300 IN A 192.0.2.10", "edge.cdn.test. 300 IN A 192.0.2.11", "other.test. 300 IN A 192.0.2.99")
	r, clk := testResolver(t, z)
	mustLookup(t, r, "www.chain.test", "192.0.2.10", "192.0.2.11")
	clk.advance(19 * time.Second)
	mustLookup(t, r, "www.chain.test", "192.0.2.10", "192.0.2.11")
	if n := z.queries("www.chain.test", "A"); n != 1 {
		t.Fatalf("A queries within the chain's smallest TTL = %d, want 1", n)
	}
	clk.advance(2 * time.Second)
	mustLookup(t, r, "www.chain.test", "192.0.2.10", "192.0.2.11")
	if n := z.queries("www.chain.test", "A"); n != 2 {
		t.Fatalf("A queries after the chain's smallest TTL = %d, want 2", n)
	}

	// Records outside the chain are ignored.
	m := new(dns.Msg)
	for _, s := range []string{"a.test. 60 IN CNAME b.test.", "c.test. 60 IN A 192.0.2.1", "b.test. 60 IN A 192.0.2.2"} {
		rr, _ := dns.NewRR(s)
		m.Answer = append(m.Answer, rr)
	}
	addrs, ttl := addrsOf(m, "a.test.", dns.TypeA)
	if len(addrs) != 1 || addrs[0] != netip.MustParseAddr("192.0.2.2") || ttl != time.Minute {
		t.Errorf("addrsOf = %v, %v; want [192.0.2.2], 1m", addrs, ttl)
	}
}

func TestResolveNegative(t *testing.T) {
	z := startZoneDNS(t, "v6only.test. 300 IN AAAA 2001:db8::6", "nodata.test. 300 IN TXT \"x\"")
	r, clk := testResolver(t, z)
	for _, name := range []string{"missing.test", "nodata.test"} {
		for range 3 {
			_, err := r.lookup(context.Background(), name)
			if !isNotFound(err) {
				t.Fatalf("lookup(%s) = %v, want not found", name, err)
			}
		}
		if n := z.queries(name, "A"); n != 1 {
			t.Errorf("A queries of %s = %d, want 1 (negative answer cached)", name, n)
		}
	}
	mustLookup(t, r, "v6only.test", "2001:db8::6")
	clk.advance(11 * time.Second) // the SOA minimum is 10 s
	r.lookup(context.Background(), "missing.test")
	if n := z.queries("missing.test", "A"); n != 2 {
		t.Errorf("A queries of missing.test after the SOA minimum = %d, want 2", n)
	}

	// A long SOA minimum is capped at 30 s.
	z.mu.Lock()
	z.negTTL = 3600
	z.mu.Unlock()
	r.lookup(context.Background(), "gone.test")
	clk.advance(resolveMaxNegTTL - time.Second)
	r.lookup(context.Background(), "gone.test")
	if n := z.queries("gone.test", "A"); n != 1 {
		t.Errorf("A queries of gone.test within 30 s = %d, want 1", n)
	}
	clk.advance(2 * time.Second)
	r.lookup(context.Background(), "gone.test")
	if n := z.queries("gone.test", "A"); n != 2 {
		t.Errorf("A queries of gone.test after 30 s = %d, want 2", n)
	}

	// A server failure is not cached.
	z.mu.Lock()
	z.rcode["broken.test."] = dns.RcodeServerFailure
	z.mu.Unlock()
	for range 2 {
		_, err := r.lookup(context.Background(), "broken.test")
		var de *net.DNSError
		if !asDNSError(err, &de) || de.IsNotFound || de.IsTimeout {
			t.Fatalf("lookup(broken.test) = %#v, want a DNS error, neither not-found nor timeout", err)
		}
	}
	if n := z.queries("broken.test", "A"); n < 2 {
		t.Errorf("A queries of broken.test = %d, want a new query for each lookup", n)
	}
}

func asDNSError(err error, de **net.DNSError) bool {
	d, ok := err.(*net.DNSError)
	*de = d
	return ok
}

func TestResolveBound(t *testing.T) {
	z := startZoneDNS(t)
	for i := range 6 {
		z.add(t, fmt.Sprintf("n%d.test. 300 IN A 192.0.2.%d", i, i+1))
	}
	r, _ := testResolver(t, z)
	r.max = 4
	for i := range 6 {
		mustLookup(t, r, fmt.Sprintf("n%d.test", i), fmt.Sprintf("192.0.2.%d", i+1))
		if n := r.cached(); n > 4 {
			t.Fatalf("cache holds %d names, want at most 4", n)
		}
	}
	if n := r.cached(); n != 4 {
		t.Errorf("cache holds %d names, want 4", n)
	}
	// n0 and n1 were evicted (least recently used); n5 is still there.
	mustLookup(t, r, "n5.test", "192.0.2.6")
	mustLookup(t, r, "n0.test", "192.0.2.1")
	if a, b := z.queries("n5.test", "A"), z.queries("n0.test", "A"); a != 1 || b != 2 {
		t.Errorf("A queries of n5, n0 = %d, %d; want 1 (cached), 2 (evicted)", a, b)
	}
	if len(r.entries) != r.lru.Len() {
		t.Errorf("index holds %d names, list %d", len(r.entries), r.lru.Len())
	}
}

func TestResolveCoalesced(t *testing.T) {
	z := startZoneDNS(t, "busy.test. 300 IN A 192.0.2.20")
	z.mu.Lock()
	z.delay = 200 * time.Millisecond
	z.mu.Unlock()
	r, _ := testResolver(t, z)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Go(func() {
			addrs, err := r.lookup(context.Background(), "busy.test")
			if err == nil && (len(addrs) != 1 || addrs[0] != netip.MustParseAddr("192.0.2.20")) {
				err = fmt.Errorf("addrs = %v", addrs)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n, m := z.queries("busy.test", "A"), z.queries("busy.test", "AAAA"); n != 1 || m != 1 {
		t.Errorf("100 concurrent lookups sent %d A and %d AAAA queries, want 1 and 1", n, m)
	}

	// A caller that gives up does not fail the others.
	z.add(t, "slow.test. 300 IN A 192.0.2.21")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := r.lookup(ctx, "slow.test"); err == nil {
		t.Fatal("lookup with a 20 ms deadline answered, want a timeout")
	}
	mustLookup(t, r, "slow.test", "192.0.2.21")
	if n := z.queries("slow.test", "A"); n != 1 {
		t.Errorf("A queries of slow.test = %d, want 1", n)
	}
}

func TestResolveHostsAndLocalhost(t *testing.T) {
	z := startZoneDNS(t, "pinned.test. 300 IN A 192.0.2.30")
	r, clk := testResolver(t, z)
	if err := os.WriteFile(r.hosts.path, []byte("# comment\n192.0.2.7 Pinned.Test pinned # alias\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustLookup(t, r, "pinned.test", "192.0.2.7")
	mustLookup(t, r, "pinned", "192.0.2.7")
	mustLookup(t, r, "localhost", "::1", "127.0.0.1")
	mustLookup(t, r, "app.localhost", "::1", "127.0.0.1")
	if n := z.queries("pinned.test", "A") + z.queries("localhost", "A"); n != 0 {
		t.Errorf("%d queries for names of the hosts file and localhost, want 0", n)
	}
	// The file is read again when it changes.
	os.WriteFile(r.hosts.path, []byte("192.0.2.8 localhost\n"), 0o600)
	os.Chtimes(r.hosts.path, time.Now(), time.Now().Add(time.Minute))
	clk.advance(hostsRecheck + time.Second)
	mustLookup(t, r, "localhost", "192.0.2.8")
	mustLookup(t, r, "pinned.test", "192.0.2.30")
}

func TestResolveTimeout(t *testing.T) {
	z := startZoneDNS(t)
	z.mu.Lock()
	z.drop = true
	z.mu.Unlock()
	r, _ := testResolver(t, z)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := r.lookup(ctx, "silent.test")
	var de *net.DNSError
	if !asDNSError(err, &de) || !de.IsTimeout {
		t.Fatalf("lookup of an unanswered name = %#v, want a DNS timeout", err)
	}
	if got := proxyStatusForDialError(&net.OpError{Op: "dial", Net: "tcp", Err: err}); got != "dns_timeout" {
		t.Errorf("proxy status = %q, want dns_timeout", got)
	}
}

// TestResolveConnect drives CONNECTs through the proxy: one query per TTL,
// none for an IP literal, the next address after a refused one, and
// dns_error for names that do not resolve.
func TestResolveConnect(t *testing.T) {
	origin, _, _ := originTLS(t)
	_, port, _ := net.SplitHostPort(origin.Listener.Addr().String())
	z := startZoneDNS(t, "ttl.test. 3 IN A 127.0.0.1",
		// 127.0.0.3 has nothing listening on the port: refused, then 127.0.0.1.
		"two.test. 300 IN A 127.0.0.3", "two.test. 300 IN A 127.0.0.1")
	z.mu.Lock()
	z.rcode["fail.test."] = dns.RcodeServerFailure
	z.mu.Unlock()
	e := startEnv(t, testSpec(), func(o *Options) {
		o.Resolver = z.addr
		o.ConnectPorts = []uint16{mustPort(t, port)}
	})
	connect := func(host string) (int, string) {
		t.Helper()
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "CONNECT %s:%s HTTP/1.1\r\nHost: x\r\n\r\n", host, port)
		resp, err := http.ReadResponse(bufioReader(c), &http.Request{Method: "CONNECT"})
		if err != nil {
			t.Fatalf("CONNECT %s: %v", host, err)
		}
		return resp.StatusCode, resp.Header.Get("Proxy-Status")
	}
	for range 2 {
		if code, ps := connect("ttl.test"); code != 200 {
			t.Fatalf("CONNECT ttl.test = %d %q, want 200", code, ps)
		}
	}
	if n := z.queries("ttl.test", "A"); n != 1 {
		t.Fatalf("A queries after two CONNECTs within the TTL = %d, want 1", n)
	}
	time.Sleep(3100 * time.Millisecond)
	connect("ttl.test")
	if n := z.queries("ttl.test", "A"); n != 2 {
		t.Errorf("A queries after the TTL = %d, want 2", n)
	}

	if code, ps := connect("127.0.0.1"); code != 200 {
		t.Errorf("CONNECT 127.0.0.1 = %d %q, want 200", code, ps)
	}
	if code, ps := connect("two.test"); code != 200 {
		t.Errorf("CONNECT two.test (first address refused) = %d %q, want 200", code, ps)
	}
	for _, host := range []string{"fail.test", "nowhere.test"} {
		if code, ps := connect(host); code != 502 || !strings.Contains(ps, "error=dns_error") {
			t.Errorf("CONNECT %s = %d %q, want 502 dns_error", host, code, ps)
		}
	}
	z.mu.Lock()
	total := 0
	for _, n := range z.counts {
		total += n
	}
	z.mu.Unlock()
	if total == 0 || z.queries("127.0.0.1", "A") != 0 {
		t.Errorf("an IP literal was sent to the resolver")
	}
}
