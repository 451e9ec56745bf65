package dnsfilter

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/balise-net/balise/internal/policy"
)

// TestIdentityDecisions checks that a listed name whose verdict depends on
// who asks is decided for the user bound to the client's address, by name
// and by directory group (DN), that an address with no single user is
// decided by network groups, and that the identity source is asked only
// for such names.
func TestIdentityDecisions(t *testing.T) {
	spec := testSpec()
	spec.Groups = append(spec.Groups,
		policy.Group{Name: "editors", DirectoryGroups: []string{"CN=Communications,OU=Groups,DC=chus,DC=local"}, Users: []string{"carol"}})
	spec.Rules = append([]policy.Rule{{Name: "editors", Groups: []string{"editors"}, Services: []string{"tiktok"}, Action: policy.Allow}}, spec.Rules...)
	pol, err := policy.New(spec)
	if err != nil {
		t.Fatal(err)
	}
	bound := map[netip.Addr]struct {
		user   string
		groups []string
	}{
		netip.MustParseAddr("127.0.0.3"): {"alice", []string{"CN=Communications,OU=Groups,DC=chus,DC=local"}},
		netip.MustParseAddr("127.0.0.5"): {"Carol", nil},
		netip.MustParseAddr("127.0.0.6"): {"dave", []string{"CN=Nursing,OU=Groups,DC=chus,DC=local"}},
	}
	var asked atomic.Int64
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, func(o *Options) {
		var ptr atomic.Pointer[policy.Policy]
		ptr.Store(pol)
		o.Policy = &ptr
		o.Identity = func(c netip.Addr, _ time.Time) (string, []string, bool) {
			asked.Add(1)
			b, ok := bound[c]
			return b.user, b.groups, ok
		}
	})
	for _, n := range []string{"www.tiktok.com.", "www.facebook.com.", "plain.example.org."} {
		up.set(n, behaviour{answer: []string{n + " 3600 IN A 192.0.2.50"}})
	}
	steps := []struct {
		local, name string
		rcode       int
		asks        bool // whether the identity source is asked
	}{
		{"127.0.0.3", "www.tiktok.com.", dns.RcodeSuccess, true},      // alice, by directory group
		{"127.0.0.5", "www.tiktok.com.", dns.RcodeSuccess, true},      // carol, by name, any case
		{"127.0.0.6", "www.tiktok.com.", dns.RcodeNameError, true},    // dave: another group
		{"127.0.0.4", "www.tiktok.com.", dns.RcodeNameError, true},    // no single user
		{"127.0.0.3", "www.facebook.com.", dns.RcodeNameError, false}, // no rule names a person
		{"127.0.0.3", "plain.example.org.", dns.RcodeSuccess, false},  // unlisted
	}
	for i, s := range steps {
		before := asked.Load()
		r := ask(t, f.addr, "udp", s.local, s.name, dns.TypeA, true)
		if r.Rcode != s.rcode {
			t.Errorf("step %d: %s from %s: rcode %s, want %s", i, s.name, s.local, dns.RcodeToString[r.Rcode], dns.RcodeToString[s.rcode])
		}
		if got := asked.Load() - before; (got > 0) != s.asks {
			t.Errorf("step %d: %s from %s: identity asked %d times, want asked: %v", i, s.name, s.local, got, s.asks)
		}
	}
	// Three queries had a user (alice, carol, dave; 127.0.0.4 had none);
	// allowed answers decide their owner names once more.
	if v := value(t, f.m.identityDecisions); v < 3 || v > 6 {
		t.Errorf("balise_dns_identity_decisions_total = %v, want 3 to 6", v)
	}
}
