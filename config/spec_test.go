package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

func serviceIDs(spec policy.Spec) []string {
	var ids []string
	for _, s := range spec.Services {
		ids = append(ids, s.ID)
	}
	return ids
}

func findService(spec policy.Spec, id string) (policy.Service, bool) {
	for _, s := range spec.Services {
		if s.ID == id {
			return s, true
		}
	}
	return policy.Service{}, false
}

func TestSpecCatalogOptions(t *testing.T) {
	base := mustParse(t, "", "")
	baseSpec, err := base.Spec()
	if err != nil {
		t.Fatal(err)
	}
	fb, _ := findService(baseSpec, "facebook")
	yt, _ := findService(baseSpec, "youtube")
	li, _ := findService(baseSpec, "linkedin")
	tests := []struct {
		name  string
		toml  string
		check func(t *testing.T, spec policy.Spec)
	}{
		{"defaults", "", func(t *testing.T, spec policy.Spec) {
			if slices.Contains(fb.Domains, "fbcdn.net") || slices.Contains(fb.Domains, "acebook.com") {
				t.Errorf("facebook lists shared or extra domains by default: %v", fb.Domains)
			}
			if slices.Contains(li.Domains, "linkedin.be") {
				t.Errorf("linkedin lists a copyleft-only domain by default")
			}
			if !slices.Contains(li.Exceptions, "platform.linkedin.com") {
				t.Errorf("linkedin exceptions = %v, want platform.linkedin.com", li.Exceptions)
			}
			if !slices.Contains(yt.Domains, "youtube") {
				t.Errorf("youtube does not list its TLD")
			}
			ids := serviceIDs(spec)
			if !slices.Contains(ids, "doh") || !slices.Contains(ids, "digg") || slices.Contains(ids, "podcast-hosting") {
				t.Errorf("services = %v, want doh and digg, and not podcast-hosting (optional)", ids)
			}
			want := []string{"use-application-dns.net", "mask.icloud.com", "mask-h2.icloud.com"}
			if !slices.Equal(spec.Canaries, want) {
				t.Errorf("Canaries = %v, want %v", spec.Canaries, want)
			}
		}},
		{"disable and categories_off", `[catalog]
disable = ["wikipedia", "x"]
categories_off = ["podcasts"]`, func(t *testing.T, spec policy.Spec) {
			ids := serviceIDs(spec)
			for _, id := range []string{"wikipedia", "twitter", "apple-podcasts", "pocketcasts"} {
				if slices.Contains(ids, id) {
					t.Errorf("service %s still listed", id)
				}
			}
			if !slices.Contains(ids, "facebook") {
				t.Errorf("facebook not listed")
			}
		}},
		{"extra, shared and copyleft opt-ins", `[catalog]
extra_domains = true
shared_infrastructure = ["facebook"]
copyleft_entries = true`, func(t *testing.T, spec policy.Spec) {
			f, _ := findService(spec, "facebook")
			y, _ := findService(spec, "youtube")
			if !slices.Contains(f.Domains, "fbcdn.net") || !slices.Contains(f.Domains, "acebook.com") {
				t.Errorf("facebook misses fbcdn.net or acebook.com")
			}
			if slices.Contains(y.Domains, "googlevideo.com") {
				t.Errorf("youtube lists googlevideo.com though only facebook's shared domains were asked for")
			}
			if _, ok := findService(spec, "digg"); !ok {
				t.Errorf("digg not listed with copyleft_entries")
			}
		}},
		{"optional services", `[catalog]
enable = ["podcast-hosting"]`, func(t *testing.T, spec policy.Spec) {
			if _, ok := findService(spec, "podcast-hosting"); !ok {
				t.Errorf("podcast-hosting not listed though enabled")
			}
		}},
		{"all shared infrastructure", `[catalog]
shared_infrastructure = ["*"]`, func(t *testing.T, spec policy.Spec) {
			y, _ := findService(spec, "youtube")
			if !slices.Contains(y.Domains, "googlevideo.com") {
				t.Errorf("youtube misses googlevideo.com")
			}
		}},
		{"no canaries", `block_canaries = false`, func(t *testing.T, spec policy.Spec) {
			if spec.Canaries != nil {
				t.Errorf("Canaries = %v, want none", spec.Canaries)
			}
		}},
		{"lists", `[[list]]
name = "local"
display_name = "Réseau local"
category = "networking"
domains = ["b.example", "a.example", "a.example"]
[[list]]
name = "ok"
allow = true
domains = ["player.vimeo.com"]`, func(t *testing.T, spec policy.Spec) {
			l, ok := findService(spec, "local")
			if !ok || l.Name != "Réseau local" || l.Category != "networking" || !slices.Equal(l.Domains, []string{"a.example", "b.example"}) {
				t.Errorf("list service = %+v", l)
			}
			if !slices.Equal(spec.AllowHosts, []string{"player.vimeo.com"}) {
				t.Errorf("AllowHosts = %v", spec.AllowHosts)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := mustParse(t, "", tt.toml).Spec()
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, spec)
		})
	}
}

func TestSpecReadsListFilesAndCache(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "l.txt"), []byte("0.0.0.0 file.example\n"), 0o644)
	cfgPath := filepath.Join(dir, "b.toml")
	c := mustParse(t, cfgPath, `[lists]
cache_dir = "cache"
[[list]]
name = "mix"
category = "forums"
domains = ["inline.example"]
files = ["l.txt"]
urls = ["https://lists.example/l.txt"]`)
	os.MkdirAll(filepath.Join(dir, "cache"), 0o755)
	os.WriteFile(cachePath(filepath.Join(dir, "cache"), "mix", "https://lists.example/l.txt"), []byte("||cached.example^\n"), 0o644)
	spec, err := c.Spec()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := findService(spec, "mix")
	want := []string{"cached.example", "file.example", "inline.example"}
	if !slices.Equal(s.Domains, want) {
		t.Errorf("mix domains = %v, want %v", s.Domains, want)
	}
}

func TestDefault(t *testing.T) {
	c := Default()
	if c.Path != "" || c.Exceptions != nil {
		t.Errorf("Default: Path %q, Exceptions %v; want \"\" and nil", c.Path, c.Exceptions)
	}
	var addrs []string
	addrs = append(addrs, c.Proxy.Listen...)
	addrs = append(addrs, c.DNS.Listen...)
	addrs = append(addrs, c.Metrics.Listen...)
	addrs = append(addrs, c.Proxy.TransparentHTTP...)
	addrs = append(addrs, c.Proxy.TransparentHTTPS...)
	if len(addrs) != 3 {
		t.Errorf("Default listens on %v, want 3 addresses", addrs)
	}
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil || !ap.Addr().IsLoopback() {
			t.Errorf("Default listens on %q, want a loopback address", a)
		}
	}
	for _, want := range []string{"127.0.0.1:3128", "127.0.0.1:5353", "127.0.0.1:9464"} {
		if !slices.Contains(addrs, want) {
			t.Errorf("Default does not listen on %s", want)
		}
	}
	if len(c.Schedules) == 0 {
		t.Errorf("Default has no break window")
	}
	if !strings.Contains(string(DefaultTOML()), "#") {
		t.Errorf("DefaultTOML has no comments")
	}
}

// TestDefaultDecides compiles the default and checks what it decides:
// every category blocked except wikis, open during breaks.
func TestDefaultDecides(t *testing.T) {
	p, err := Default().Compile()
	if err != nil {
		t.Fatalf("Default().Compile() = %v", err)
	}
	loc, _ := time.LoadLocation("America/Toronto")
	tue := func(h, m int) time.Time { return time.Date(2026, 11, 24, h, m, 0, 0, loc) }
	client := netip.MustParseAddr("127.0.0.1")
	tests := []struct {
		host   string
		at     time.Time
		want   policy.Verdict
		reason policy.Reason
	}{
		{"www.facebook.com", tue(14, 0), policy.Block, policy.ReasonDefault},
		{"www.facebook.com", tue(12, 30), policy.Allow, policy.ReasonRule},
		{"fr.wikipedia.org", tue(14, 0), policy.Allow, policy.ReasonRule},
		{"dns.google", tue(14, 0), policy.Block, policy.ReasonDefault},
		{"use-application-dns.net", tue(12, 30), policy.Block, policy.ReasonCanary},
		{"www.santemontreal.qc.ca", tue(14, 0), policy.Allow, policy.ReasonUnlisted},
		{"platform.linkedin.com", tue(14, 0), policy.Allow, policy.ReasonAllowList},
	}
	for _, tt := range tests {
		d := p.Decide(policy.Query{Host: tt.host, Client: client, Time: tt.at})
		if d.Verdict != tt.want || d.Reason != tt.reason {
			t.Errorf("Decide(%s at %s) = %v/%v, want %v/%v", tt.host, tt.at.Format("Mon 15:04"), d.Verdict, d.Reason, tt.want, tt.reason)
		}
	}
	// Every listed category but wikis is blocked outside breaks.
	for _, s := range Catalog().Services {
		sv, ok := p.LookupService(s.ID)
		if !ok || len(sv.Domains) == 0 {
			continue
		}
		d := p.Decide(policy.Query{Host: sv.Domains[0], Client: client, Time: tue(14, 0)})
		want := policy.Block
		if s.Category == "wikis" {
			want = policy.Allow
		}
		if d.Verdict != want {
			t.Errorf("Decide(%s of %s, %s) = %v, want %v", sv.Domains[0], s.ID, s.Category, d.Verdict, want)
		}
	}
}

func TestCompileExamplesOfEveryKind(t *testing.T) {
	c := mustParse(t, "", `[[group]]
name = "communications"
networks = ["10.20.30.0/24"]
[[schedule]]
name = "nuit"
windows = ["sat 22:30-02:00"]
[[list]]
name = "local"
category = "forums"
domains = ["forum.example"]
[[rule]]
name = "comms"
groups = ["communications"]
services = ["*"]
action = "allow"
[[rule]]
name = "nuit"
categories = ["forums"]
during = ["nuit"]
action = "allow"`)
	p, err := c.Compile()
	if err != nil {
		t.Fatal(err)
	}
	loc := c.Location
	tests := []struct {
		client, host string
		at           time.Time
		want         policy.Verdict
		rule         string
	}{
		{"10.20.30.7", "www.facebook.com", time.Date(2026, 11, 24, 9, 0, 0, 0, loc), policy.Allow, "comms"},
		{"10.1.1.1", "forum.example", time.Date(2026, 11, 29, 1, 0, 0, 0, loc), policy.Allow, "nuit"},
		{"10.1.1.1", "forum.example", time.Date(2026, 11, 29, 3, 0, 0, 0, loc), policy.Block, ""},
	}
	for _, tt := range tests {
		d := p.Decide(policy.Query{Host: tt.host, Client: netip.MustParseAddr(tt.client), Time: tt.at})
		if d.Verdict != tt.want || d.Rule != tt.rule {
			t.Errorf("Decide(%s, %s, %v) = %v rule %q, want %v rule %q", tt.client, tt.host, tt.at, d.Verdict, d.Rule, tt.want, tt.rule)
		}
	}
}
