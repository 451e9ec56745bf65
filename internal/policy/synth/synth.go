package synth

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

var syllables = []string{
	"ba", "be", "bi", "bo", "ca", "ce", "co", "da", "de", "di", "do", "fa", "fe", "fi", "ga", "go",
	"ka", "ke", "ki", "la", "le", "li", "lo", "lu", "ma", "me", "mi", "mo", "na", "ne", "ni", "no",
	"pa", "pe", "pi", "po", "ra", "re", "ri", "ro", "sa", "se", "si", "so", "ta", "te", "ti", "to",
	"va", "ve", "vi", "za", "zo", "tra", "pla", "chi", "sto", "gram", "book", "tube", "chat", "net",
	"soft", "web", "cloud", "shop", "news", "play", "star", "link", "data", "app", "hub", "box",
}

var tlds = []string{
	"com", "com", "com", "com", "com", "com", "net", "net", "org", "org", "io", "ca", "fr", "de",
	"co", "info", "xyz", "ru", "uk", "online", "site", "app", "co.uk", "com.br",
}

var prefixes = []string{"www", "cdn", "m", "api", "static", "img", "ads", "t", "mail", "login"}

// word returns a pseudo-word of 3 to 5 syllables.
func word(r *rand.Rand) string {
	n := 3 + r.IntN(3)
	w := ""
	for i := 0; i < n; i++ {
		w += syllables[r.IntN(len(syllables))]
	}
	return w
}

// Domains returns n distinct synthetic domain names averaging about 18
// characters: pseudo-words, sometimes hyphenated or numbered, under
// common TLDs, a fifth of them with a host prefix.
func Domains(n int, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	seen := make(map[string]struct{}, n)
	out := make([]string, 0, n)
	for len(out) < n {
		name := word(r)
		switch r.IntN(10) {
		case 0, 1, 2:
			name += "-" + word(r)
		case 3:
			name += fmt.Sprint(r.IntN(100))
		}
		name += "." + tlds[r.IntN(len(tlds))]
		if r.IntN(5) == 0 {
			name = prefixes[r.IntN(len(prefixes))] + "." + name
		}
		if _, dup := seen[name]; dup {
			continue
		}
		seen[name] = struct{}{}
		out = append(out, name)
	}
	return out
}

// UnlistedHosts returns n host names that Domains(·, seed) is unlikely to
// cover (another alphabet of TLDs), shaped like real browsing.
func UnlistedHosts(n int, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, 7))
	out := make([]string, n)
	for i := range out {
		out[i] = prefixes[r.IntN(len(prefixes))] + "." + word(r) + "." + word(r) + ".example"
	}
	return out
}

// Categories are the catalog's categories.
var Categories = []string{"networking", "media-sharing", "messaging", "microblogging", "forums", "wikis", "podcasts", "comments", "doh"}

// Spec returns a catalog-shaped policy: services real-sized (a dozen
// domains, some exceptions and CNAME targets each), plus one service per
// extra list holding the given domains, Toronto time, the groups and
// rules of a typical institution.
func Spec(nServices int, extra ...[]string) policy.Spec {
	r := rand.New(rand.NewPCG(42, 43))
	spec := policy.Spec{
		Location:      mustLoc("America/Toronto"),
		DefaultAction: policy.Block,
		Categories:    Categories,
		AllowHosts:    []string{"player.vimeo.com", "intranet.cisss.example"},
		Canaries:      []string{"use-application-dns.net", "mask.icloud.com", "mask-h2.icloud.com"},
	}
	for i := 0; i < nServices; i++ {
		s := policy.Service{
			ID:       fmt.Sprintf("svc%03d", i),
			Name:     fmt.Sprintf("Service %d", i),
			Category: Categories[i%len(Categories)],
		}
		base := word(r)
		for j := 0; j < 12; j++ {
			s.Domains = append(s.Domains, base+fmt.Sprint(j)+"."+tlds[j%len(tlds)])
		}
		s.Exceptions = []string{"platform." + s.Domains[0]}
		s.CNAMETargets = []string{base + ".edge.cdn-provider.net"}
		spec.Services = append(spec.Services, s)
	}
	spec.Services = append(spec.Services,
		policy.Service{ID: "facebook", Name: "Facebook", Category: "networking", Domains: []string{"facebook.com", "fb.com", "facebook.net", "fbcdn.com"}},
		policy.Service{ID: "x", Name: "X", Category: "microblogging", Domains: []string{"x.com", "twitter.com", "t.co"}},
		policy.Service{ID: "vimeo", Name: "Vimeo", Category: "media-sharing", Domains: []string{"vimeo.com"}},
	)
	for i, list := range extra {
		spec.Services = append(spec.Services, policy.Service{
			ID:       fmt.Sprintf("list%d", i),
			Category: "networking",
			Domains:  list,
		})
	}
	spec.Groups = []policy.Group{
		{Name: "communications", Networks: []netip.Prefix{netip.MustParsePrefix("10.20.30.0/24")}},
		{Name: "autorises", Networks: []netip.Prefix{netip.MustParsePrefix("10.20.31.0/24")}, DirectoryGroups: []string{"SocialMedia"}},
		{Name: "personnel", Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}},
		{Name: "patients", Networks: []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}},
	}
	pauses, _ := policy.ParseWindow("mon-fri 12:00-13:00")
	matin, _ := policy.ParseWindow("mon-fri 10:00-10:15")
	nuit, _ := policy.ParseWindow("daily 23:30-00:15")
	spec.Schedules = []policy.Schedule{{Name: "pauses", Windows: []policy.Window{pauses, matin, nuit}}}
	spec.Rules = []policy.Rule{
		{Name: "patients", Groups: []string{"patients"}, Action: policy.Allow},
		{Name: "communications", Groups: []string{"communications", "autorises"}, Services: []string{"*"}, Action: policy.Allow},
		{Name: "wikis", Categories: []string{"wikis"}, Action: policy.Allow},
		{Name: "doh", Categories: []string{"doh"}, Action: policy.Block},
		{Name: "pauses", Groups: []string{"personnel"}, Categories: []string{"networking", "media-sharing", "microblogging"}, During: []string{"pauses"}, Action: policy.Allow},
	}
	return spec
}

func mustLoc(name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		return time.UTC
	}
	return loc
}
