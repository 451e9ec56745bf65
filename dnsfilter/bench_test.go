package dnsfilter

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func packedQuery(t testing.TB, name string, qtype uint16) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAllocs holds the hot path to its allocation budget: none for an
// answer from the cache; for a blocked name (block_response null here),
// only the Extended DNS Error text.
func TestAllocs(t *testing.T) {
	f := fuzzFilter(t)
	client := netip.MustParseAddr("127.0.0.1")
	s := newScratch()
	tests := []struct {
		name  string
		pkt   []byte
		max   float64
		rcode int
	}{
		{"cached", packedQuery(t, "Plain.Example.org.", dns.TypeA), 0, dns.RcodeSuccess},
		{"cname to a blocked service", packedQuery(t, "cached.example.org.", dns.TypeA), 2, dns.RcodeSuccess},
		{"blocked", packedQuery(t, "www.tiktok.com.", dns.TypeA), 2, dns.RcodeSuccess},
	}
	for _, tc := range tests {
		var out []byte
		allocs := testing.AllocsPerRun(1000, func() {
			out, _ = f.serve(s, tc.pkt, client, protoUDP, time.Now(), modeFirst)
			s.out = out[:0]
		})
		var m dns.Msg
		if err := m.Unpack(out); err != nil || m.Rcode != tc.rcode {
			t.Fatalf("%s: answer %v (%v), want rcode %s", tc.name, &m, err, dns.RcodeToString[tc.rcode])
		}
		if allocs > tc.max {
			t.Errorf("%s: %v allocations per query, want <= %v", tc.name, allocs, tc.max)
		}
	}
}

func BenchmarkServe(b *testing.B) {
	f := fuzzFilter(b)
	client := netip.MustParseAddr("127.0.0.1")
	for _, bc := range []struct{ name, qname string }{{"cached", "plain.example.org."}, {"blocked", "www.tiktok.com."}} {
		b.Run(bc.name, func(b *testing.B) {
			pkt := packedQuery(b, bc.qname, dns.TypeA)
			s := newScratch()
			b.ReportAllocs()
			for b.Loop() {
				out, _ := f.serve(s, pkt, client, protoUDP, time.Now(), modeFirst)
				s.out = out[:0]
			}
		})
	}
}
