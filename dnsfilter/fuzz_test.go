package dnsfilter

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/balise-net/balise/internal/policy"
)

// fuzzFilter is a filter that is not listening, with one cached answer.
func fuzzFilter(t testing.TB) *Filter {
	p, err := policy.New(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	var ptr atomic.Pointer[policy.Policy]
	ptr.Store(p)
	f, err := New(Options{Listen: []string{"127.0.0.1:0"}, Upstreams: []string{"127.0.0.1:1"}, CacheSize: 100, Policy: &ptr, BlockResponse: "null", NoRateLimit: true})
	if err != nil {
		t.Fatal(err)
	}
	cacheAnswer(t, f, &dns.CNAME{Hdr: dns.RR_Header{Name: "cached.example.org.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 300}, Target: "edge.fbcdn.net."})
	cacheAnswer(t, f, &dns.A{Hdr: dns.RR_Header{Name: "plain.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: []byte{192, 0, 2, 1}})
	return f
}

// cacheAnswer stores an upstream answer made of rr (an A query for its
// owner name) in f's cache.
func cacheAnswer(t testing.TB, f *Filter, rr dns.RR) {
	name := rr.Header().Name
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Response = true
	m.Answer = append(m.Answer, rr)
	e, ok := newEntry(m, name, f.s, time.Now().UnixNano())
	if !ok {
		t.Fatal("newEntry: not cacheable")
	}
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	pkt, _ := q.Pack()
	s := newScratch()
	if parseQuery(pkt, s) != parseOK {
		t.Fatal("parseQuery failed on a plain query")
	}
	f.cache.put(string(s.q.key), e)
}

func FuzzServe(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  bool
	}{{"cached.example.org.", dns.TypeA, false}, {"plain.example.org.", dns.TypeA, false}, {"www.facebook.com.", dns.TypeHTTPS, true}, {"_dns.resolver.arpa.", dns.TypeSVCB, true}, {"use-application-dns.net.", dns.TypeA, false}, {".", dns.TypeNS, true}, {"plain.example.org.", dns.TypeANY, true}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns {
			m.SetEdns0(4096, true)
		}
		b, _ := m.Pack()
		f.Add(b)
	}
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0})
	filter := fuzzFilter(f)
	s := newScratch()
	// An allowed client, and one outside AllowedClients (REFUSED path).
	clients := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.9")}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		for _, client := range clients {
			out, pending := filter.serve(s, pkt, client, protoUDP, time.Now(), modeFirst)
			if out == nil {
				continue
			}
			if pending {
				t.Fatalf("pending with an answer")
			}
			var m dns.Msg
			if err := m.Unpack(out); err != nil {
				t.Fatalf("answer does not parse: %v\nquery %x\nanswer %x", err, pkt, out)
			}
			if !m.Response || binary.BigEndian.Uint16(out) != binary.BigEndian.Uint16(pkt) {
				t.Fatalf("answer is not a response to the query: %v", &m)
			}
			if client != clients[0] && (m.Rcode != dns.RcodeRefused || len(m.Answer)+len(m.Ns) != 0) {
				t.Fatalf("answer to a client outside allowed_clients: %v, want REFUSED and nothing else", &m)
			}
		}
	})
}

func FuzzTTLOffsets(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("a.example.org.", dns.TypeA)
	m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "a.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}})
	b, _ := m.Pack()
	f.Add(b)
	f.Fuzz(func(t *testing.T, msg []byte) {
		offs, err := ttlOffsets(msg)
		if err != nil {
			return
		}
		for _, o := range offs {
			if int(o)+4 > len(msg) {
				t.Fatalf("offset %d beyond message of %d bytes", o, len(msg))
			}
		}
	})
}
