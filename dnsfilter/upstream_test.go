package dnsfilter

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// rawUpstream is an upstream resolver written on raw UDP sockets, so that
// a test controls every datagram. For names under example.org, when spoof
// is set, it sends forged answers before the real one: from another port
// of its address and from another address (which the kernel must not
// deliver to a connected socket), then from its own address and port with
// another ID, another name, another type, the QR bit clear, and an
// unreadable body. Every forged answer says poisonAddr.
type rawUpstream struct {
	t         *testing.T
	conn      *net.UDPConn
	otherPort *net.UDPConn
	otherAddr *net.UDPConn
	addr      string

	mu sync.Mutex
	// spoof: send the forged answers; silent: send no real answer.
	spoof, silent bool
	// ports are the source ports of the queries for example.org names,
	// in order; queries counts them per name.
	ports   []uint16
	queries map[string]int
}

// forgedFromPeer is the number of forged datagrams rawUpstream sends from
// its own address and port, those a connected socket receives.
const forgedFromPeer = 5

var poisonAddr = netip.MustParseAddr("192.0.2.66")

func newRawUpstream(t *testing.T) *rawUpstream {
	t.Helper()
	u := &rawUpstream{t: t, queries: map[string]int{}}
	var err error
	if u.conn, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	port := u.conn.LocalAddr().(*net.UDPAddr).Port
	if u.otherPort, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	// Same port, another loopback address.
	if u.otherAddr, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: port}); err != nil {
		t.Fatal(err)
	}
	u.addr = u.conn.LocalAddr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.serve()
	}()
	t.Cleanup(func() {
		u.conn.Close()
		u.otherPort.Close()
		u.otherAddr.Close()
		<-done
	})
	return u
}

func (u *rawUpstream) set(spoof, silent bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.spoof, u.silent = spoof, silent
}

func (u *rawUpstream) count(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.queries[name]
}

func (u *rawUpstream) lastPort() uint16 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.ports[len(u.ports)-1]
}

func (u *rawUpstream) allPorts() []uint16 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]uint16(nil), u.ports...)
}

// addrFor is the address rawUpstream really answers for name.
func addrFor(name string) netip.Addr {
	h := fnv.New32a()
	h.Write([]byte(strings.ToLower(name)))
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], h.Sum32())
	a[0] = 10
	return netip.AddrFrom4(a)
}

func (u *rawUpstream) serve() {
	buf := make([]byte, 65535)
	for {
		n, from, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		q := new(dns.Msg)
		if q.Unpack(buf[:n]) != nil || len(q.Question) != 1 {
			continue
		}
		name := strings.ToLower(q.Question[0].Name)
		tested := strings.HasSuffix(name, ".example.org.")
		u.mu.Lock()
		spoof, silent := u.spoof && tested, u.silent && tested
		if tested {
			u.ports = append(u.ports, from.Port())
			u.queries[name]++
		}
		u.mu.Unlock()
		if spoof {
			u.forge(q, from)
		}
		if !silent {
			u.send(u.conn, reply(q, q.Question[0], addrFor(name)), from)
		}
	}
}

func (u *rawUpstream) forge(q *dns.Msg, to netip.AddrPort) {
	quest := q.Question[0]
	good := reply(q, quest, poisonAddr)
	u.send(u.otherPort, good, to)
	u.send(u.otherAddr, good, to)
	wrongID := reply(q, quest, poisonAddr)
	wrongID.Id++
	u.send(u.conn, wrongID, to)
	otherName := quest
	otherName.Name = "poison.example.org."
	u.send(u.conn, reply(q, otherName, poisonAddr), to)
	otherType := quest
	otherType.Qtype = dns.TypeMX
	u.send(u.conn, reply(q, otherType, poisonAddr), to)
	notResponse := reply(q, quest, poisonAddr)
	notResponse.Response = false
	u.send(u.conn, notResponse, to)
	b, _ := good.Pack()
	u.conn.WriteToUDPAddrPort(append(b[:headerLen:headerLen], 0xC0, 0xFF, 0xFF), to)
}

// reply answers q with quest as the question and one A record for a.
func reply(q *dns.Msg, quest dns.Question, a netip.Addr) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Question = []dns.Question{quest}
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: quest.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: a.AsSlice()}}
	return m
}

func (u *rawUpstream) send(c *net.UDPConn, m *dns.Msg, to netip.AddrPort) {
	b, err := m.Pack()
	if err != nil {
		u.t.Errorf("packing %v: %v", m, err)
		return
	}
	c.WriteToUDPAddrPort(b, to)
}

// answerAddr returns the address of the only A record of r.
func answerAddr(t *testing.T, r *dns.Msg) netip.Addr {
	t.Helper()
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("answer %v, want one A record", r)
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok {
		t.Fatalf("answer %v, want an A record", r)
	}
	addr, _ := netip.AddrFromSlice(a.A)
	return addr.Unmap()
}

// TestUpstreamSpoofedAnswersDropped: forged answers (another source port or
// address, another ID, question or type, not a response, unreadable) never
// become the answer nor enter the cache; each one that reaches the socket
// is counted, and the socket that saw them is not used again.
func TestUpstreamSpoofedAnswersDropped(t *testing.T) {
	up := newRawUpstream(t)
	up.set(true, false)
	f := startFilter(t, []string{up.addr}, nil)
	u := f.upstreams.ups[0]
	const name = "victim.example.org."
	for i := range 2 {
		r := ask(t, f.addr, "udp", "", name, dns.TypeA, true)
		if got := answerAddr(t, r); got != addrFor(name) {
			t.Fatalf("query %d: answer %v, want %v (the real one)", i, got, addrFor(name))
		}
	}
	if n := up.count(name); n != 1 {
		t.Errorf("upstream asked %d times, want 1 (the second answer from the cache)", n)
	}
	if got := value(t, u.errors[errMismatch]); got != forgedFromPeer {
		t.Errorf("mismatched datagrams counted = %v, want %d (those from other sources never reach a connected socket)", got, forgedFromPeer)
	}
	port := up.lastPort()
	u.sockets.mu.Lock()
	for _, c := range u.sockets.idle {
		if uint16(c.c.LocalAddr().(*net.UDPAddr).Port) == port {
			t.Errorf("the socket that received forged answers (port %d) waits for another query", port)
		}
	}
	u.sockets.mu.Unlock()

	// Only forged answers: the query fails, nothing is cached.
	const lost = "lost.example.org."
	up.set(true, true)
	r := ask(t, f.addr, "udp", "", lost, dns.TypeA, true)
	if r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("with forged answers only: %v, want SERVFAIL", r)
	}
	up.set(false, false)
	r = ask(t, f.addr, "udp", "", lost, dns.TypeA, true)
	if got := answerAddr(t, r); got != addrFor(lost) {
		t.Errorf("after the forged answers: %v, want %v", got, addrFor(lost))
	}
	if n := up.count(lost); n < 2 {
		t.Errorf("upstream asked %d times for %s, want the second query to reach it", n, lost)
	}
}

// TestUpstreamConcurrentSpoofed: many queries at once, each preceded by
// forged answers; every client gets the answer to its own question.
func TestUpstreamConcurrentSpoofed(t *testing.T) {
	up := newRawUpstream(t)
	up.set(true, false)
	f := startFilter(t, []string{up.addr}, func(o *Options) { o.Timeout = time.Second })
	var wg sync.WaitGroup
	const clients, each = 16, 8
	for c := range clients {
		wg.Go(func() {
			for i := range each {
				name := "n" + string(rune('a'+c)) + string(rune('a'+i)) + ".example.org."
				r, err := exchange(f.addr, "udp", "", name, dns.TypeA, true)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				if len(r.Answer) != 1 {
					t.Errorf("%s: %v, want one answer", name, r)
					return
				}
				if a := r.Answer[0].(*dns.A); !a.A.Equal(addrFor(name).AsSlice()) {
					t.Errorf("%s: answer %v, want %v", name, a.A, addrFor(name))
				}
			}
		})
	}
	wg.Wait()
	if got := value(t, f.upstreams.ups[0].errors[errMismatch]); got != clients*each*forgedFromPeer {
		t.Errorf("mismatched datagrams counted = %v, want %d", got, clients*each*forgedFromPeer)
	}
	if n := f.upstreams.ups[0].sockets.idleLen(); n > udpMaxIdle {
		t.Errorf("%d idle sockets, want at most %d", n, udpMaxIdle)
	}
}

// udpExchange sends one A query for name through p.
func udpExchange(t *testing.T, p *udpSockets, name string, timeout time.Duration) (*dns.Msg, error) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	return udpExchangeMsg(p, m, timeout, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}))
}

func udpExchangeMsg(p *udpSockets, m *dns.Msg, timeout time.Duration, dropped prometheus.Counter) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return p.exchange(ctx, m, dropped)
}

// TestUpstreamQueuedForgeriesDrained: answers forged in advance and queued
// on an idle socket (from the upstream's own address and port, with the
// very ID and question of the next query) are never read as its answer;
// they are counted and the socket is closed.
func TestUpstreamQueuedForgeriesDrained(t *testing.T) {
	if !udpReuse {
		t.Skip("upstream sockets are not reused on this system")
	}
	up := newRawUpstream(t)
	p := newUDPSockets(up.addr)
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	first := new(dns.Msg)
	first.SetQuestion("first.example.org.", dns.TypeA)
	if _, err := udpExchangeMsg(p, first, 2*time.Second, dropped); err != nil {
		t.Fatal(err)
	}
	if p.idleLen() != 1 {
		t.Fatalf("%d idle sockets, want 1", p.idleLen())
	}
	p.mu.Lock()
	port := p.idle[0].c.LocalAddr().(*net.UDPAddr).AddrPort()
	p.mu.Unlock()
	const name = "next.example.org."
	next := new(dns.Msg)
	next.SetQuestion(name, dns.TypeA)
	next.Id = 7
	for id := range uint16(3) {
		forged := reply(next, next.Question[0], poisonAddr)
		forged.Id = 7 - id
		up.send(up.conn, forged, port)
	}
	time.Sleep(20 * time.Millisecond)
	r, err := udpExchangeMsg(p, next, 2*time.Second, dropped)
	if err != nil {
		t.Fatal(err)
	}
	if got := answerAddr(t, r); got != addrFor(name) {
		t.Errorf("answer %v, want %v (not the queued forgery)", got, addrFor(name))
	}
	if got := value(t, dropped); got != 3 {
		t.Errorf("dropped = %v, want the 3 queued datagrams", got)
	}
	if n := p.opened.Load(); n != 2 {
		t.Errorf("%d sockets opened, want 2 (the one that received datagrams closed)", n)
	}
}

// TestUpstreamSocketRetirement: a socket carries successive queries until
// it has carried maxUses or lived maxAge; one that timed out is closed.
func TestUpstreamSocketRetirement(t *testing.T) {
	up := newRawUpstream(t)
	ask := func(p *udpSockets, name string) {
		t.Helper()
		r, err := udpExchange(t, p, name, 2*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := answerAddr(t, r); got != addrFor(name) {
			t.Fatalf("%s: %v, want %v", name, got, addrFor(name))
		}
	}

	p := newUDPSockets(up.addr)
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		ask(p, n+".example.org.")
	}
	if n := p.opened.Load(); n != 1 {
		t.Errorf("reuse: %d sockets opened for 5 queries in a row, want 1", n)
	}

	p = newUDPSockets(up.addr)
	p.maxUses = 3
	start := len(up.allPorts())
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"} {
		ask(p, n+".example.org.")
	}
	if n := p.opened.Load(); n != 3 {
		t.Errorf("maxUses 3: %d sockets opened for 9 queries, want 3", n)
	}
	ports := up.allPorts()[start:]
	distinct := map[uint16]bool{}
	for i, port := range ports {
		distinct[port] = true
		if i%3 != 0 && port != ports[i-1] {
			t.Errorf("query %d from port %d, want %d (the same socket)", i, port, ports[i-1])
		}
	}
	if len(distinct) < 2 {
		t.Errorf("source ports %v: want new random ports after retirement", ports)
	}

	p = newUDPSockets(up.addr)
	p.maxAge = 50 * time.Millisecond
	ask(p, "a.example.org.")
	ask(p, "b.example.org.")
	time.Sleep(60 * time.Millisecond)
	ask(p, "c.example.org.")
	if n := p.opened.Load(); n != 2 {
		t.Errorf("maxAge: %d sockets opened, want 2 (one retired by age)", n)
	}
	if n := p.idleLen(); n != 1 {
		t.Errorf("%d idle sockets, want 1", n)
	}

	// A timeout closes the socket.
	up.set(false, true)
	if _, err := udpExchange(t, p, "silent.example.org.", 100*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("silent upstream: error %v, want a timeout", err)
	}
	if n := p.idleLen(); n != 0 {
		t.Errorf("after a timeout: %d idle sockets, want 0", n)
	}
	up.set(false, false)
	ask(p, "d.example.org.")
	if n := p.opened.Load(); n != 3 {
		t.Errorf("after a timeout: %d sockets opened, want 3", n)
	}
}

// TestUpstreamSocketsConcurrent runs many exchanges at once on one pool
// (with -race): each gets its own answer, at most udpMaxIdle sockets wait.
func TestUpstreamSocketsConcurrent(t *testing.T) {
	up := newRawUpstream(t)
	p := newUDPSockets(up.addr)
	var wg sync.WaitGroup
	for g := range 48 {
		wg.Go(func() {
			for i := range 10 {
				name := "c" + string(rune('a'+g%26)) + string(rune('a'+g/26)) + string(rune('a'+i)) + ".example.org."
				r, err := udpExchange(t, p, name, 3*time.Second)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				if got := answerAddr(t, r); got != addrFor(name) {
					t.Errorf("%s: %v, want %v", name, got, addrFor(name))
				}
			}
		})
	}
	wg.Wait()
	if n := p.idleLen(); n > udpMaxIdle || n == 0 {
		t.Errorf("%d idle sockets, want 1 to %d", n, udpMaxIdle)
	}
}

// TestAnswerFrom checks each condition for taking a datagram as the
// answer, those the kernel already enforces on a connected socket
// included.
func TestAnswerFrom(t *testing.T) {
	peer := netip.MustParseAddrPort("127.0.0.1:5300")
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	q.Id = 0x1234
	quest := q.Question[0]
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := reply(q, quest, addrFor("x"))
	edit := func(f func(m *dns.Msg)) []byte {
		m := reply(q, quest, addrFor("x"))
		f(m)
		return pack(m)
	}
	tests := []struct {
		name string
		pkt  []byte
		from netip.AddrPort
		want bool
	}{
		{"the answer", pack(good), peer, true},
		{"IPv4-mapped source", pack(good), netip.MustParseAddrPort("[::ffff:127.0.0.1]:5300"), true},
		{"name in other case", edit(func(m *dns.Msg) { m.Question[0].Name = "WWW.Example.ORG." }), peer, true},
		{"SERVFAIL without question", edit(func(m *dns.Msg) { m.Rcode = dns.RcodeServerFailure; m.Question = nil; m.Answer = nil }), peer, true},
		{"another port", pack(good), netip.MustParseAddrPort("127.0.0.1:5301"), false},
		{"another address", pack(good), netip.MustParseAddrPort("127.0.0.2:5300"), false},
		{"another ID", edit(func(m *dns.Msg) { m.Id++ }), peer, false},
		{"another name", edit(func(m *dns.Msg) { m.Question[0].Name = "www.example.com." }), peer, false},
		{"another type", edit(func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAAAA }), peer, false},
		{"another class", edit(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), peer, false},
		{"not a response", edit(func(m *dns.Msg) { m.Response = false }), peer, false},
		{"NOERROR without question", edit(func(m *dns.Msg) { m.Question = nil }), peer, false},
		{"two questions", edit(func(m *dns.Msg) { m.Question = append(m.Question, quest) }), peer, false},
		{"header only, truncated body", append(pack(good)[:headerLen:headerLen], 0xC0), peer, false},
		{"short", pack(good)[:5], peer, false},
	}
	for _, tc := range tests {
		if got := answerFrom(tc.pkt, tc.from, peer, q) != nil; got != tc.want {
			t.Errorf("answerFrom(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
