package dnsfilter

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestAccessAllows(t *testing.T) {
	tests := []struct {
		a      Access
		client string
		want   bool
	}{
		{Access{}, "127.0.0.1", true},
		{Access{}, "127.9.9.9", true},
		{Access{}, "::1", true},
		{Access{}, "10.0.0.1", false},
		{Access{}, "192.168.1.1", false},
		{Access{}, "2001:db8::1", false},
		{Access{AllowedClients: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, "10.20.30.40", true},
		{Access{AllowedClients: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, "127.0.0.1", false},
		{Access{AllowedClients: []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}}, "10.1.2.3", true},
		{Access{AllowedClients: []netip.Prefix{netip.MustParsePrefix("fd00::/8")}}, "fd12::5", true},
	}
	for _, tt := range tests {
		if got := newAccess(tt.a).allows(netip.MustParseAddr(tt.client)); got != tt.want {
			t.Errorf("allows(%v) with %v = %v, want %v", tt.client, tt.a.AllowedClients, got, tt.want)
		}
	}
	if k := clientKey(netip.MustParseAddr("2001:db8:1:2:aaaa::1")); k != netip.MustParseAddr("2001:db8:1:2::") {
		t.Errorf("clientKey of an IPv6 address = %v, want its /64", k)
	}
}

// A client outside AllowedClients gets REFUSED over UDP and TCP, even for
// a name in the cache, and no upstream is asked; a reload (SetAccess)
// lets it in.
func TestAllowedClients(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, func(o *Options) {
		o.Access.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	// Positive control, which also fills the cache.
	if r := ask(t, f.addr, "udp", "127.0.0.1", "cached.example.org.", dns.TypeA, true); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("allowed client: %v, want one answer", r)
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"cached.example.org.", "outsider.example.org.", "www.facebook.com."} {
			r := ask(t, f.addr, network, "127.0.0.2", name, dns.TypeA, true)
			if r.Rcode != dns.RcodeRefused || len(r.Answer)+len(r.Ns) != 0 {
				t.Errorf("outside client, %s over %s: %v, want REFUSED with no records", name, network, r)
			}
			if len(r.Question) != 1 || r.Question[0].Name != name {
				t.Errorf("outside client: question %v, want %s echoed", r.Question, name)
			}
		}
	}
	if n := up.count("outsider.example.org."); n != 0 {
		t.Errorf("upstream asked %d times for an outside client's name, want 0", n)
	}
	if n := up.count("cached.example.org."); n != 1 {
		t.Errorf("upstream asked %d times for the cached name, want 1", n)
	}
	if got := value(t, f.m.refusals[refusalClient]); got != 6 {
		t.Errorf("refusals{client} = %v, want 6", got)
	}
	if got := value(t, f.m.queries[protoTCP][verdictRefused][reasonClient]); got != 3 {
		t.Errorf("queries{tcp,refused,client} = %v, want 3", got)
	}

	f.SetAccess(Access{AllowedClients: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/30")}})
	for _, network := range []string{"udp", "tcp"} {
		if r := ask(t, f.addr, network, "127.0.0.2", "cached.example.org.", dns.TypeA, true); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Errorf("after SetAccess, over %s: %v, want the answer", network, r)
		}
	}
	if r := ask(t, f.addr, "udp", "127.0.0.5", "cached.example.org.", dns.TypeA, true); r.Rcode != dns.RcodeRefused {
		t.Errorf("after SetAccess, 127.0.0.5 (outside 127.0.0.0/30): rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
}

// A TCP connection of an outside client is closed after its REFUSED
// answer.
func TestOutsideClientTCPClosed(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, func(o *Options) {
		o.Access.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	c := dialFrom(t, f.addr, "127.0.0.2")
	dc := &dns.Conn{Conn: c}
	m := new(dns.Msg)
	m.SetQuestion("a.example.org.", dns.TypeA)
	if err := dc.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	r, err := dc.ReadMsg()
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Fatalf("outside client over TCP: %v %v, want REFUSED", r, err)
	}
	if open(t, c, time.Second) {
		t.Error("the outside client's connection stays open after REFUSED")
	}
}

func TestRefuseAny(t *testing.T) {
	up := newStub(t)
	for _, forward := range []bool{false, true} {
		f := startFilter(t, []string{up.addr}, func(o *Options) { o.Access.ForwardAny = forward })
		name := "any.example.org."
		if forward {
			name = "any-forwarded.example.org."
		}
		for _, network := range []string{"udp", "tcp"} {
			r := ask(t, f.addr, network, "127.0.0.1", name, dns.TypeANY, network == "udp")
			if forward {
				if r.Rcode != dns.RcodeSuccess || up.count(name) == 0 {
					t.Errorf("ForwardAny over %s: %v, upstream asked %d times; want it forwarded", network, r, up.count(name))
				}
				continue
			}
			h, ok := func() (*dns.HINFO, bool) {
				if len(r.Answer) != 1 {
					return nil, false
				}
				h, ok := r.Answer[0].(*dns.HINFO)
				return h, ok
			}()
			if r.Rcode != dns.RcodeSuccess || !ok || h.Cpu != "RFC8482" || h.Os != "" || h.Hdr.Name != name || h.Hdr.Ttl != rfc8482TTL {
				t.Errorf("ANY over %s: %v, want one HINFO \"RFC8482\" \"\" TTL %d (RFC 8482)", network, r, rfc8482TTL)
			}
		}
		if !forward {
			if n := up.count(name); n != 0 {
				t.Errorf("upstream asked %d times for ANY, want 0", n)
			}
			if got := value(t, f.m.refusals[refusalAny]); got != 2 {
				t.Errorf("refusals{any} = %v, want 2", got)
			}
			// Every query type of a blocked name is blocked, ANY included.
			if r := ask(t, f.addr, "udp", "127.0.0.1", "www.facebook.com.", dns.TypeANY, true); r.Rcode != dns.RcodeNameError {
				t.Errorf("ANY for a blocked name: rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
			}
			// The answer for a listed name never outlives its decision:
			// facebook is allowed for 127.0.0.2 (no Until here), ANY still
			// gets the HINFO.
			if r := ask(t, f.addr, "udp", "127.0.0.2", "www.facebook.com.", dns.TypeANY, true); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Errorf("ANY for an allowed listed name: %v, want the HINFO", r)
			}
		}
	}
}

// dialFrom opens a TCP connection to addr from the local address src.
func dialFrom(t *testing.T, addr, src string) net.Conn {
	t.Helper()
	c, err := tryDial(t, addr, src)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	return c
}

// tryDial is dialFrom for connections the server may reset at once: the
// reset can reach the client before connect returns.
func tryDial(t *testing.T, addr, src string) (net.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 4 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

// open reports whether the server keeps c open for wait: a read times
// out instead of ending.
func open(t *testing.T, c net.Conn, wait time.Duration) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	var b [1]byte
	_, err := c.Read(b[:])
	if err == nil {
		t.Fatalf("unexpected data from the server")
	}
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One client opening many idle TCP connections keeps MaxTCPPerClient of
// them; the rest are closed at once and counted, and another client is
// still answered over TCP.
func TestTCPPerClientLimit(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, func(o *Options) { o.Access.MaxTCPPerClient = 4 })
	var conns []net.Conn
	for range 20 {
		if c, err := tryDial(t, f.addr, "127.0.0.2"); err == nil {
			conns = append(conns, c)
		}
	}
	waitFor(t, "16 refusals", func() bool { return value(t, f.m.refusals[refusalTCPLimit]) == 16 })
	kept := 0
	for _, c := range conns {
		if open(t, c, 100*time.Millisecond) {
			kept++
		}
	}
	if kept != 4 {
		t.Errorf("%d of 20 connections kept open, want 4 (MaxTCPPerClient)", kept)
	}
	if r := ask(t, f.addr, "tcp", "127.0.0.3", "other.example.org.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
		t.Errorf("another client over TCP: rcode %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
	waitFor(t, "the other client's connection to end", func() bool { return f.tcpOpen() == 4 })
}

func TestTCPIdleTimeout(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, func(o *Options) { o.Access.TCPIdleTimeout = 300 * time.Millisecond })
	c := dialFrom(t, f.addr, "127.0.0.2")
	began := time.Now()
	if open(t, c, 3*time.Second) {
		t.Fatal("an idle connection stays open 3 s, want closed after 300 ms")
	}
	if took := time.Since(began); took < 250*time.Millisecond || took > 2*time.Second {
		t.Errorf("idle connection closed after %v, want about 300 ms", took)
	}
	// A query resets the timer; SetAccess changes it for open connections
	// at their next query.
	c = dialFrom(t, f.addr, "127.0.0.2")
	dc := &dns.Conn{Conn: c}
	f.SetAccess(Access{TCPIdleTimeout: 2 * time.Second})
	m := new(dns.Msg)
	m.SetQuestion("idle.example.org.", dns.TypeA)
	if err := dc.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.ReadMsg(); err != nil {
		t.Fatal(err)
	}
	if !open(t, c, time.Second) {
		t.Error("connection closed 1 s after a query with a 2 s idle timeout")
	}
	// A shorter timeout closes a connection that has waited longer
	// already, at once.
	f.SetAccess(Access{TCPIdleTimeout: 500 * time.Millisecond})
	if open(t, c, 300*time.Millisecond) {
		t.Error("connection idle for 1 s still open after SetAccess with a 500 ms idle timeout")
	}
}

// When every TCP slot is taken, a newcomer takes the slot of an idle
// connection of the client that holds the most; when no client holds
// more than the newcomer would, it is refused.
func TestTCPEviction(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, nil)
	f.mu.Lock()
	f.maxTCP = 8
	f.mu.Unlock()
	var hog []net.Conn
	for range 8 {
		hog = append(hog, dialFrom(t, f.addr, "127.0.0.2"))
	}
	waitFor(t, "8 open connections", func() bool { return f.tcpOpen() == 8 })
	if r := ask(t, f.addr, "tcp", "127.0.0.3", "evict.example.org.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("newcomer with every slot held by one client: rcode %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
	if got := value(t, f.m.refusals[refusalTCPEvicted]); got != 1 {
		t.Errorf("refusals{tcp_evicted} = %v, want 1", got)
	}
	closed := 0
	for _, c := range hog {
		if !open(t, c, 50*time.Millisecond) {
			closed++
		}
	}
	if closed != 1 {
		t.Errorf("%d of the first client's connections closed, want 1 (the longest idle)", closed)
	}

	// Eight clients with one connection each: a ninth is refused.
	for _, c := range hog {
		c.Close()
	}
	waitFor(t, "no open connection", func() bool { return f.tcpOpen() == 0 })
	for i := range 8 {
		dialFrom(t, f.addr, netip.AddrFrom4([4]byte{127, 0, 1, byte(i + 1)}).String())
	}
	waitFor(t, "8 open connections", func() bool { return f.tcpOpen() == 8 })
	before := value(t, f.m.refusals[refusalTCPLimit])
	c, err := tryDial(t, f.addr, "127.0.0.3")
	waitFor(t, "a tcp_limit refusal", func() bool { return value(t, f.m.refusals[refusalTCPLimit]) == before+1 })
	if err == nil && open(t, c, time.Second) {
		t.Error("ninth client with eight single-connection clients: connection kept, want it closed")
	}
}

// Over its rate limit, a client outside AllowedClients gets no answer at
// all (REFUSED answers cannot be reflected faster than the limit).
func TestOutsideClientRateLimited(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, func(o *Options) {
		o.Access.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		o.RateLimit = 1
		o.RateBurst = 3
	})
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.2")}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(f.addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 10 {
		m := new(dns.Msg)
		m.SetQuestion("spoof.example.org.", dns.TypeA)
		m.Id = uint16(i + 1)
		b, _ := m.Pack()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	refused := 0
	c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		var r dns.Msg
		if r.Unpack(buf[:n]) == nil && r.Rcode == dns.RcodeRefused {
			refused++
		}
	}
	if refused != 3 {
		t.Errorf("outside client, 10 queries at once with burst 3: %d REFUSED answers, want 3 (the rest unanswered)", refused)
	}
	if got := value(t, f.m.rateLimited); got != 7 {
		t.Errorf("rate limited counter = %v, want 7", got)
	}
}
