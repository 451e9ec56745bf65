package dnsfilter

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/balise-net/balise/internal/decisionlog"
	"github.com/balise-net/balise/internal/policy"
)

func TestUnlistedPassThroughAndCache(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, nil)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			name := "www." + network + ".example.org."
			up.set(name, behaviour{answer: []string{name + " 120 IN A 192.0.2.7", name + " 120 IN A 192.0.2.8"}})
			for i := range 3 {
				r := ask(t, f.addr, network, "", name, dns.TypeA, i%2 == 0)
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
					t.Fatalf("query %d: rcode %s, %d answers, want NOERROR with 2", i, dns.RcodeToString[r.Rcode], len(r.Answer))
				}
				for _, a := range r.Answer {
					if a.Header().Ttl > 120 || a.Header().Ttl < 118 {
						t.Errorf("query %d: TTL %d, want 118..120", i, a.Header().Ttl)
					}
				}
				if _, ok := r.Answer[0].(*dns.A); !ok {
					t.Errorf("answer %v, want A", r.Answer[0])
				}
			}
			if n := up.count(name); n != 1 {
				t.Errorf("upstream asked %d times, want 1 (the others from the cache)", n)
			}
		})
	}
	if hits := value(t, f.m.cacheHits); hits < 4 {
		t.Errorf("cache hits = %v, want >= 4", hits)
	}
}

func TestCaseEcho(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, nil)
	ask(t, f.addr, "udp", "", "mixed.example.org.", dns.TypeA, false)
	for _, name := range []string{"MiXeD.ExAmPlE.oRg.", "MIXED.EXAMPLE.ORG."} {
		r := ask(t, f.addr, "udp", "", name, dns.TypeA, false)
		if r.Question[0].Name != name {
			t.Errorf("question %q, want %q", r.Question[0].Name, name)
		}
		if len(r.Answer) != 1 || r.Answer[0].Header().Name != name {
			t.Errorf("answer %v, want owner %q", r.Answer, name)
		}
	}
	// Blocked names echo the case too.
	r := ask(t, f.addr, "udp", "", "WwW.FaceBook.CoM.", dns.TypeA, true)
	if r.Question[0].Name != "WwW.FaceBook.CoM." || r.Rcode != dns.RcodeNameError {
		t.Errorf("blocked answer %v, want NXDOMAIN echoing WwW.FaceBook.CoM.", r)
	}
}

func TestBlockResponses(t *testing.T) {
	qtypes := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeHTTPS, dns.TypeSVCB, dns.TypeCNAME, dns.TypeMX, dns.TypeTXT, dns.TypeANY, dns.TypeSRV, dns.TypeNS}
	sink4, sink6 := netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fd00::3")
	tests := []struct {
		resp  string
		rcode int
		// want returns the answer addresses expected for qtype.
		want func(qtype uint16) []string
	}{
		{"nxdomain", dns.RcodeNameError, func(uint16) []string { return nil }},
		{"refused", dns.RcodeRefused, func(uint16) []string { return nil }},
		{"null", dns.RcodeSuccess, func(q uint16) []string {
			switch q {
			case dns.TypeA:
				return []string{"0.0.0.0"}
			case dns.TypeAAAA:
				return []string{"::"}
			}
			return nil
		}},
		{"sinkhole", dns.RcodeSuccess, func(q uint16) []string {
			switch q {
			case dns.TypeA:
				return []string{sink4.String()}
			case dns.TypeAAAA:
				return []string{sink6.String()}
			}
			return nil
		}},
	}
	up := newStub(t)
	for _, tc := range tests {
		t.Run(tc.resp, func(t *testing.T) {
			f := startFilter(t, []string{up.addr}, func(o *Options) {
				o.BlockResponse = tc.resp
				o.Sinkhole = []netip.Addr{sink4, sink6}
				o.BlockedTTL = 42 * time.Second
			})
			for _, qt := range qtypes {
				for _, network := range []string{"udp", "tcp"} {
					name := "m.facebook.com."
					r := ask(t, f.addr, network, "127.0.0.1", name, qt, true)
					if r.Rcode != tc.rcode {
						t.Errorf("%s %s: rcode %s, want %s", network, dns.TypeToString[qt], dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
					}
					var got []string
					for _, a := range r.Answer {
						switch a := a.(type) {
						case *dns.A:
							got = append(got, a.A.String())
						case *dns.AAAA:
							got = append(got, a.AAAA.String())
						default:
							got = append(got, a.String())
						}
						if a.Header().Ttl > 42 {
							t.Errorf("%s: TTL %d > blocked TTL 42", dns.TypeToString[qt], a.Header().Ttl)
						}
					}
					if want := tc.want(qt); strings.Join(got, ",") != strings.Join(want, ",") {
						t.Errorf("%s %s: answers %v, want %v", network, dns.TypeToString[qt], got, want)
					}
					code, text := ede(r)
					if code != int(dns.ExtendedErrorCodeBlocked) || !strings.Contains(text, "Facebook") {
						t.Errorf("%s: EDE %d %q, want 15 naming Facebook", dns.TypeToString[qt], code, text)
					}
					if tc.rcode != dns.RcodeRefused && len(got) == 0 {
						if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA || r.Ns[0].Header().Ttl > 42 || r.Ns[0].(*dns.SOA).Minttl > 42 {
							t.Errorf("%s: authority %v, want an SOA with TTL <= 42", dns.TypeToString[qt], r.Ns)
						}
					}
				}
			}
			// Without EDNS, no OPT record.
			r := ask(t, f.addr, "udp", "", "facebook.com.", dns.TypeA, false)
			if r.IsEdns0() != nil {
				t.Errorf("answer to a query without EDNS has an OPT record")
			}
		})
	}
	if n := up.count("m.facebook.com."); n != 0 {
		t.Errorf("upstream asked %d times about a blocked name, want 0", n)
	}
}

func TestPerClientDecisionsNoCacheLeak(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, nil)
	name := "www.facebook.com."
	up.set(name, behaviour{answer: []string{name + " 3600 IN A 192.0.2.50"}})
	steps := []struct {
		local   string
		network string
		rcode   int
	}{
		{"127.0.0.2", "udp", dns.RcodeSuccess}, // comms: fills the cache
		{"127.0.0.1", "udp", dns.RcodeNameError},
		{"127.0.0.1", "tcp", dns.RcodeNameError},
		{"127.0.0.2", "tcp", dns.RcodeSuccess},
		{"127.0.0.1", "udp", dns.RcodeNameError},
		{"127.0.0.2", "udp", dns.RcodeSuccess},
	}
	for i, s := range steps {
		r := ask(t, f.addr, s.network, s.local, name, dns.TypeA, true)
		if r.Rcode != s.rcode {
			t.Errorf("step %d from %s over %s: rcode %s, want %s", i, s.local, s.network, dns.RcodeToString[r.Rcode], dns.RcodeToString[s.rcode])
		}
		if s.rcode == dns.RcodeSuccess && (len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.50") {
			t.Errorf("step %d: answer %v, want 192.0.2.50", i, r.Answer)
		}
	}
	if n := up.count(name); n != 1 {
		t.Errorf("upstream asked %d times, want 1", n)
	}
}

func TestCNAMECloaking(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, nil)
	up.set("track.example.net.", behaviour{answer: []string{
		"track.example.net. 300 IN CNAME edge.example.org.",
		"edge.example.org. 300 IN CNAME x.fb-cloak.net.",
		"x.fb-cloak.net. 300 IN A 192.0.2.60",
	}})
	up.set("pic.example.net.", behaviour{answer: []string{
		"pic.example.net. 300 IN CNAME static.fbcdn.net.",
		"static.fbcdn.net. 300 IN A 192.0.2.61",
	}})
	up.set("plain.example.net.", behaviour{answer: []string{
		"plain.example.net. 300 IN CNAME cdn.example.com.",
		"cdn.example.com. 300 IN A 192.0.2.62",
	}})
	// fb-cloak.net is only a cname_target: asked directly it is unlisted.
	up.set("x.fb-cloak.net.", behaviour{answer: []string{"x.fb-cloak.net. 300 IN A 192.0.2.60"}})
	tests := []struct {
		name, local string
		rcode       int
	}{
		{"track.example.net.", "127.0.0.1", dns.RcodeNameError},
		{"track.example.net.", "127.0.0.2", dns.RcodeSuccess},
		{"track.example.net.", "127.0.0.1", dns.RcodeNameError},
		{"pic.example.net.", "127.0.0.1", dns.RcodeNameError},
		{"pic.example.net.", "127.0.0.2", dns.RcodeSuccess},
		{"plain.example.net.", "127.0.0.1", dns.RcodeSuccess},
		{"x.fb-cloak.net.", "127.0.0.1", dns.RcodeSuccess},
	}
	for _, tc := range tests {
		r := ask(t, f.addr, "udp", tc.local, tc.name, dns.TypeA, true)
		if r.Rcode != tc.rcode {
			t.Errorf("%s from %s: rcode %s, want %s", tc.name, tc.local, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
		}
		if tc.rcode == dns.RcodeNameError {
			if code, text := ede(r); code != 15 || !strings.Contains(text, "Facebook") {
				t.Errorf("%s: EDE %d %q, want 15 naming Facebook", tc.name, code, text)
			}
		}
	}
}

func TestCanariesAndDDR(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, func(o *Options) { o.BlockResponse = "null" })
	for _, local := range []string{"127.0.0.1", "127.0.0.2"} {
		for _, name := range []string{"use-application-dns.net.", "mask.icloud.com."} {
			r := ask(t, f.addr, "udp", local, name, dns.TypeA, true)
			if r.Rcode != dns.RcodeNameError {
				t.Errorf("%s from %s: rcode %s, want NXDOMAIN even with block_response null", name, local, dns.RcodeToString[r.Rcode])
			}
		}
		for _, qt := range []uint16{dns.TypeSVCB, dns.TypeA, dns.TypeHTTPS} {
			r := ask(t, f.addr, "udp", local, "_dns.resolver.arpa.", qt, true)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
				t.Errorf("_dns.resolver.arpa %s: rcode %s, %d answers, want NODATA", dns.TypeToString[qt], dns.RcodeToString[r.Rcode], len(r.Answer))
			}
		}
	}
	if n := up.total.Load(); n > 0 {
		// Only the health probe of "." may have reached the upstream.
		if c := up.count("."); int64(c) != n {
			t.Errorf("upstream got %d queries besides probes, want 0", n-int64(c))
		}
	}
}

func TestStripECH(t *testing.T) {
	up := newStub(t)
	const https = "svc.example.org. 300 IN HTTPS 1 . alpn=h2,h3 ech=AEX+DQBBpQAgACBtKu8vR3nSWY3xXXxkTWkVDDbXgZYNXHTaAmKeKT+TQwAEAAEAAQASY2xvdWRmbGFyZS1lY2guY29tAAA="
	up.set("svc.example.org.", behaviour{answer: []string{https}})
	for _, keep := range []bool{false, true} {
		f := startFilter(t, []string{up.addr}, func(o *Options) { o.KeepECH = keep })
		r := ask(t, f.addr, "udp", "", "svc.example.org.", dns.TypeHTTPS, true)
		if len(r.Answer) != 1 {
			t.Fatalf("KeepECH %v: answers %v, want 1 HTTPS", keep, r.Answer)
		}
		h := r.Answer[0].(*dns.HTTPS)
		hasECH, hasALPN := false, false
		for _, kv := range h.Value {
			hasECH = hasECH || kv.Key() == dns.SVCB_ECHCONFIG
			hasALPN = hasALPN || kv.Key() == dns.SVCB_ALPN
		}
		if hasECH != keep || !hasALPN {
			t.Errorf("KeepECH %v: answer %v has ech %v alpn %v, want ech %v alpn true", keep, h, hasECH, hasALPN, keep)
		}
	}
}

func TestTTLClampAndBreakSwitch(t *testing.T) {
	up := newStub(t)
	clock := &fakeClock{now: time.Date(2026, 11, 23, 9, 59, 50, 0, time.UTC)}
	f := startFilter(t, []string{up.addr}, func(o *Options) { o.Clock = clock.Now })
	name := "www.facebook.com."
	up.set(name, behaviour{answer: []string{name + " 3600 IN A 192.0.2.80"}})
	up.set("unlisted.example.org.", behaviour{answer: []string{"unlisted.example.org. 3600 IN A 192.0.2.81"}})

	// 10 s before the break: blocked, and the NXDOMAIN lives 10 s at most.
	r := ask(t, f.addr, "udp", "127.0.0.1", name, dns.TypeA, true)
	if r.Rcode != dns.RcodeNameError {
		t.Fatalf("before the break: rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	for _, ttl := range ttls(r) {
		if ttl > 10 {
			t.Errorf("before the break: TTL %d, want <= 10 (the break starts in 10 s)", ttl)
		}
	}
	// During the break: allowed, and the answer lives until its end.
	clock.Add(15 * time.Second) // 10:00:05
	r = ask(t, f.addr, "udp", "127.0.0.1", name, dns.TypeA, true)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("during the break: %v, want the address", r)
	}
	if ttl := r.Answer[0].Header().Ttl; ttl > 895 || ttl < 890 {
		t.Errorf("during the break: TTL %d, want 895 (until 10:15:00), not the upstream's 3600", ttl)
	}
	// From the cache, the clamp follows the clock.
	clock.Add(14 * time.Minute) // 10:14:05
	r = ask(t, f.addr, "udp", "127.0.0.1", name, dns.TypeA, true)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].Header().Ttl > 55 {
		t.Errorf("near the end of the break: %v, want TTL <= 55", r)
	}
	// The comms group is allowed all the time: no window edge, TTL up to MaxUntil.
	r = ask(t, f.addr, "udp", "127.0.0.2", "unlisted.example.org.", dns.TypeA, true)
	if r.Answer[0].Header().Ttl < 3000 {
		t.Errorf("unlisted name: TTL %d, want the upstream's (about 3600, minus elapsed)", r.Answer[0].Header().Ttl)
	}
	// After the break: blocked again.
	clock.Add(time.Minute) // 10:15:05
	r = ask(t, f.addr, "udp", "127.0.0.1", name, dns.TypeA, true)
	if r.Rcode != dns.RcodeNameError {
		t.Errorf("after the break: rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
}

func TestFailover(t *testing.T) {
	bad := newStub(t)
	good := newStub(t)
	bad.set("a.example.org.", behaviour{rcode: dns.RcodeServerFailure})
	bad.set("b.example.org.", behaviour{rcode: dns.RcodeRefused})
	bad.set("c.example.org.", behaviour{drop: true})
	f := startFilter(t, []string{bad.addr, good.addr}, func(o *Options) { o.Timeout = 200 * time.Millisecond })
	for _, name := range []string{"a.example.org.", "b.example.org.", "c.example.org."} {
		r := ask(t, f.addr, "udp", "", name, dns.TypeA, false)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Errorf("%s: %v, want the second upstream's answer", name, r)
		}
		if bad.count(name) == 0 || good.count(name) != 1 {
			t.Errorf("%s: asked first %d and second %d times, want >=1 and 1", name, bad.count(name), good.count(name))
		}
	}
	kinds := map[string]float64{}
	for i, k := range upstreamErrorKinds {
		kinds[k] = value(t, f.upstreams.ups[0].errors[i])
	}
	if kinds["servfail"] < 1 || kinds["refused"] < 1 || kinds["timeout"] < 1 {
		t.Errorf("upstream errors %v, want servfail, refused and timeout counted", kinds)
	}
}

func TestTruncationRetry(t *testing.T) {
	up := newStub(t)
	var answers []string
	for i := range 40 {
		answers = append(answers, "big.example.org. 300 IN TXT \"record number "+strings.Repeat("x", 30)+string(rune('a'+i%26))+"\"")
	}
	up.set("big.example.org.", behaviour{answer: answers, truncUDP: true})
	f := startFilter(t, []string{up.addr}, nil)
	r := ask(t, f.addr, "tcp", "", "big.example.org.", dns.TypeTXT, true)
	if len(r.Answer) != 40 {
		t.Fatalf("over TCP: %d answers, want 40 (the upstream's TCP answer)", len(r.Answer))
	}
	// Over UDP the answer is too big: TC set, the client retries over TCP.
	r = ask(t, f.addr, "udp", "", "big.example.org.", dns.TypeTXT, true)
	if !r.Truncated || len(r.Answer) != 0 {
		t.Errorf("over UDP: truncated %v with %d answers, want TC and none", r.Truncated, len(r.Answer))
	}
	if got := value(t, f.upstreams.ups[0].errors[errTruncated]); got != 1 {
		t.Errorf("truncated upstream answers = %v, want 1", got)
	}
}

func TestNegativeCache(t *testing.T) {
	up := newStub(t)
	up.set("nx.example.org.", behaviour{rcode: dns.RcodeNameError, ns: []string{"example.org. 900 IN SOA ns.example.org. h.example.org. 1 7200 900 1209600 120"}})
	up.set("nosoa.example.org.", behaviour{rcode: dns.RcodeNameError})
	f := startFilter(t, []string{up.addr}, func(o *Options) { o.NegativeTTL = 60 * time.Second })
	for range 3 {
		r := ask(t, f.addr, "udp", "", "nx.example.org.", dns.TypeA, false)
		if r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 || r.Ns[0].Header().Ttl > 60 {
			t.Errorf("NXDOMAIN: %v, want NXDOMAIN with the SOA, TTL <= 60", r)
		}
		r = ask(t, f.addr, "udp", "", "nosoa.example.org.", dns.TypeA, false)
		if r.Rcode != dns.RcodeNameError {
			t.Errorf("NXDOMAIN without SOA: rcode %s", dns.RcodeToString[r.Rcode])
		}
	}
	if n := up.count("nx.example.org."); n != 1 {
		t.Errorf("NXDOMAIN with SOA asked %d times upstream, want 1 (cached)", n)
	}
	if n := up.count("nosoa.example.org."); n != 3 {
		t.Errorf("NXDOMAIN without SOA asked %d times upstream, want 3 (not cached)", n)
	}
}

func TestServeStale(t *testing.T) {
	up := newStub(t)
	clock := &fakeClock{now: time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)}
	f := startFilter(t, []string{up.addr}, func(o *Options) {
		o.Clock = clock.Now
		o.Timeout = 500 * time.Millisecond
		o.StaleTTL = 30 * time.Second
	})
	up.set("seen.example.org.", behaviour{answer: []string{"seen.example.org. 60 IN A 192.0.2.90"}})
	up.set("slow.example.org.", behaviour{answer: []string{"slow.example.org. 60 IN A 192.0.2.91"}})
	ask(t, f.addr, "udp", "", "seen.example.org.", dns.TypeA, true)
	ask(t, f.addr, "udp", "", "slow.example.org.", dns.TypeA, true)
	clock.Add(10 * time.Minute)

	// An upstream slower than the client timer: the stale answer comes first.
	up.set("slow.example.org.", behaviour{answer: []string{"slow.example.org. 60 IN A 192.0.2.92"}, delay: 2500 * time.Millisecond})
	start := time.Now()
	r := ask(t, f.addr, "udp", "", "slow.example.org.", dns.TypeA, true)
	if took := time.Since(start); took > 2500*time.Millisecond {
		t.Errorf("stale answer took %v, want about 1.8 s", took)
	}
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.91" || r.Answer[0].Header().Ttl != 30 {
		t.Errorf("slow upstream: %v, want the stale 192.0.2.91 with TTL 30", r.Answer)
	}
	if code, _ := ede(r); code != int(dns.ExtendedErrorCodeStaleAnswer) {
		t.Errorf("stale answer EDE %d, want %d", code, dns.ExtendedErrorCodeStaleAnswer)
	}

	up.kill()
	for _, network := range []string{"udp", "tcp"} {
		start := time.Now()
		r := ask(t, f.addr, network, "", "seen.example.org.", dns.TypeA, false)
		if len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 30 {
			t.Errorf("%s, upstream down: %v, want the stale answer with TTL 30", network, r)
		}
		if took := time.Since(start); took > 2500*time.Millisecond {
			t.Errorf("%s: stale answer took %v, want under the client timer", network, took)
		}
		start = time.Now()
		r = ask(t, f.addr, network, "", "never.example.org.", dns.TypeA, false)
		if r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s, never-seen name with upstream down: rcode %s, want SERVFAIL", network, dns.RcodeToString[r.Rcode])
		}
		if code, _ := ede(r); code != -1 {
			t.Errorf("%s: EDE %d in an answer to a query without EDNS", network, code)
		}
		if took := time.Since(start); took > 2500*time.Millisecond {
			t.Errorf("%s: SERVFAIL took %v, want under the client timer", network, took)
		}
	}
	r = ask(t, f.addr, "udp", "", "never2.example.org.", dns.TypeA, true)
	if code, _ := ede(r); r.Rcode != dns.RcodeServerFailure || code != int(dns.ExtendedErrorCodeNoReachableAuthority) {
		t.Errorf("never-seen name with EDNS, upstream down: %v, want SERVFAIL with EDE 22", r)
	}
	// The upstream is now marked down: stale answers come without waiting
	// for it, and the up gauge says so.
	if got := value(t, f.upstreams.ups[0].up); got != 0 {
		t.Errorf("balise_dns_upstream_up = %v after repeated failures, want 0", got)
	}
	for range 3 {
		r := ask(t, f.addr, "udp", "", "seen.example.org.", dns.TypeA, true)
		if code, _ := ede(r); len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 30 || code != int(dns.ExtendedErrorCodeStaleAnswer) {
			t.Errorf("upstream marked down: %v, want the stale answer", r)
		}
	}
	if got := value(t, f.m.stale); got < 6 {
		t.Errorf("stale answers = %v, want >= 3", got)
	}
}

func TestForwardZone(t *testing.T) {
	up := newStub(t)
	dc := newStub(t)
	dc.set("_ldap._tcp.dc._msdcs.cisss.local.", behaviour{answer: []string{"_ldap._tcp.dc._msdcs.cisss.local. 600 IN SRV 0 100 389 dc1.cisss.local."}})
	dc.set("social.cisss.local.", behaviour{answer: []string{"social.cisss.local. 600 IN A 10.0.0.20"}})
	f := startFilter(t, []string{up.addr}, func(o *Options) {
		o.Forward = []Forward{{Zone: "cisss.local", Upstreams: []string{dc.addr}}}
	})
	r := ask(t, f.addr, "udp", "", "_ldap._tcp.dc._msdcs.cisss.local.", dns.TypeSRV, true)
	if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != dns.TypeSRV {
		t.Errorf("SRV in the forwarded zone: %v", r)
	}
	// Listed in the policy, but in a forwarded zone: the policy does not apply.
	r = ask(t, f.addr, "udp", "127.0.0.1", "social.cisss.local.", dns.TypeA, true)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("listed name in a forwarded zone: %v, want the DC's answer", r)
	}
	if up.count("social.cisss.local.") != 0 || dc.count("social.cisss.local.") != 1 {
		t.Errorf("default upstream asked %d, DC asked %d times, want 0 and 1", up.count("social.cisss.local."), dc.count("social.cisss.local."))
	}
	r = ask(t, f.addr, "udp", "", "other.example.org.", dns.TypeA, false)
	if len(r.Answer) != 1 || dc.count("other.example.org.") != 0 {
		t.Errorf("name outside the zone went to the DC")
	}
}

func TestRateLimit(t *testing.T) {
	up := newStub(t)
	for _, exempt := range []bool{false, true} {
		f := startFilter(t, []string{up.addr}, func(o *Options) {
			o.RateLimit = 2
			o.RateBurst = 5
			if exempt {
				o.RateLimitExempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
			}
		})
		refused := 0
		for range 20 {
			r := ask(t, f.addr, "udp", "127.0.0.2", "rl.example.org.", dns.TypeA, false)
			if r.Rcode == dns.RcodeRefused {
				refused++
			}
		}
		if exempt && refused != 0 {
			t.Errorf("exempt client: %d refused, want 0", refused)
		}
		if !exempt && (refused < 14 || refused > 15) {
			t.Errorf("limited client: %d of 20 refused, want 15 (burst 5)", refused)
		}
		if got := value(t, f.m.rateLimited); got != float64(refused) {
			t.Errorf("rate limited counter = %v, want %d", got, refused)
		}
		// Another client has its own bucket.
		if r := ask(t, f.addr, "udp", "127.0.0.1", "rl.example.org.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
			t.Errorf("other client: rcode %s, want NOERROR", dns.RcodeToString[r.Rcode])
		}
	}
}

func TestReload(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, nil)
	if r := ask(t, f.addr, "udp", "", "www.tiktok.com.", dns.TypeA, true); r.Rcode != dns.RcodeNameError {
		t.Fatalf("before reload: rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	spec := testSpec()
	spec.DefaultAction = policy.Allow
	p, err := policy.New(spec)
	if err != nil {
		t.Fatal(err)
	}
	f.policy.Store(p)
	if r := ask(t, f.addr, "udp", "", "www.tiktok.com.", dns.TypeA, true); r.Rcode != dns.RcodeSuccess {
		t.Errorf("after reload: rcode %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
}

func TestDecisionLog(t *testing.T) {
	up := newStub(t)
	// Lines are written by the goroutines answering queries: a UDP answer
	// does not order their writes before the test's read for the race
	// detector, so the buffer is locked.
	var buf lockedBuffer
	dl := decisionlog.New(slog.New(slog.NewJSONHandler(&buf, nil)), time.Minute, 0)
	f := startFilter(t, []string{up.addr}, func(o *Options) { o.DecisionLog = dl })
	ask(t, f.addr, "udp", "127.0.0.1", "www.facebook.com.", dns.TypeA, false)
	ask(t, f.addr, "udp", "127.0.0.1", "www.facebook.com.", dns.TypeAAAA, false)
	ask(t, f.addr, "udp", "127.0.0.2", "www.facebook.com.", dns.TypeA, false)
	ask(t, f.addr, "udp", "127.0.0.1", "private.example.org.", dns.TypeA, false)
	out := buf.String()
	if strings.Contains(out, "private.example.org") {
		t.Errorf("decision log mentions an unlisted name:\n%s", out)
	}
	if n := strings.Count(out, `"verdict":"block"`); n != 1 {
		t.Errorf("%d block lines, want 1 (deduplicated):\n%s", n, out)
	}
	if n := strings.Count(out, `"verdict":"allow"`); n != 1 || !strings.Contains(out, `"front":"dns"`) {
		t.Errorf("want one allow line with front dns:\n%s", out)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent Write and String.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestMalformed(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, nil)
	conn, err := net.Dial("udp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	twoQ := new(dns.Msg)
	twoQ.SetQuestion("a.example.org.", dns.TypeA)
	twoQ.Question = append(twoQ.Question, dns.Question{Name: "b.example.org.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	twoQPkt, _ := twoQ.Pack()
	noQ := new(dns.Msg)
	noQ.Id = 7
	noQPkt, _ := noQ.Pack()
	upd := new(dns.Msg)
	upd.SetUpdate("example.org.")
	updPkt, _ := upd.Pack()
	badVers := new(dns.Msg)
	badVers.SetQuestion("v.example.org.", dns.TypeA)
	badVers.SetEdns0(1232, false)
	badVers.Extra[0].(*dns.OPT).SetVersion(1)
	badVersPkt, _ := badVers.Pack()
	garbage := append(append([]byte(nil), twoQPkt[:12]...), 0xff, 0xff, 0xff)
	garbage[5] = 1
	tests := []struct {
		name  string
		pkt   []byte
		rcode int // -1: no answer
		kind  int
	}{
		{"short", []byte{1, 2, 3}, -1, malShort},
		{"response", append([]byte{0, 1, 0x80, 0}, make([]byte, 8)...), -1, malResponse},
		{"two questions", twoQPkt, dns.RcodeFormatError, malFormat},
		{"no question", noQPkt, dns.RcodeFormatError, malFormat},
		{"bad name", garbage, dns.RcodeFormatError, malFormat},
		{"update", updPkt, dns.RcodeNotImplemented, malOpcode},
		{"edns version", badVersPkt, dns.RcodeBadVers, malVersion},
	}
	for _, tc := range tests {
		before := value(t, f.m.malformed[tc.kind])
		conn.Write(tc.pkt)
		buf := make([]byte, 1500)
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := conn.Read(buf)
		switch {
		case tc.rcode < 0 && err == nil:
			t.Errorf("%s: got an answer, want none", tc.name)
		case tc.rcode >= 0 && err != nil:
			t.Errorf("%s: no answer (%v), want %s", tc.name, err, dns.RcodeToString[tc.rcode])
		case tc.rcode >= 0:
			var m dns.Msg
			if err := m.Unpack(buf[:n]); err != nil {
				t.Errorf("%s: answer does not parse: %v", tc.name, err)
			} else if m.Rcode != tc.rcode {
				t.Errorf("%s: rcode %s, want %s", tc.name, dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.rcode])
			}
		}
		if got := value(t, f.m.malformed[tc.kind]); got != before+1 {
			t.Errorf("%s: malformed{%s} = %v, want %v", tc.name, malformedNames[tc.kind], got, before+1)
		}
	}
	// Zone transfers are refused.
	for _, network := range []string{"udp", "tcp"} {
		if r := ask(t, f.addr, network, "", "example.org.", dns.TypeAXFR, false); r.Rcode != dns.RcodeRefused {
			t.Errorf("AXFR over %s: rcode %s, want REFUSED", network, dns.RcodeToString[r.Rcode])
		}
	}
	// The filter still answers.
	if r := ask(t, f.addr, "udp", "", "ok.example.org.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
		t.Errorf("after malformed packets: rcode %s", dns.RcodeToString[r.Rcode])
	}

	// An oversized TCP frame closes the connection.
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0xff, 0xff})
	c.Write(make([]byte, 5000))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(make([]byte, 10)); err == nil {
		t.Errorf("oversized TCP frame: read %d bytes, want the connection closed", n)
	}
	if got := value(t, f.m.malformed[malOversized]); got != 1 {
		t.Errorf("malformed{oversized} = %v, want 1", got)
	}
}

func TestReadyAndMetrics(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, func(o *Options) { o.ProbeInterval = 100 * time.Millisecond })
	deadline := time.Now().Add(3 * time.Second)
	for f.Ready() != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := f.Ready(); err != nil {
		t.Errorf("Ready with a live upstream: %v", err)
	}
	ask(t, f.addr, "udp", "", "m.example.org.", dns.TypeA, false)
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"balise_dns_queries_total": false, "balise_dns_request_duration_seconds": false,
		"balise_dns_upstream_request_duration_seconds": false, "balise_dns_upstream_errors_total": false,
		"balise_dns_upstream_up": false, "balise_dns_cache_hits_total": false, "balise_dns_cache_misses_total": false,
		"balise_dns_cache_entries": false, "balise_dns_stale_answers_total": false, "balise_dns_malformed_total": false,
		"balise_dns_identity_decisions_total": false,
		"balise_dns_rate_limited_total":       false, "balise_dns_refusals_total": false, "balise_dns_tcp_connections": false,
	}
	for _, mf := range mfs {
		if _, ok := want[mf.GetName()]; !ok {
			t.Errorf("unexpected metric %s", mf.GetName())
		}
		want[mf.GetName()] = true
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), "example.org") || strings.HasPrefix(l.GetValue(), "127.0.0.") && l.GetName() != "upstream" {
					t.Errorf("%s has a client or name label %s=%s", mf.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
	for name, seen := range want {
		if !seen {
			t.Errorf("metric %s missing", name)
		}
	}
	up.kill()
	deadline = time.Now().Add(5 * time.Second)
	for f.Ready() == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if f.Ready() == nil {
		t.Errorf("Ready with the only upstream down: nil, want an error")
	}
}

func TestUnderscoreAndOddNames(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, nil)
	tests := []struct {
		name  string
		qtype uint16
		rcode int
	}{
		{"_dmarc.facebook.com.", dns.TypeTXT, dns.RcodeNameError},
		{"_xmpp._tcp.www.facebook.com.", dns.TypeSRV, dns.RcodeNameError},
		{"_8443._https.facebook.com.", dns.TypeHTTPS, dns.RcodeNameError},
		{`we\.ird.facebook.com.`, dns.TypeA, dns.RcodeNameError},
		{"_ldap._tcp.example.org.", dns.TypeSRV, dns.RcodeSuccess},
		{`odd\ name.example.org.`, dns.TypeA, dns.RcodeSuccess},
		{".", dns.TypeNS, dns.RcodeSuccess},
	}
	for _, tc := range tests {
		r := ask(t, f.addr, "udp", "127.0.0.1", tc.name, tc.qtype, true)
		if r.Rcode != tc.rcode {
			t.Errorf("%s %s: rcode %s, want %s", tc.name, dns.TypeToString[tc.qtype], dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
		}
		if r.Question[0].Name != tc.name {
			t.Errorf("%s: question echoed as %q", tc.name, r.Question[0].Name)
		}
	}
}

func TestPrefetch(t *testing.T) {
	up := newStub(t)
	clock := &fakeClock{now: time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)}
	f := startFilter(t, []string{up.addr}, func(o *Options) { o.Clock = clock.Now })
	const name = "popular.example.org."
	up.set(name, behaviour{answer: []string{name + " 100 IN A 192.0.2.70"}})
	ask(t, f.addr, "udp", "", name, dns.TypeA, false)
	clock.Add(50 * time.Second)
	ask(t, f.addr, "udp", "", name, dns.TypeA, false)
	if n := up.count(name); n != 1 {
		t.Fatalf("at half its life: upstream asked %d times, want 1", n)
	}
	clock.Add(45 * time.Second) // 5 s left of 100
	r := ask(t, f.addr, "udp", "", name, dns.TypeA, false)
	if len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 5 {
		t.Fatalf("in the last tenth: %v, want the cached answer with TTL 5", r.Answer)
	}
	deadline := time.Now().Add(3 * time.Second)
	for up.count(name) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := up.count(name); n != 2 {
		t.Fatalf("upstream asked %d times, want 2 (one background refresh)", n)
	}
	deadline = time.Now().Add(3 * time.Second)
	for {
		r = ask(t, f.addr, "udp", "", name, dns.TypeA, false)
		if r.Answer[0].Header().Ttl == 100 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ttl := r.Answer[0].Header().Ttl; ttl != 100 {
		t.Errorf("after the refresh: TTL %d, want 100", ttl)
	}
}
