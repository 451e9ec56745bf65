package policy

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func creditDecision(svc, cat, credit string, until time.Time) Decision {
	return Decision{Verdict: Allow, Reason: ReasonCredit, Service: svc, Category: cat, Credit: credit, Until: until}
}

func runCredit(t *testing.T, p *Policy, cases []decideCase) {
	t.Helper()
	runDecide(t, p, cases)
	for _, tc := range cases {
		if got := p.Decide(tc.q); got.Credit != tc.want.Credit {
			t.Errorf("%s: Credit = %q, want %q", tc.name, got.Credit, tc.want.Credit)
		}
	}
}

func TestDecideBreaks(t *testing.T) {
	base := mustNew(t, testSpec(t))
	tue := func(hms string) time.Time { return at(t, "2026-11-17 "+hms) }
	wed := func(hms string) time.Time { return at(t, "2026-11-18 "+hms) }
	fbSvc := []string{"facebook", "instagram", "x"}
	p := base.WithGrants([]Grant{
		// Across midnight: 23:50 to 00:20.
		{ID: "credit:pause", Credit: "pause", Subject: pfx("10.1.2.3/32"), Services: fbSvc, NotBefore: tue("23:50:00"), NotAfter: wed("00:20:00")},
		// A person's break follows them to any workstation.
		{ID: "credit:pause", Credit: "pause", User: "alice", Services: fbSvc, NotBefore: tue("15:00:00"), NotAfter: tue("15:30:00")},
		// A workstation on IPv6, by its /64.
		{ID: "credit:pause", Credit: "pause", Subject: pfx("2001:db8:1:2::/64"), Services: fbSvc, NotBefore: tue("15:00:00"), NotAfter: tue("15:30:00")},
		// Inside the scheduled lunch window (rule pauses allows too):
		// the break decides, before the rules.
		{ID: "credit:pause", Credit: "pause", Subject: pfx("10.1.2.4/32"), Services: fbSvc, NotBefore: tue("12:30:00"), NotAfter: tue("13:10:00")},
		// A grant for the same client wins over its break.
		{ID: "g1", Subject: pfx("10.1.2.5/32"), Services: []string{"facebook"}, NotBefore: tue("15:10:00"), NotAfter: tue("16:00:00")},
		{ID: "credit:pause", Credit: "pause", Subject: pfx("10.1.2.5/32"), Services: fbSvc, NotBefore: tue("15:00:00"), NotAfter: tue("15:30:00")},
		// A subject other than a /32 or a /64 (not made by the register)
		// still applies.
		{ID: "credit:pause", Credit: "pause", Subject: pfx("10.3.0.0/16"), Services: fbSvc, NotBefore: tue("15:00:00"), NotAfter: tue("15:30:00")},
		// Two breaks of one workstation: the one lasting longest decides.
		{ID: "credit:a", Credit: "a", Subject: pfx("10.1.2.6/32"), Services: fbSvc, NotBefore: tue("15:00:00"), NotAfter: tue("15:20:00")},
		{ID: "credit:b", Credit: "b", Subject: pfx("10.1.2.6/32"), Services: []string{"facebook"}, NotBefore: tue("15:00:00"), NotAfter: tue("15:40:00")},
	})
	fb := func(c netip.Addr, tm time.Time) Query { return Query{Host: "www.facebook.com", Client: c, Time: tm} }
	runCredit(t, p, []decideCase{
		{"before midnight", fb(staff, tue("23:55:00")), creditDecision("facebook", "networking", "pause", wed("00:20:00"))},
		{"after midnight", fb(staff, wed("00:10:00")), creditDecision("facebook", "networking", "pause", wed("00:20:00"))},
		{"at its end", fb(staff, wed("00:20:00")), blocked("facebook", "networking", wed("10:00:00"))},
		{"before it starts: until its start", fb(staff, tue("23:00:00")), blocked("facebook", "networking", tue("23:50:00"))},
		{"a service it does not cover", Query{Host: "linkedin.com", Client: staff, Time: tue("23:55:00")}, blocked("linkedin", "networking", wed("10:00:00"))},
		{"the person elsewhere", Query{Host: "x.com", Client: outsider, User: "ALICE", Time: tue("15:10:00")}, creditDecision("x", "microblogging", "pause", tue("15:30:00"))},
		{"someone else there", Query{Host: "x.com", Client: outsider, User: "bob", Time: tue("15:10:00")}, blocked("x", "microblogging", wed("15:10:00"))},
		{"another privacy address of the /64", fb(netip.MustParseAddr("2001:db8:1:2:aaaa::9"), tue("15:10:00")), creditDecision("facebook", "networking", "pause", tue("15:30:00"))},
		{"another /64", fb(netip.MustParseAddr("2001:db8:1:3::9"), tue("15:10:00")), blocked("facebook", "networking", wed("10:00:00"))},
		{"break before rules, ending after the window", fb(netip.MustParseAddr("10.1.2.4"), tue("12:40:00")), creditDecision("facebook", "networking", "pause", tue("13:10:00"))},
		{"break ended, window ended", fb(netip.MustParseAddr("10.1.2.4"), tue("13:10:00")), blocked("facebook", "networking", wed("10:00:00"))},
		{"break until a grant starts", fb(netip.MustParseAddr("10.1.2.5"), tue("15:05:00")), creditDecision("facebook", "networking", "pause", tue("15:10:00"))},
		{"a wider subject", fb(netip.MustParseAddr("10.3.4.5"), tue("15:10:00")), creditDecision("facebook", "networking", "pause", tue("15:30:00"))},
		{"the longest break", fb(netip.MustParseAddr("10.1.2.6"), tue("15:10:00")), creditDecision("facebook", "networking", "b", tue("15:40:00"))},
		{"the break covering the service", Query{Host: "x.com", Client: netip.MustParseAddr("10.1.2.6"), Time: tue("15:10:00")}, creditDecision("x", "microblogging", "a", tue("15:20:00"))},
		{"grant before break", fb(netip.MustParseAddr("10.1.2.5"), tue("15:20:00")), Decision{Verdict: Allow, Reason: ReasonGrant, Grant: "g1", Service: "facebook", Category: "networking", Until: tue("16:00:00")}},
	})
	if n := len(p.Grants()); n != 9 {
		t.Errorf("len(Grants()) = %d, want 9 (breaks included)", n)
	}
	spec := testSpec(t)
	spec.Groups = slices.DeleteFunc(spec.Groups, func(g Group) bool { return g.Name == "autorises" })
	spec.Rules = slices.DeleteFunc(spec.Rules, func(r Rule) bool { return r.Name == "autorises" })
	pi := mustNew(t, spec).WithGrants(p.Grants())
	if !pi.IdentityMatters("x.com", tue("15:10:00")) || pi.IdentityMatters("x.com", tue("15:30:00")) {
		t.Errorf("IdentityMatters: a person's break makes identity matter while it lasts, and only then")
	}
	q := fb(staff, tue("23:55:00"))
	if n := testing.AllocsPerRun(100, func() { p.Decide(q) }); n != 0 {
		t.Errorf("Decide with a break allocates %v times", n)
	}
}

// A break lasts real minutes across a DST change: the engine's clock is
// the instant, and Until is the break's end, not a wall-clock time.
func TestDecideBreakDST(t *testing.T) {
	base := mustNew(t, testSpec(t))
	loc := mustLoc(t, "America/Toronto")
	for _, tc := range []struct {
		name    string
		start   time.Time
		wallEnd string
	}{
		// 2026-11-01: 02:00 EDT becomes 01:00 EST. 01:50 EDT + 30 min
		// is 01:20 EST.
		{"fall back", time.Date(2026, 11, 1, 5, 50, 0, 0, time.UTC), "2026-11-01 01:20 EST"},
		// 2026-03-08: 02:00 EST becomes 03:00 EDT. 01:50 EST + 30 min
		// is 03:20 EDT.
		{"spring forward", time.Date(2026, 3, 8, 6, 50, 0, 0, time.UTC), "2026-03-08 03:20 EDT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			end := tc.start.Add(30 * time.Minute)
			p := base.WithGrants([]Grant{{ID: "credit:pause", Credit: "pause", Subject: pfx("10.1.2.3/32"), Services: []string{"facebook"}, NotBefore: tc.start, NotAfter: end}})
			if got := end.In(loc).Format("2006-01-02 15:04 MST"); got != tc.wallEnd {
				t.Fatalf("test data: end is %s, want %s", got, tc.wallEnd)
			}
			for _, m := range []int{0, 9, 10, 11, 29} {
				now := tc.start.Add(time.Duration(m) * time.Minute)
				d := p.Decide(Query{Host: "facebook.com", Client: staff, Time: now})
				if d.Reason != ReasonCredit || !d.Until.Equal(end) || d.Until.Sub(now) != time.Duration(30-m)*time.Minute {
					t.Errorf("+%d min: %v, want credit until %v", m, d, end)
				}
			}
			if d := p.Decide(Query{Host: "facebook.com", Client: staff, Time: end}); d.Verdict != Block {
				t.Errorf("at the end: %v, want block", d)
			}
		})
	}
}

// BenchmarkDecideBreaks measures decisions with 1,000 breaks in progress
// (one per workstation) for a client on a break and one without.
func BenchmarkDecideBreaks(b *testing.B) {
	base := mustNew(b, testSpec(b))
	now := at(b, "2026-11-17 15:00:00")
	gs := make([]Grant, 1000)
	for i := range gs {
		gs[i] = Grant{ID: "credit:pause", Credit: "pause", Subject: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), 32),
			Services: []string{"facebook", "x"}, NotBefore: now, NotAfter: now.Add(30 * time.Minute)}
	}
	p := base.WithGrants(gs)
	for _, c := range []struct {
		name   string
		client netip.Addr
	}{{"on-break", netip.AddrFrom4([4]byte{10, 9, 3, 231})}, {"no-break", staff}} {
		b.Run(c.name, func(b *testing.B) {
			q := Query{Host: "www.facebook.com", Client: c.client, Time: now.Add(time.Minute)}
			b.ReportAllocs()
			for b.Loop() {
				p.Decide(q)
			}
		})
	}
}
