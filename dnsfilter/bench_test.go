package dnsfilter

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
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

// benchCacheSize is the default cache size (config dns.cache_size).
const benchCacheSize = 100_000

// benchKeys returns n distinct cache keys shaped like real ones: a name in
// wire form followed by type, class and flag bytes.
func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		label := fmt.Sprintf("host%07d", i)
		k := []byte{byte(len(label))}
		k = append(k, label...)
		k = append(k, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'o', 'r', 'g', 0, 0, 1, 0, 1, 0)
		keys[i] = string(k)
	}
	return keys
}

// benchEntry is a cached answer of typical size (one A record) that stays
// fresh for the whole benchmark.
func benchEntry(tb testing.TB) *entry {
	m := new(dns.Msg)
	m.SetQuestion("host.example.org.", dns.TypeA)
	m.Response = true
	m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "host.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 86400}, A: []byte{192, 0, 2, 1}})
	s := &settings{}
	s.maxTTL, s.negativeTTL = 86400, 3600
	e, ok := newEntry(m, "host.example.org.", s, time.Now().UnixNano())
	if !ok {
		tb.Fatal("newEntry: not cacheable")
	}
	return e
}

// benchEntries returns one entry like benchEntry per key: the cache keeps
// an entry's reference bit in the entry, so keys must not share one.
func benchEntries(tb testing.TB, n int) []entry {
	base := benchEntry(tb)
	es := make([]entry, n)
	for i := range es {
		es[i].wire, es[i].ttlOff, es[i].ttls = base.wire, base.ttlOff, base.ttls
		es[i].stored, es[i].expires = base.stored, base.expires
	}
	return es
}

// fullCache returns a cache of benchCacheSize entries filled to capacity
// with keys[:2*benchCacheSize], so that every shard is full.
func fullCache(keys []string, es []entry) *cache {
	c := newCache(benchCacheSize, int64(time.Hour))
	for i, k := range keys[:2*benchCacheSize] {
		c.put(k, &es[i])
	}
	return c
}

// BenchmarkCacheInsertFull inserts new keys into a full cache: each put
// evicts one entry.
func BenchmarkCacheInsertFull(b *testing.B) {
	keys := benchKeys(4 * benchCacheSize)
	es := benchEntries(b, len(keys))
	c := fullCache(keys, es)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.put(keys[i], &es[i])
		if i++; i == len(keys) {
			i = 0
		}
	}
}

// BenchmarkCacheHit reads present keys in turn, serially and from every
// CPU.
func BenchmarkCacheHit(b *testing.B) {
	keys := benchKeys(4 * benchCacheSize)
	c := fullCache(keys, benchEntries(b, len(keys)))
	var present [][]byte
	for _, k := range keys {
		if c.get([]byte(k)) != nil {
			present = append(present, []byte(k))
		}
	}
	// Each hit reads the entry's expiry, as the answer path does.
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if e := c.get(present[i]); e == nil || e.expires == 0 {
				b.Fatal("miss")
			}
			if i++; i == len(present) {
				i = 0
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(7919)) % len(present)
			for pb.Next() {
				if e := c.get(present[i]); e == nil || e.expires == 0 {
					panic("miss")
				}
				if i++; i == len(present) {
					i = 0
				}
			}
		})
	})
}

// BenchmarkCacheZipf is a mixed workload from every CPU: names drawn from
// a Zipf distribution over a million names (s = 1.1), a get for each and
// a put on a miss, after a warm-up of two million such draws. It reports
// the hit ratio.
func BenchmarkCacheZipf(b *testing.B) {
	const names = 1_000_000
	keys := benchKeys(names)
	bkeys := make([][]byte, len(keys))
	for i, k := range keys {
		bkeys[i] = []byte(k)
	}
	es := benchEntries(b, len(keys))
	c := fullCache(keys, es)
	// Warm up: the cache holds what the workload keeps, not the fill.
	z := rand.NewZipf(rand.New(rand.NewPCG(0, 42)), 1.1, 1, names-1)
	for range 2_000_000 {
		if k := z.Uint64(); c.get(bkeys[k]) == nil {
			c.put(keys[k], &es[k])
		}
	}
	b.Run("parallel", func(b *testing.B) {
		var hits, total atomic.Int64
		var seed atomic.Uint64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(seed.Add(1), 42))
			z := rand.NewZipf(r, 1.1, 1, names-1)
			var h, n int64
			for pb.Next() {
				k := z.Uint64()
				n++
				if c.get(bkeys[k]) != nil {
					h++
					continue
				}
				c.put(keys[k], &es[k])
			}
			hits.Add(h)
			total.Add(n)
		})
		if n := total.Load(); n > 0 {
			b.ReportMetric(float64(hits.Load())/float64(n)*100, "hit%")
		}
	})
}

// TestCacheAllocs holds the cache to its budget: a hit allocates nothing,
// and neither does an insertion into a full cache (the evicted entry's
// slot is reused).
func TestCacheAllocs(t *testing.T) {
	const size = 64 * 100
	keys := benchKeys(4 * size)
	es := benchEntries(t, len(keys))
	c := newCache(size, int64(time.Hour))
	for i, k := range keys[:2*size] {
		c.put(k, &es[i])
	}
	var hit []byte
	for _, k := range keys {
		if c.get([]byte(k)) != nil {
			hit = []byte(k)
			break
		}
	}
	if a := testing.AllocsPerRun(1000, func() { c.get(hit) }); a != 0 {
		t.Errorf("cache hit: %v allocations, want 0", a)
	}
	i := 2 * size
	if a := testing.AllocsPerRun(1000, func() {
		c.put(keys[i], &es[i])
		i++
	}); a != 0 {
		t.Errorf("insertion into a full cache: %v allocations, want 0", a)
	}
}

// echoUpstream answers every UDP query on loopback with the query itself,
// QR set: the cheapest valid answer, so that the benchmark measures the
// upstream client.
func echoUpstream(tb testing.TB) string {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n >= headerLen {
				buf[2] |= 0x80
				c.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	tb.Cleanup(func() {
		c.Close()
		<-done
	})
	return c.LocalAddr().String()
}

// BenchmarkUpstreamExchange is one cache miss's exchange with a plain DNS
// upstream on loopback, serially and from every CPU.
func BenchmarkUpstreamExchange(b *testing.B) {
	addr := echoUpstream(b)
	u := newUpstream(addr, time.Second, newMetrics(func() int { return 0 }, func() int { return 0 }))
	run := func(b *testing.B, m *dns.Msg) {
		r, _, err := u.exchange(context.Background(), m, time.Second)
		if err != nil || r == nil {
			b.Fatalf("exchange: %v", err)
		}
	}
	query := func() *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("www.example.org.", dns.TypeA)
		m.SetEdns0(ednsSize, false)
		return m
	}
	b.Run("serial", func(b *testing.B) {
		m := query()
		b.ReportAllocs()
		for b.Loop() {
			run(b, m)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			m := query()
			for pb.Next() {
				run(b, m)
			}
		})
	})
}
