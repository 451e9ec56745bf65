package policy_test

import (
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
	"github.com/balise-net/balise/internal/policy/synth"
)

var (
	bigOnce   sync.Once
	bigPolicy *policy.Policy
	bigList   []string
)

// big returns a policy with the synthetic catalog and a 1,000,000-domain
// list, built once per test binary.
func big(b *testing.B) (*policy.Policy, []string) {
	b.Helper()
	bigOnce.Do(func() {
		bigList = synth.Domains(1_000_000, 1)
		p, err := policy.New(synth.Spec(150, bigList))
		if err != nil {
			b.Fatalf("New: %v", err)
		}
		bigPolicy = p
	})
	if bigPolicy == nil {
		b.Fatal("big policy not built")
	}
	return bigPolicy, bigList
}

func benchDecide(b *testing.B, p *policy.Policy, hosts []string) {
	b.Helper()
	r := rand.New(rand.NewPCG(5, 6))
	clients := []netip.Addr{
		netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.20.30.4"),
		netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::5"),
	}
	loc, _ := time.LoadLocation("America/Toronto")
	base := time.Date(2026, 11, 17, 9, 0, 0, 0, loc)
	// A front-end decides on a name it has just read from a packet: the
	// name is in cache. Copy the hosts next to each other so that reading
	// them does not count the misses of the list's scattered strings.
	qs := make([]policy.Query, 1024)
	for i := range qs {
		qs[i] = policy.Query{
			Host:   strings.Clone(hosts[r.IntN(len(hosts))]),
			Client: clients[r.IntN(len(clients))],
			Time:   base.Add(time.Duration(r.Int64N(int64(8 * time.Hour)))),
		}
	}
	// On a shared machine wall-clock ns/op counts the time other
	// processes hold the CPU; cpu-ns/op is this thread's CPU time only.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0, ok := threadCPU()
	for i := 0; i < b.N; i++ {
		_ = p.Decide(qs[i&(len(qs)-1)])
	}
	if cpu1, ok1 := threadCPU(); ok && ok1 {
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkDecide measures decisions against the synthetic catalog plus a
// 1,000,000-domain list: listed hosts (a random list entry, half of them
// with an extra subdomain), unlisted hosts, and the catalog's names.
func BenchmarkDecide(b *testing.B) {
	p, list := big(b)
	r := rand.New(rand.NewPCG(7, 8))
	listed := make([]string, 1024)
	for i := range listed {
		listed[i] = list[r.IntN(len(list))]
		if i%2 == 0 {
			listed[i] = "www." + listed[i]
		}
	}
	b.Run("listed", func(b *testing.B) { benchDecide(b, p, listed) })
	b.Run("unlisted", func(b *testing.B) { benchDecide(b, p, synth.UnlistedHosts(1024, 9)) })
	b.Run("catalog", func(b *testing.B) {
		benchDecide(b, p, []string{"www.facebook.com", "WWW.FaceBook.COM.", "x.com", "static.xx.fbcdn.com", "t.co", "player.vimeo.com"})
	})
	b.Run("idn", func(b *testing.B) { benchDecide(b, p, []string{"bücher.example", "www.québec.ca"}) })
}

// BenchmarkNew measures compiling the catalog plus a 1,000,000-domain list.
func BenchmarkNew(b *testing.B) {
	list := synth.Domains(1_000_000, 1)
	spec := synth.Spec(150, list)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := policy.New(spec); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWithGrants measures swapping a snapshot of 1,000 grants.
func BenchmarkWithGrants(b *testing.B) {
	p, err := policy.New(synth.Spec(150))
	if err != nil {
		b.Fatal(err)
	}
	ids := p.ServiceIDs()
	gs := make([]policy.Grant, 1000)
	now := time.Now()
	for i := range gs {
		gs[i] = policy.Grant{
			ID:       "g",
			Subject:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 32),
			Services: []string{ids[i%len(ids)]},
			NotAfter: now.Add(time.Hour),
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = p.WithGrants(gs)
	}
}

// BenchmarkIdentityMatters measures the proxy's question before a 407 on
// the big policy: listed hosts (whose service a group with directory
// groups reaches) and unlisted hosts.
func BenchmarkIdentityMatters(b *testing.B) {
	p, list := big(b)
	r := rand.New(rand.NewPCG(11, 12))
	hosts := make([]string, 1024)
	for i := range hosts {
		if i%2 == 0 {
			hosts[i] = strings.Clone("www." + list[r.IntN(len(list))])
		} else {
			hosts[i] = strings.Clone(synth.UnlistedHosts(1, uint64(i))[0])
		}
	}
	now := time.Date(2026, 11, 17, 14, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = p.IdentityMatters(hosts[i&(len(hosts)-1)], now)
	}
}
