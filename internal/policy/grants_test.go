package policy

import (
	"net/netip"
	"testing"
	"time"
)

func TestDecideGrants(t *testing.T) {
	base := mustNew(t, testSpec(t))
	tue := func(hms string) time.Time { return at(t, "2026-11-17 "+hms) }
	wed := func(hms string) time.Time { return at(t, "2026-11-18 "+hms) }
	grants := []Grant{
		{ID: "prefix", Subject: pfx("10.1.2.0/24"), Services: []string{"facebook"}, NotBefore: tue("13:55:00"), NotAfter: tue("14:30:00")},
		{ID: "user", User: "bob", Services: []string{"*"}, NotBefore: tue("16:00:00"), NotAfter: tue("17:00:00")},
		{ID: "host", Subject: pfx("10.9.9.9/32"), Services: []string{"x", "nope"}, NotAfter: wed("09:00:00")},
		{ID: "across-break", Subject: pfx("10.7.0.0/16"), Services: []string{"facebook"}, NotBefore: tue("11:00:00"), NotAfter: tue("12:30:00")},
		{ID: "mapped", Subject: pfx("::ffff:10.8.0.0/112"), Services: []string{"facebook"}, NotBefore: tue("11:00:00"), NotAfter: tue("15:00:00")},
		{ID: "v6", Subject: pfx("2001:db8:77::/48"), Services: []string{"*"}, NotBefore: tue("11:00:00"), NotAfter: tue("15:00:00")},
		// short is active inside long; long ends later and wins; short
		// starting inside long does not change anything.
		{ID: "long", Subject: pfx("10.6.0.0/16"), Services: []string{"facebook"}, NotBefore: tue("08:00:00"), NotAfter: tue("18:00:00")},
		{ID: "short", Subject: pfx("10.6.0.0/16"), Services: []string{"facebook"}, NotBefore: tue("09:00:00"), NotAfter: tue("09:30:00")},
		{ID: "takeover", Subject: pfx("10.6.0.0/16"), Services: []string{"facebook"}, NotBefore: tue("17:00:00"), NotAfter: tue("19:00:00")},
		// Ignored: unknown service only, no subject, empty interval, no end.
		{ID: "unknown", Subject: pfx("10.0.0.0/8"), Services: []string{"myspace"}, NotAfter: wed("09:00:00")},
		{ID: "nobody", Services: []string{"*"}, NotAfter: wed("09:00:00")},
		{ID: "empty", Subject: pfx("10.0.0.0/8"), Services: []string{"*"}, NotBefore: tue("12:00:00"), NotAfter: tue("12:00:00")},
		{ID: "noend", Subject: pfx("10.0.0.0/8"), Services: []string{"*"}},
	}
	p := base.WithGrants(grants)
	grant := func(id, svc, cat string, until time.Time) Decision {
		return Decision{Verdict: Allow, Reason: ReasonGrant, Grant: id, Service: svc, Category: cat, Until: until}
	}
	fb := func(c netip.Addr, tm time.Time) Query { return Query{Host: "www.facebook.com", Client: c, Time: tm} }
	runDecide(t, p, []decideCase{
		{"prefix grant", fb(staff, tue("14:00:00")), grant("prefix", "facebook", "networking", tue("14:30:00"))},
		{"grant at its start", fb(staff, tue("13:55:00")), grant("prefix", "facebook", "networking", tue("14:30:00"))},
		{"not yet: until its start", fb(staff, tue("13:50:00")), blocked("facebook", "networking", tue("13:55:00"))},
		{"expired", fb(staff, tue("14:30:00")), blocked("facebook", "networking", wed("10:00:00"))},
		{"other service", Query{Host: "x.com", Client: staff, Time: tue("14:00:00")}, blocked("x", "microblogging", wed("10:00:00"))},
		{"other client", fb(netip.MustParseAddr("10.1.3.1"), tue("14:00:00")), blocked("facebook", "networking", wed("10:00:00"))},
		{"user grant, any service", Query{Host: "x.com", Client: outsider, User: "Bob", Time: tue("16:10:00")},
			grant("user", "x", "microblogging", tue("17:00:00"))},
		{"user grant needs the user", Query{Host: "x.com", Client: outsider, Time: tue("16:10:00")},
			blocked("x", "microblogging", tue("16:10:00").Add(24*time.Hour))},
		{"user grant starts later", Query{Host: "x.com", Client: outsider, User: "bob", Time: tue("15:00:00")},
			blocked("x", "microblogging", tue("16:00:00"))},
		{"host grant, known service kept", Query{Host: "x.com", Client: netip.MustParseAddr("10.9.9.9"), Time: tue("14:00:00")},
			grant("host", "x", "microblogging", wed("09:00:00"))},
		{"grant ending before the next window edge", fb(netip.MustParseAddr("10.7.1.1"), tue("11:30:00")),
			grant("across-break", "facebook", "networking", tue("12:30:00"))},
		{"after a grant, inside the break", fb(netip.MustParseAddr("10.7.1.1"), tue("12:30:00")),
			ruled(Allow, "pauses", "facebook", "networking", tue("13:00:00"))},
		{"v4-mapped grant prefix", fb(netip.MustParseAddr("10.8.0.1"), tue("11:30:00")), grant("mapped", "facebook", "networking", tue("15:00:00"))},
		{"v4-mapped client", fb(netip.MustParseAddr("::ffff:10.8.0.1"), tue("11:30:00")), grant("mapped", "facebook", "networking", tue("15:00:00"))},
		{"v6 grant", fb(netip.MustParseAddr("2001:db8:77::1"), tue("11:30:00")), grant("v6", "facebook", "networking", tue("15:00:00"))},
		{"longest grant wins", fb(netip.MustParseAddr("10.6.0.1"), tue("09:10:00")), grant("long", "facebook", "networking", tue("17:00:00"))},
		{"taken over by a later grant", fb(netip.MustParseAddr("10.6.0.1"), tue("17:00:00")), grant("takeover", "facebook", "networking", tue("19:00:00"))},
		{"unknown-service grant ignored", fb(netip.MustParseAddr("10.2.0.1"), tue("14:00:00")), blocked("facebook", "networking", wed("10:00:00"))},
		{"grants do not lift canaries", Query{Host: "use-application-dns.net", Client: netip.MustParseAddr("10.9.9.9"), Time: tue("14:00:00")},
			Decision{Verdict: Block, Reason: ReasonCanary}},
	})
	if got := len(p.Grants()); got != len(grants) {
		t.Errorf("len(Grants()) = %d, want %d", got, len(grants))
	}
	if got := len(base.Grants()); got != 0 {
		t.Errorf("base policy: len(Grants()) = %d, want 0", got)
	}
	if base.c != p.c {
		t.Errorf("WithGrants recompiled the policy")
	}
	// The base policy is unchanged.
	if d := base.Decide(fb(staff, tue("14:00:00"))); d.Reason != ReasonDefault {
		t.Errorf("base.Decide = %v, want the default", d)
	}
	// Grants are copied: changing the caller's slice changes nothing.
	grants[0].ID = "changed"
	if d := p.Decide(fb(staff, tue("14:00:00"))); d.Grant != "prefix" {
		t.Errorf("Decide after the caller changed its slice = %v, want grant prefix", d)
	}
}
