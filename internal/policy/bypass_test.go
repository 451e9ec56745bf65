package policy

import (
	"net/netip"
	"testing"
	"time"
)

// bypassSpec is testSpec plus DNS-over-HTTPS endpoints (the catalog's doh
// service and a local list in the doh category), the allow-list entries
// that could reopen them, and rules that use "*" in every way a
// configuration can.
func bypassSpec(t testing.TB, defaultAction Verdict, rules ...Rule) Spec {
	t.Helper()
	spec := testSpec(t)
	spec.DefaultAction = defaultAction
	spec.Services = append(spec.Services,
		Service{ID: "doh", Name: "DNS-over-HTTPS endpoints", Category: BypassCategory,
			Domains: []string{"dns.google", "dns.google.com", "cloudflare-dns.com", "dns.nextdns.io", "doh.opendns.com"}},
		Service{ID: "doh-local", Category: BypassCategory, Domains: []string{"doh.example.net"}},
	)
	// Parents of listed DoH names (an institution allowing Google or
	// OpenDNS's sites), a DoH name itself, a canary's parent.
	spec.AllowHosts = append(spec.AllowHosts, "google.com", "opendns.com", "dns.nextdns.io", "icloud.com")
	spec.Rules = rules
	return spec
}

var (
	// starRules are the authorized group's usual rules, written every
	// way "every service" can be written.
	starRules = map[string]Rule{
		`services = ["*"]`:   {Name: "comms", Groups: []string{"communications"}, Services: []string{"*"}, Action: Allow},
		`categories = ["*"]`: {Name: "comms", Groups: []string{"communications"}, Categories: []string{"*"}, Action: Allow},
		"no services":        {Name: "comms", Groups: []string{"communications"}, Action: Allow},
		`services and categories = ["*"]`: {Name: "comms", Groups: []string{"communications"},
			Services: []string{"*"}, Categories: []string{"*"}, Action: Allow},
		`"*" during a window that is open`: {Name: "comms", Groups: []string{"communications"}, Services: []string{"*"},
			During: []string{"always"}, Action: Allow},
	}
	dohHosts = []string{"dns.google", "DNS.Google.", "dns.google.com", "mozilla.cloudflare-dns.com",
		"doh.opendns.com", "doh.example.net"}
)

// TestBypassStarRules: "*" never reaches the doh category, whatever the
// default action, while it still reaches every other service.
func TestBypassStarRules(t *testing.T) {
	tue14 := at(t, "2026-11-17 14:00:00")
	for name, r := range starRules {
		for _, def := range []Verdict{Block, Allow} {
			t.Run(name+"/default "+def.String(), func(t *testing.T) {
				spec := bypassSpec(t, def, r)
				spec.Schedules = append(spec.Schedules, Schedule{Name: "always", Windows: mustWindows(t, "daily 00:00-24:00")})
				p := mustNew(t, spec)
				for _, h := range dohHosts {
					for _, c := range []netip.Addr{comms, staff, outsider} {
						d := p.Decide(Query{Host: h, Client: c, Time: tue14})
						if d.Verdict != Block || d.Reason != ReasonDefault || !d.Bypass || d.Category != BypassCategory {
							t.Errorf("Decide(%s from %v) = %v (bypass %v, category %q), want block/default bypass doh",
								h, c, d, d.Bypass, d.Category)
						}
					}
				}
				// The positive side: "*" still reaches the other services.
				if d := p.Decide(Query{Host: "www.facebook.com", Client: comms, Time: tue14}); d.Verdict != Allow || d.Reason != ReasonRule || d.Bypass {
					t.Errorf("Decide(www.facebook.com from comms) = %v, want allow/rule", d)
				}
				want := def
				if d := p.Decide(Query{Host: "www.facebook.com", Client: staff, Time: tue14}); d.Verdict != want || d.Reason != ReasonDefault {
					t.Errorf("Decide(www.facebook.com from staff) = %v, want %v/default", d, want)
				}
			})
		}
	}
}

// TestBypassNamed: only a rule that names the doh category or a doh
// service lifts it, and only for what it names.
func TestBypassNamed(t *testing.T) {
	tue14 := at(t, "2026-11-17 14:00:00")
	tue12 := at(t, "2026-11-17 12:30:00")
	comms14 := func(h string) Query { return Query{Host: h, Client: comms, Time: tue14} }
	staff14 := func(h string) Query { return Query{Host: h, Client: staff, Time: tue14} }
	cases := []struct {
		name  string
		def   Verdict
		rules []Rule
		q     Query
		want  Decision
	}{
		{"category doh named", Block, []Rule{{Name: "doh", Groups: []string{"communications"}, Categories: []string{"doh"}, Action: Allow}},
			comms14("dns.google"), Decision{Verdict: Allow, Reason: ReasonRule, Rule: "doh", Service: "doh", Category: "doh", Until: tue14.Add(24 * time.Hour)}},
		{"category doh named, local doh list too", Block, []Rule{{Name: "doh", Groups: []string{"communications"}, Categories: []string{"doh"}, Action: Allow}},
			comms14("doh.example.net"), Decision{Verdict: Allow, Reason: ReasonRule, Rule: "doh", Service: "doh-local", Category: "doh", Until: tue14.Add(24 * time.Hour)}},
		{"category doh named, other group", Block, []Rule{{Name: "doh", Groups: []string{"communications"}, Categories: []string{"doh"}, Action: Allow}},
			staff14("dns.google"), Decision{Verdict: Block, Reason: ReasonDefault, Service: "doh", Category: "doh", Until: tue14.Add(24 * time.Hour)}},
		{"service doh named", Allow, []Rule{{Name: "svc", Groups: []string{"*"}, Services: []string{"doh"}, Action: Allow}},
			staff14("cloudflare-dns.com"), Decision{Verdict: Allow, Reason: ReasonRule, Rule: "svc", Service: "doh", Category: "doh", Until: tue14.Add(24 * time.Hour)}},
		{"service doh named, the local list is not", Allow, []Rule{{Name: "svc", Groups: []string{"*"}, Services: []string{"doh"}, Action: Allow}},
			staff14("doh.example.net"), Decision{Verdict: Block, Reason: ReasonDefault, Service: "doh-local", Category: "doh", Until: tue14.Add(24 * time.Hour)}},
		{"doh named with *, during a break", Block, []Rule{{Name: "pauses", Groups: []string{"*"}, Services: []string{"*"}, Categories: []string{"doh"}, During: []string{"pauses"}, Action: Allow}},
			staff14("dns.google"), Decision{Verdict: Block, Reason: ReasonDefault, Service: "doh", Category: "doh", Until: at(t, "2026-11-18 10:00:00")}},
		{"doh named with *, inside the break", Block, []Rule{{Name: "pauses", Groups: []string{"*"}, Services: []string{"*"}, Categories: []string{"doh"}, During: []string{"pauses"}, Action: Allow}},
			Query{Host: "dns.google", Client: staff, Time: tue12}, Decision{Verdict: Allow, Reason: ReasonRule, Rule: "pauses", Service: "doh", Category: "doh", Until: at(t, "2026-11-17 13:00:00")}},
		{"the default pauses rule (services *) inside the break", Block, []Rule{{Name: "pauses", Groups: []string{"*"}, Services: []string{"*"}, During: []string{"pauses"}, Action: Allow}},
			Query{Host: "dns.google", Client: staff, Time: tue12}, Decision{Verdict: Block, Reason: ReasonDefault, Service: "doh", Category: "doh", Until: tue12.Add(24 * time.Hour)}},
		{"a * block rule does not reach doh: a later rule naming doh decides", Block, []Rule{
			{Name: "all", Groups: []string{"communications"}, Services: []string{"*"}, Action: Block},
			{Name: "doh", Groups: []string{"*"}, Categories: []string{"doh"}, Action: Allow}},
			comms14("dns.google"), Decision{Verdict: Allow, Reason: ReasonRule, Rule: "doh", Service: "doh", Category: "doh", Until: tue14.Add(24 * time.Hour)}},
		{"allow list parent does not open doh", Allow, nil, staff14("dns.google.com"),
			Decision{Verdict: Block, Reason: ReasonDefault, Service: "doh", Category: "doh", Until: tue14.Add(24 * time.Hour)}},
		{"allow list parent still allows the rest", Block, nil, staff14("www.google.com"), Decision{Reason: ReasonAllowList}},
		{"allow list parent of doh.opendns.com", Block, nil, staff14("doh.opendns.com"),
			Decision{Verdict: Block, Reason: ReasonDefault, Service: "doh", Category: "doh", Until: tue14.Add(24 * time.Hour)}},
		{"allow list naming the doh host itself", Block, nil, staff14("abc.dns.nextdns.io"), Decision{Reason: ReasonAllowList, Service: "doh", Category: "doh"}},
		{"allow list does not lift a canary", Allow, nil, staff14("mask.icloud.com"), Decision{Verdict: Block, Reason: ReasonCanary}},
		{"allow list parent of a canary still allows the rest", Block, nil, staff14("www.icloud.com"), Decision{Reason: ReasonAllowList}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := bypassSpec(t, tc.def, tc.rules...)
			p := mustNew(t, spec)
			if got := p.Decide(tc.q); !same(got, tc.want) {
				t.Errorf("Decide(%+v) = %v, want %v", tc.q, got, tc.want)
			}
		})
	}
}

// TestBypassGrants: a grant for "*" does not open doh; one naming the doh
// service does.
func TestBypassGrants(t *testing.T) {
	tue := func(hms string) time.Time { return at(t, "2026-11-17 "+hms) }
	p := mustNew(t, bypassSpec(t, Block)).WithGrants([]Grant{
		{ID: "star", Subject: pfx("10.1.2.3/32"), Services: []string{"*"}, NotAfter: tue("18:00:00")},
		{ID: "star-user", User: "bob", Services: []string{"*"}, NotAfter: tue("18:00:00")},
		{ID: "named", Subject: pfx("10.1.9.9/32"), Services: []string{"doh"}, NotAfter: tue("18:00:00")},
	})
	q := func(h string, c string, user string) Query {
		return Query{Host: h, Client: netip.MustParseAddr(c), User: user, Time: tue("14:00:00")}
	}
	runDecide(t, p, []decideCase{
		{"grant * opens facebook", q("www.facebook.com", "10.1.2.3", ""),
			Decision{Verdict: Allow, Reason: ReasonGrant, Grant: "star", Service: "facebook", Category: "networking", Until: tue("18:00:00")}},
		{"grant * does not open doh", q("dns.google", "10.1.2.3", ""),
			Decision{Verdict: Block, Reason: ReasonDefault, Service: "doh", Category: "doh", Until: tue("14:00:00").Add(24 * time.Hour)}},
		{"user grant * does not open doh", q("doh.example.net", "192.0.2.1", "Bob"),
			Decision{Verdict: Block, Reason: ReasonDefault, Service: "doh-local", Category: "doh", Until: tue("14:00:00").Add(24 * time.Hour)}},
		{"grant naming doh opens it", q("cloudflare-dns.com", "10.1.9.9", ""),
			Decision{Verdict: Allow, Reason: ReasonGrant, Grant: "named", Service: "doh", Category: "doh", Until: tue("18:00:00")}},
		{"grant naming doh opens nothing else", q("www.facebook.com", "10.1.9.9", ""), blocked("facebook", "networking", tue("14:00:00").Add(24*time.Hour))},
	})
}

// TestBypassAllocs keeps the decision for a doh host allocation-free.
func TestBypassAllocs(t *testing.T) {
	p := mustNew(t, bypassSpec(t, Allow, starRules[`services = ["*"]`]))
	q := Query{Host: "abc123.dns.nextdns.io.", Client: comms, Time: at(t, "2026-11-17 14:00:00")}
	if n := testing.AllocsPerRun(100, func() { p.Decide(q) }); n != 0 {
		t.Errorf("Decide(%s) allocates %v times, want 0", q.Host, n)
	}
}
