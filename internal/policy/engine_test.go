package policy

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func mustLoc(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("LoadLocation(%q): %v", name, err)
	}
	return loc
}

func mustWindows(t testing.TB, ws ...string) []Window {
	t.Helper()
	var out []Window
	for _, s := range ws {
		w, err := ParseWindow(s)
		if err != nil {
			t.Fatalf("ParseWindow(%q): %v", s, err)
		}
		out = append(out, w)
	}
	return out
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// testSpec is a policy shaped like the institutions' ones.
func testSpec(t testing.TB) Spec {
	t.Helper()
	return Spec{
		Location:      mustLoc(t, "America/Toronto"),
		DefaultAction: Block,
		Services: []Service{
			{ID: "facebook", Name: "Facebook", Category: "networking", Domains: []string{"facebook.com", "fb.com", "FBCDN.com."}},
			{ID: "linkedin", Name: "LinkedIn", Category: "networking", Domains: []string{"linkedin.com"}, Exceptions: []string{"platform.linkedin.com"}},
			{ID: "x", Name: "X", Category: "microblogging", Domains: []string{"x.com", "twitter.com"}},
			{ID: "vimeo", Name: "Vimeo", Category: "media-sharing", Domains: []string{"vimeo.com"}},
			{ID: "youtube", Category: "media-sharing", Domains: []string{"youtube.com"}, CNAMETargets: []string{"youtube-ui.l.google.com"}},
			{ID: "buecher", Name: "Bücher", Category: "forums", Domains: []string{"bücher.example"}},
			{ID: "wikipedia", Category: "wikis", Domains: []string{"wikipedia.org"}},
		},
		Categories: []string{"networking", "media-sharing", "microblogging", "forums", "wikis", "doh"},
		AllowHosts: []string{"player.vimeo.com", "intranet.cisss.example"},
		Canaries:   []string{"use-application-dns.net", "mask.icloud.com", "mask-h2.icloud.com"},
		Groups: []Group{
			{Name: "communications", Networks: []netip.Prefix{pfx("10.20.30.0/24"), pfx("2001:db8:20::/48")}},
			{Name: "autorises", Users: []string{"alice"}, DirectoryGroups: []string{"SocialMediaEditors"}},
			{Name: "personnel", Networks: []netip.Prefix{pfx("10.0.0.0/8"), pfx("2001:db8::/32")}},
			{Name: "nuit", Networks: []netip.Prefix{pfx("10.50.0.0/16")}},
		},
		Schedules: []Schedule{
			{Name: "pauses", Windows: mustWindows(t, "mon-fri 10:00-10:15", "mon-fri 12:00-13:00")},
			{Name: "nuit", Windows: mustWindows(t, "daily 23:30-00:15")},
		},
		Rules: []Rule{
			{Name: "communications", Groups: []string{"communications"}, Services: []string{"*"}, Action: Allow},
			{Name: "autorises", Groups: []string{"autorises"}, Action: Allow},
			{Name: "wikis", Groups: []string{"*"}, Categories: []string{"wikis"}, Action: Allow},
			{Name: "nuit", Groups: []string{"nuit"}, Categories: []string{"networking"}, During: []string{"nuit"}, Action: Allow},
			{Name: "pauses", Groups: []string{"personnel"}, Categories: []string{"networking", "media-sharing", "microblogging"}, During: []string{"pauses"}, Action: Allow},
		},
	}
}

func mustNew(t testing.TB, spec Spec) *Policy {
	t.Helper()
	p, err := New(spec)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

// at returns the instant of a wall-clock time in Toronto (unambiguous
// times only).
func at(t testing.TB, s string) time.Time {
	t.Helper()
	v, err := time.ParseInLocation("2006-01-02 15:04:05", s, mustLoc(t, "America/Toronto"))
	if err != nil {
		t.Fatalf("bad time %q: %v", s, err)
	}
	return v
}

func utc(t testing.TB, s string) time.Time {
	t.Helper()
	v, err := time.Parse("2006-01-02 15:04:05", s)
	if err != nil {
		t.Fatalf("bad time %q: %v", s, err)
	}
	return v
}

// same compares the fields a decision test cares about.
func same(a, b Decision) bool {
	return a.Verdict == b.Verdict && a.Reason == b.Reason && a.Service == b.Service &&
		a.Category == b.Category && a.Rule == b.Rule && a.Grant == b.Grant &&
		a.Until.Equal(b.Until) && a.Invalid == b.Invalid && a.IP == b.IP
}

type decideCase struct {
	name string
	q    Query
	want Decision
}

func runDecide(t *testing.T, p *Policy, cases []decideCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := p.Decide(tc.q)
			if !same(got, tc.want) {
				t.Errorf("Decide(%+v) = %v, want %v", tc.q, got, tc.want)
			}
			if !got.Until.IsZero() && !got.Until.After(tc.q.Time) {
				t.Errorf("Decide(%+v).Until = %v, not after the query time", tc.q, got.Until)
			}
		})
	}
}

var (
	staff    = netip.MustParseAddr("10.1.2.3")
	comms    = netip.MustParseAddr("10.20.30.5")
	night    = netip.MustParseAddr("10.50.1.1")
	outsider = netip.MustParseAddr("192.0.2.7")
)

func blocked(svc, cat string, until time.Time) Decision {
	return Decision{Verdict: Block, Reason: ReasonDefault, Service: svc, Category: cat, Until: until}
}

func ruled(v Verdict, rule, svc, cat string, until time.Time) Decision {
	return Decision{Verdict: v, Reason: ReasonRule, Rule: rule, Service: svc, Category: cat, Until: until}
}

func TestDecideClassification(t *testing.T) {
	p := mustNew(t, testSpec(t))
	tue14 := at(t, "2026-11-17 14:00:00") // a Tuesday
	wed10 := at(t, "2026-11-18 10:00:00")
	q := func(host string) Query { return Query{Host: host, Client: staff, Time: tue14} }
	runDecide(t, p, []decideCase{
		{"mixed case and trailing dot", q("WWW.FaceBook.COM."), blocked("facebook", "networking", wed10)},
		{"domain itself", q("facebook.com"), blocked("facebook", "networking", wed10)},
		{"deep subdomain", q("a.b.c.d.static.fb.com"), blocked("facebook", "networking", wed10)},
		{"listed with trailing dot and case in spec", q("x.fbcdn.com"), blocked("facebook", "networking", wed10)},
		{"not a label boundary", q("notfacebook.com"), Decision{}},
		{"parent of a listed domain", q("com"), Decision{}},
		{"x.com", q("x.com"), blocked("x", "microblogging", wed10)},
		{"x.com subdomain", q("api.x.com"), blocked("x", "microblogging", wed10)},
		{"webex.com is not x.com", q("webex.com"), Decision{}},
		{"IDN in Unicode", q("WWW.BÜCHER.example"), blocked("buecher", "forums", tue14.Add(24*time.Hour))},
		{"IDN in punycode", q("xn--bcher-kva.example"), blocked("buecher", "forums", tue14.Add(24*time.Hour))},
		{"IDN fullwidth dot", q("bücher。example"), blocked("buecher", "forums", tue14.Add(24*time.Hour))},
		{"IPv4 literal", q("10.0.0.1"), Decision{IP: true}},
		{"IPv6 literal", q("2001:db8::1"), Decision{IP: true}},
		{"bracketed IPv6 literal", q("[2001:db8::1]"), Decision{IP: true}},
		{"invalid empty label", q("www..facebook.com"), Decision{Invalid: true}},
		{"invalid empty", q(""), Decision{Invalid: true}},
		{"invalid char", q("face book.com"), Decision{Invalid: true}},
		{"invalid numeric tld", q("1.2.3.999"), Decision{Invalid: true}},
		{"canary", q("use-application-dns.net"), Decision{Verdict: Block, Reason: ReasonCanary}},
		{"canary icloud", q("MASK.icloud.com."), Decision{Verdict: Block, Reason: ReasonCanary}},
		{"canary for communications too", Query{Host: "mask-h2.icloud.com", Client: comms, Time: tue14}, Decision{Verdict: Block, Reason: ReasonCanary}},
		{"icloud is not a canary", q("www.icloud.com"), Decision{}},
		{"exception", q("platform.linkedin.com"), Decision{Reason: ReasonAllowList, Service: "linkedin", Category: "networking"}},
		{"exception subdomain", q("cdn.platform.linkedin.com"), Decision{Reason: ReasonAllowList, Service: "linkedin", Category: "networking"}},
		{"exception parent stays listed", q("www.linkedin.com"), blocked("linkedin", "networking", wed10)},
		{"allow list under a listed domain", q("player.vimeo.com"), Decision{Reason: ReasonAllowList, Service: "vimeo", Category: "media-sharing"}},
		{"allow list subdomain", q("f.player.vimeo.com"), Decision{Reason: ReasonAllowList, Service: "vimeo", Category: "media-sharing"}},
		{"allow list unlisted host", q("intranet.cisss.example"), Decision{Reason: ReasonAllowList}},
		{"allow list sibling stays listed", q("vimeo.com"), blocked("vimeo", "media-sharing", wed10)},
		{"cname target without flag", q("youtube-ui.l.google.com"), Decision{}},
		{"cname target with flag", Query{Host: "youtube-ui.l.google.com", Client: staff, Time: tue14, CNAMETarget: true}, blocked("youtube", "media-sharing", wed10)},
		{"wikis allowed for everyone", q("fr.wikipedia.org"), ruled(Allow, "wikis", "wikipedia", "wikis", tue14.Add(24*time.Hour))},
	})
}

func TestDecideRules(t *testing.T) {
	p := mustNew(t, testSpec(t))
	tue := func(hms string) time.Time { return at(t, "2026-11-17 "+hms) }
	wed := func(hms string) time.Time { return at(t, "2026-11-18 "+hms) }
	sat := func(hms string) time.Time { return at(t, "2026-11-21 "+hms) }
	sun := func(hms string) time.Time { return at(t, "2026-11-22 "+hms) }
	mapped := netip.MustParseAddr("::ffff:10.20.30.5")
	runDecide(t, p, []decideCase{
		{"communications subnet", Query{Host: "facebook.com", Client: comms, Time: tue("14:00:00")},
			ruled(Allow, "communications", "facebook", "networking", tue("14:00:00").Add(24*time.Hour))},
		{"communications v6", Query{Host: "facebook.com", Client: netip.MustParseAddr("2001:db8:20::9"), Time: tue("14:00:00")},
			ruled(Allow, "communications", "facebook", "networking", tue("14:00:00").Add(24*time.Hour))},
		{"v4-mapped v6 client", Query{Host: "facebook.com", Client: mapped, Time: tue("14:00:00")},
			ruled(Allow, "communications", "facebook", "networking", tue("14:00:00").Add(24*time.Hour))},
		{"later windows do not bound an earlier always rule", Query{Host: "facebook.com", Client: comms, Time: tue("11:59:00")},
			ruled(Allow, "communications", "facebook", "networking", tue("11:59:00").Add(24*time.Hour))},
		{"staff outside break", Query{Host: "facebook.com", Client: staff, Time: tue("11:00:00")},
			blocked("facebook", "networking", tue("12:00:00"))},
		{"staff at break start", Query{Host: "facebook.com", Client: staff, Time: tue("12:00:00")},
			ruled(Allow, "pauses", "facebook", "networking", tue("13:00:00"))},
		{"staff inside break", Query{Host: "facebook.com", Client: staff, Time: tue("12:30:00")},
			ruled(Allow, "pauses", "facebook", "networking", tue("13:00:00"))},
		{"staff at break end", Query{Host: "facebook.com", Client: staff, Time: tue("13:00:00")},
			blocked("facebook", "networking", wed("10:00:00"))},
		{"staff sub-second before break end", Query{Host: "facebook.com", Client: staff, Time: tue("12:59:59").Add(999 * time.Millisecond)},
			ruled(Allow, "pauses", "facebook", "networking", tue("13:00:00"))},
		{"staff friday evening, no window within 24h", Query{Host: "facebook.com", Client: staff, Time: at(t, "2026-11-20 14:00:00")},
			blocked("facebook", "networking", sat("14:00:00"))},
		{"category not in the break rule", Query{Host: "bücher.example", Client: staff, Time: tue("12:30:00")},
			blocked("buecher", "forums", tue("12:30:00").Add(24*time.Hour))},
		{"outsider at break", Query{Host: "facebook.com", Client: outsider, Time: tue("12:30:00")},
			blocked("facebook", "networking", tue("12:30:00").Add(24*time.Hour))},
		{"no client address", Query{Host: "facebook.com", Time: tue("12:30:00")},
			blocked("facebook", "networking", tue("12:30:00").Add(24*time.Hour))},
		{"user in group", Query{Host: "x.com", Client: outsider, User: "ALICE", Time: tue("14:00:00")},
			ruled(Allow, "autorises", "x", "microblogging", tue("14:00:00").Add(24*time.Hour))},
		{"directory group", Query{Host: "x.com", Client: outsider, Groups: []string{"staff", "socialmediaeditors"}, Time: tue("14:00:00")},
			ruled(Allow, "autorises", "x", "microblogging", tue("14:00:00").Add(24*time.Hour))},
		{"other user", Query{Host: "x.com", Client: outsider, User: "bob", Time: tue("14:00:00")},
			blocked("x", "microblogging", tue("14:00:00").Add(24*time.Hour))},
		// Night staff are in "nuit" and "personnel": both rules apply.
		{"multiple groups: break rule", Query{Host: "facebook.com", Client: night, Time: tue("12:30:00")},
			ruled(Allow, "pauses", "facebook", "networking", tue("13:00:00"))},
		{"earlier rule's window bounds the default", Query{Host: "facebook.com", Client: night, Time: tue("23:00:00")},
			blocked("facebook", "networking", tue("23:30:00"))},
		{"window crossing midnight, before midnight", Query{Host: "facebook.com", Client: night, Time: tue("23:45:00")},
			ruled(Allow, "nuit", "facebook", "networking", wed("00:15:00"))},
		{"window crossing midnight, after midnight", Query{Host: "facebook.com", Client: night, Time: wed("00:10:00")},
			ruled(Allow, "nuit", "facebook", "networking", wed("00:15:00"))},
		{"window crossing midnight, after its end", Query{Host: "facebook.com", Client: night, Time: wed("00:15:00")},
			blocked("facebook", "networking", wed("10:00:00"))},
		{"window crossing the week's end", Query{Host: "facebook.com", Client: night, Time: sat("23:40:00")},
			ruled(Allow, "nuit", "facebook", "networking", sun("00:15:00"))},
		{"window crossing the week's end, sunday", Query{Host: "facebook.com", Client: night, Time: sun("00:00:00")},
			ruled(Allow, "nuit", "facebook", "networking", sun("00:15:00"))},
		{"night rule is for networking only", Query{Host: "x.com", Client: night, Time: tue("23:45:00")},
			blocked("x", "microblogging", wed("10:00:00"))},
	})
}

func TestDefaultActionAllow(t *testing.T) {
	spec := testSpec(t)
	spec.DefaultAction = Allow
	spec.Rules = append(spec.Rules, Rule{Name: "no-x", Services: []string{"x"}, Action: Block})
	p := mustNew(t, spec)
	now := at(t, "2026-11-17 14:00:00")
	runDecide(t, p, []decideCase{
		{"default allow", Query{Host: "facebook.com", Client: outsider, Time: now},
			Decision{Verdict: Allow, Reason: ReasonDefault, Service: "facebook", Category: "networking", Until: now.Add(24 * time.Hour)}},
		{"block rule", Query{Host: "x.com", Client: outsider, Time: now},
			ruled(Block, "no-x", "x", "microblogging", now.Add(24*time.Hour))},
		{"unlisted", Query{Host: "example.org", Client: outsider, Time: now}, Decision{}},
	})
}

func TestMaxUntil(t *testing.T) {
	spec := testSpec(t)
	spec.MaxUntil = 30 * time.Minute
	p := mustNew(t, spec)
	now := at(t, "2026-11-17 11:00:00")
	runDecide(t, p, []decideCase{
		{"capped", Query{Host: "facebook.com", Client: staff, Time: now}, blocked("facebook", "networking", now.Add(30*time.Minute))},
		{"edge before the cap", Query{Host: "facebook.com", Client: staff, Time: at(t, "2026-11-17 11:45:00")},
			blocked("facebook", "networking", at(t, "2026-11-17 12:00:00"))},
	})
}

func TestNewErrors(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"unknown group", func(s *Spec) { s.Rules[1].Groups = []string{"nobody"} }, `rule "autorises": unknown group "nobody"`},
		{"unknown schedule", func(s *Spec) { s.Rules[4].During = []string{"pause"} }, `rule "pauses": unknown schedule "pause"`},
		{"unknown service", func(s *Spec) { s.Rules[0].Services = []string{"myspace"} }, `rule "communications": unknown service "myspace"`},
		{"unknown category", func(s *Spec) { s.Rules[2].Categories = []string{"blogs"} }, `rule "wikis": unknown category "blogs"`},
		{"unnamed rule", func(s *Spec) { s.Rules = append(s.Rules, Rule{Groups: []string{"x"}}) }, `rule "#6": unknown group "x"`},
		{"invalid domain", func(s *Spec) { s.Services[0].Domains = append(s.Services[0].Domains, "bad..name") }, `service "facebook": invalid host "bad..name"`},
		{"IP as domain", func(s *Spec) { s.Services[0].Domains = append(s.Services[0].Domains, "10.0.0.1") }, `is an IP address`},
		{"duplicate service", func(s *Spec) { s.Services = append(s.Services, Service{ID: "x", Category: "networking"}) }, `service "x": defined twice`},
		{"duplicate group", func(s *Spec) { s.Groups = append(s.Groups, Group{Name: "nuit"}) }, `group "nuit": defined twice`},
		{"duplicate schedule", func(s *Spec) { s.Schedules = append(s.Schedules, Schedule{Name: "nuit"}) }, `schedule "nuit": defined twice`},
		{"bad window", func(s *Spec) { s.Schedules[0].Windows[0].End = 25 * time.Hour }, `schedule "pauses": window times out of range`},
		{"window without days", func(s *Spec) { s.Schedules[0].Windows[0].Days = 0 }, `has no day`},
		{"too many groups", func(s *Spec) {
			for i := 0; i < 61; i++ {
				s.Groups = append(s.Groups, Group{Name: "g" + string(rune('A'+i))})
			}
		}, "at most 64"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := testSpec(t)
			tc.edit(&spec)
			_, err := New(spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New() error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestAccessors(t *testing.T) {
	p := mustNew(t, testSpec(t))
	if got, want := p.DomainCount(), 11; got != want {
		t.Errorf("DomainCount() = %d, want %d", got, want)
	}
	ids := strings.Join(p.ServiceIDs(), ",")
	if want := "buecher,facebook,linkedin,vimeo,wikipedia,x,youtube"; ids != want {
		t.Errorf("ServiceIDs() = %s, want %s", ids, want)
	}
	s, ok := p.LookupService("youtube")
	if !ok || s.Name != "youtube" || s.Category != "media-sharing" || len(s.CNAMETargets) != 1 {
		t.Errorf("LookupService(youtube) = %+v, %v", s, ok)
	}
	if _, ok := p.LookupService("myspace"); ok {
		t.Errorf("LookupService(myspace) found a service")
	}
	if got := p.ServiceDomainCount("facebook"); got != 3 {
		t.Errorf("ServiceDomainCount(facebook) = %d, want 3", got)
	}
	if p.Location().String() != "America/Toronto" {
		t.Errorf("Location() = %v", p.Location())
	}
	g := strings.Join(p.GroupsOf(Query{Client: night, User: "alice"}), ",")
	if want := "autorises,personnel,nuit"; g != want {
		t.Errorf("GroupsOf() = %s, want %s", g, want)
	}
	p2 := mustNew(t, Spec{})
	if p2.Location() != time.UTC || p2.DomainCount() != 0 {
		t.Errorf("empty spec: Location() = %v, DomainCount() = %d", p2.Location(), p2.DomainCount())
	}
	if d := p2.Decide(Query{Host: "facebook.com"}); !same(d, Decision{}) {
		t.Errorf("empty policy: Decide = %v, want unlisted", d)
	}
}
