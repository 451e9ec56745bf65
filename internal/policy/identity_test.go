package policy

import (
	"net/netip"
	"testing"
	"time"
)

func TestNameMatches(t *testing.T) {
	const dn = "CN=Communications,OU=Groups,DC=chus,DC=local"
	for _, tc := range []struct {
		conf, name string
		want       bool
	}{
		{"communications", "Communications", true},
		{"communications", "communication", false},
		{"Équipe", "équipe", true},
		{"communications", dn, true},
		{"communications", "cn = communications , ou=Groups,dc=chus,dc=local", true},
		{"communications", "CN=Communications-RH,OU=Groups,DC=chus,DC=local", false},
		{"groups", dn, false}, // only the first RDN names the entry
		{"alice", "uid=alice,ou=people,dc=example", true},
		{"Smith, John", `CN=Smith\, John,OU=Users,DC=chus,DC=local`, true},
		{"Smith, John", `CN=Smith\2C John,OU=Users,DC=chus,DC=local`, true},
		{"Smith", `CN=Smith\, John,OU=Users,DC=chus,DC=local`, false},
		{"trailing", `CN=trailing  ,DC=x`, true},
		{"space ", `CN=space\ ,DC=x`, true},
		{dn, dn, true},
		{dn, "cn=communications,ou=groups,dc=chus,dc=local", true},
		{dn, "CN=Communications, OU=Groups, DC=chus, DC=local", true},
		{dn, " CN = Communications ; OU=Groups;DC=chus,DC=local ", true},
		{dn, "CN=Communications,OU=Other,DC=chus,DC=local", false},
		{dn, "CN=Communications,OU=Groups,DC=chus", false},
		{dn, "CN=Com munications,OU=Groups,DC=chus,DC=local", false},
		{dn, "Communications", false}, // a configured DN is exact
		{"CN=a b,DC=x", "cn=a  b,dc=x", false},
		{"", "", true},
		{"x", "", false},
	} {
		if got := nameMatches(tc.conf, isDN(tc.conf), tc.name); got != tc.want {
			t.Errorf("nameMatches(%q, %q) = %v, want %v", tc.conf, tc.name, got, tc.want)
		}
	}
}

// Decide matches directory groups and users written as names or DNs,
// whichever form the directory answers with.
func TestDecideDirectoryNames(t *testing.T) {
	spec := testSpec(t)
	spec.Groups = append(spec.Groups,
		Group{Name: "comms-dn", DirectoryGroups: []string{"CN=Communications,OU=Groups,DC=chus,DC=local"}},
		Group{Name: "comms-cn", DirectoryGroups: []string{"communications"}},
		Group{Name: "editors", Users: []string{"CN=Alice Tremblay,OU=Users,DC=chus,DC=local", "bob"}},
	)
	spec.Rules = []Rule{
		{Name: "dn", Groups: []string{"comms-dn"}, Services: []string{"facebook"}, Action: Allow},
		{Name: "cn", Groups: []string{"comms-cn"}, Services: []string{"x"}, Action: Allow},
		{Name: "editors", Groups: []string{"editors"}, Services: []string{"vimeo"}, Action: Allow},
	}
	p := mustNew(t, spec)
	now := at(t, "2026-11-17 14:00:00")
	for _, tc := range []struct {
		host   string
		user   string
		groups []string
		rule   string
	}{
		{"facebook.com", "", []string{"CN=Communications,OU=Groups,DC=chus,DC=local"}, "dn"},
		{"facebook.com", "", []string{"cn=communications, ou=groups, dc=chus, dc=local"}, "dn"},
		{"facebook.com", "", []string{"Communications"}, ""},
		{"facebook.com", "", []string{"CN=Communications,OU=Old,DC=chus,DC=local"}, ""},
		{"x.com", "", []string{"CN=Communications,OU=Groups,DC=chus,DC=local"}, "cn"},
		{"x.com", "", []string{"COMMUNICATIONS"}, "cn"},
		{"x.com", "", []string{"CN=Communications-RH,OU=Groups,DC=chus,DC=local"}, ""},
		{"vimeo.com", "cn=alice tremblay,ou=users,dc=chus,dc=local", nil, "editors"},
		{"vimeo.com", "alice", nil, ""},
		{"vimeo.com", "BOB", nil, "editors"},
		{"vimeo.com", "CN=Bob,OU=Users,DC=chus,DC=local", nil, "editors"},
	} {
		q := Query{Host: tc.host, Client: outsider, User: tc.user, Groups: tc.groups, Time: now}
		d := p.Decide(q)
		if d.Rule != tc.rule {
			t.Errorf("Decide(%+v) = %v, want rule %q", q, d, tc.rule)
		}
	}
	q := Query{Host: "x.com", Client: outsider, Groups: []string{"CN=Communications,OU=Groups,DC=chus,DC=local"}, User: "cn=bob,dc=x", Time: now}
	if n := testing.AllocsPerRun(100, func() { p.Decide(q) }); n != 0 {
		t.Errorf("Decide with DNs allocates %v times", n)
	}
}

func TestIdentityMatters(t *testing.T) {
	spec := testSpec(t)
	spec.Services = append(spec.Services, Service{ID: "dohsvc", Category: "doh", Domains: []string{"dns.example"}})
	spec.Rules = []Rule{
		// wikipedia: everyone, always, first: who asks never matters.
		{Name: "wikis", Groups: []string{"*"}, Categories: []string{"wikis"}, Action: Allow},
		// facebook: a network group, then a group with users.
		{Name: "communications", Groups: []string{"communications"}, Services: []string{"facebook"}, Action: Allow},
		{Name: "autorises", Groups: []string{"autorises"}, Services: []string{"facebook", "wikipedia"}, Action: Allow},
		// x: everyone during breaks (not always) before the users' rule.
		{Name: "pauses", Groups: []string{"*"}, Services: []string{"x"}, During: []string{"pauses"}, Action: Allow},
		{Name: "x-users", Groups: []string{"autorises"}, Services: []string{"x"}, During: []string{"nuit"}, Action: Allow},
		// vimeo and youtube: network groups only.
		{Name: "staff", Groups: []string{"personnel"}, Categories: []string{"media-sharing"}, Action: Allow},
	}
	p := mustNew(t, spec)
	now := at(t, "2026-11-17 14:00:00")
	check := func(p *Policy, name, host string, tm time.Time, want bool) {
		t.Helper()
		if got := p.IdentityMatters(host, tm); got != want {
			t.Errorf("%s: IdentityMatters(%q, %v) = %v, want %v", name, host, tm, got, want)
		}
		// The front-ends' form, from the decision just taken, agrees.
		if got := p.IdentityMattersFor(p.Decide(Query{Host: host, Time: tm}), tm); got != want {
			t.Errorf("%s: IdentityMattersFor(Decide(%q)) = %v, want %v", name, host, got, want)
		}
	}
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"www.facebook.com", true},
		{"FACEBOOK.com.", true},
		{"x.com", true},
		{"wikipedia.org", false},
		{"vimeo.com", false},
		{"youtube.com", false},
		{"example.org", false},             // unlisted
		{"player.vimeo.com", false},        // allow list
		{"platform.linkedin.com", false},   // catalog exception
		{"use-application-dns.net", false}, // canary
		{"10.20.30.5", false},
		{"[2001:db8::1]", false},
		{"bad..name", false},
		{"dns.example", false},
		{"linkedin.com", false},
	} {
		check(p, "rules", tc.host, now, tc.want)
	}

	// Grants to users make who asks matter until they end; grants to
	// clients do not; a grant for "*" does not reach the bypass category.
	g := p.WithGrants([]Grant{
		{ID: "u1", User: "carol", Services: []string{"vimeo"}, NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)},
		{ID: "c1", Subject: pfx("10.1.2.3/32"), Services: []string{"youtube"}, NotAfter: now.Add(time.Hour)},
		{ID: "u2", User: "dave", Services: []string{"*"}, NotAfter: now.Add(30 * time.Minute)},
	})
	check(g, "user grant", "vimeo.com", now, true)
	check(g, "user grant, later", "vimeo.com", now.Add(90*time.Minute), true)
	check(g, "user grant ended", "vimeo.com", now.Add(2*time.Hour), false)
	check(g, "user grant for *", "youtube.com", now, true)
	check(g, "user grant for * ended", "youtube.com", now.Add(30*time.Minute), false)
	check(g, "user grant for *, bypass", "dns.example", now, false)
	check(g, "user grant, unlisted", "example.org", now, false)
	check(p.WithGrants([]Grant{{ID: "c", Subject: pfx("10.0.0.0/8"), Services: []string{"*"}, NotAfter: now.Add(time.Hour)}}),
		"client grant", "youtube.com", now, false)
	check(p.WithGrants([]Grant{{ID: "d", User: "erin", Services: []string{"dohsvc"}, NotAfter: now.Add(time.Hour)}}),
		"user grant naming the bypass service", "dns.example", now, true)

	// No group with users or directory groups: never.
	plain := testSpec(t)
	plain.Groups[1] = Group{Name: "autorises", Networks: []netip.Prefix{pfx("10.99.0.0/16")}}
	check(mustNew(t, plain), "no identity group", "x.com", now, false)

	// IdentityMatters is false wherever Decide does not reach grants
	// and rules.
	for _, h := range []string{"player.vimeo.com", "platform.linkedin.com", "use-application-dns.net", "mask.icloud.com", "example.org", "10.0.0.1"} {
		d := g.Decide(Query{Host: h, Time: now})
		if g.IdentityMatters(h, now) && d.Reason != ReasonRule && d.Reason != ReasonDefault && d.Reason != ReasonGrant {
			t.Errorf("IdentityMatters(%q) true for a %v decision", h, d.Reason)
		}
		if g.IdentityMattersFor(d, now) != g.IdentityMatters(h, now) {
			t.Errorf("IdentityMattersFor(Decide(%q)) disagrees with IdentityMatters", h)
		}
	}
	if n := testing.AllocsPerRun(100, func() { g.IdentityMatters("www.facebook.com", now) }); n != 0 {
		t.Errorf("IdentityMatters allocates %v times", n)
	}
	fb := g.Decide(Query{Host: "www.facebook.com", Time: now})
	if n := testing.AllocsPerRun(100, func() { g.IdentityMattersFor(fb, now) }); n != 0 {
		t.Errorf("IdentityMattersFor allocates %v times", n)
	}
}
